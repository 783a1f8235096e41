//! [`Response`]: the upstream's answer head, as a handle on the gateway's copy.

use crate::error::Error;
use crate::host;
use crate::request::Request;

/// The upstream's answer. Readable in `on_response` and `on_complete`; its headers are
/// writable in [`Plugin::on_response`](crate::Plugin::on_response) only, the one phase that
/// is given `&mut Response`.
#[derive(Debug)]
pub struct Response {
    _handle: (),
}

impl Response {
    pub(crate) const HANDLE: Response = Response { _handle: () };

    pub(crate) fn handle() -> &'static Response {
        const { &Response::HANDLE }
    }

    pub(crate) fn handle_mut() -> Response {
        Response { _handle: () }
    }

    /// HTTP status of the answer (0 if there was none).
    pub fn status(&self) -> u16 {
        host::response_status()
    }

    /// A response header by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<String> {
        host::response_header(name)
    }

    /// Every response header, names lower-case.
    pub fn headers(&self) -> Vec<(String, String)> {
        host::response_headers()
    }

    /// Sets (replaces) a header sent to the client. Framing headers (`content-length`,
    /// `transfer-encoding`, `connection`, `content-type`) and `x-request-id` cannot be set.
    pub fn set_header(&mut self, name: &str, value: &str) -> Result<(), Error> {
        host::response_set_header(name, value).map_err(Error::from)
    }

    /// Keeps `value` for this request, for this plugin's `on_complete` (see
    /// [`Request::state`]).
    pub fn set_state<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        crate::request::set_state(value)
    }

    /// The request this answers (read-only).
    pub fn request(&self) -> &Request {
        Request::handle()
    }
}
