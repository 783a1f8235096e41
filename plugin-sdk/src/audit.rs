//! The gateway's durable audit sink.
//!
//! A record is one JSON object appended to the audit log beside the gateway's own record of
//! the request. Emit from [`Plugin::on_complete`](crate::Plugin::on_complete): it runs off
//! the client's path and knows the outcome and usage.

use crate::error::Error;
use crate::host;

/// Appends one record, which must be a JSON object.
pub fn emit(record: &serde_json::Value) -> Result<(), Error> {
    if !record.is_object() {
        return Err(Error::new("an audit record is a JSON object"));
    }
    host::audit_emit(&record.to_string()).map_err(Error::from)
}

/// Appends one record already serialized as JSON object text (saves serializing it again
/// when the caller needed the text anyway, e.g. to check its size). The host checks that it
/// is one JSON object.
pub fn emit_text(record: &str) -> Result<(), Error> {
    host::audit_emit(record).map_err(Error::from)
}
