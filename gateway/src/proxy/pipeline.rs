//! Step 3 of a request, and the plugins' say on its answer: `on-request` may deny the
//! request, rewrite its model, edit its headers and set the identity; `on-response` may set
//! headers on the answer. Plugins edit a copy of the headers; without plugins the client's
//! are used as they are, and nothing here costs anything.

use bytes::Bytes;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::ctx::RequestCtx;
use super::{Gateway, Stop};
use crate::frontdoor::RequestInfo;
use crate::plugin::RequestView;
use crate::protocol::error::GatewayError;

impl Gateway {
    /// Runs the plugins' `on-request`: rewrites `info`'s model when a plugin did, and returns
    /// the headers as they edited them (`None` without plugins).
    pub(super) async fn run_plugins(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        info: &mut RequestInfo,
        path: String,
        body: &Bytes,
    ) -> Result<Option<http::HeaderMap>, Stop> {
        let pipeline = self.pipeline.load_full();
        if pipeline.is_empty() {
            return Ok(None);
        }
        let view = RequestView::new(
            session.req_header().method.to_string(),
            path,
            info.front_door,
            info.operation,
            info.model_id.clone(),
            session.req_header().headers.clone(),
            session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip().to_string()),
            ctx.request_id().to_string(),
            body.clone(),
        );
        let mut run = pipeline.start(Box::new(view));
        let decided = run.on_request().await;
        let view = run.view();
        let edited_headers = Some(view.headers.clone());
        if view.model.is_some() && view.model != info.model_id {
            info.model_id = view.model.clone();
        }
        ctx.set_plugins(run);
        if let Err(denial) = decided {
            ctx.set_denied_by(denial.plugin.clone());
            return Err(GatewayError::Denied {
                status: denial.status,
                message: denial.message,
                retry_after: denial.retry_after.map(u64::from),
            }
            .into());
        }
        Ok(edited_headers)
    }

    /// Lets the plugins' `on-response` set headers on the answer.
    pub(super) async fn plugin_response_headers(
        &self,
        ctx: &mut RequestCtx,
        status: u16,
        upstream_headers: &http::HeaderMap,
        head: &mut ResponseHeader,
    ) {
        if let Some(run) = ctx.plugins_mut() {
            for (name, value) in run.on_response(status, upstream_headers).await {
                let _ = head.insert_header(name, value);
            }
        }
    }
}
