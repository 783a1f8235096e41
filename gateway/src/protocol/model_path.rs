//! Bedrock runtime paths with the model ID encoded as the AWS SDKs encode it: one encoder for
//! the front door (which checks what clients send) and for translation (which builds paths).

use super::RequestInfo;

/// Characters AWS SDKs leave unencoded in a path segment (RFC 3986 unreserved).
pub const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The runtime path `/model/{model}/{op}`, the model encoded as the AWS SDKs encode it
/// (`:` as `%3A`, `/` as `%2F`).
pub fn model_path(model: &str, op: &str) -> String {
    format!(
        "/model/{}/{op}",
        percent_encoding::utf8_percent_encode(model, SEGMENT)
    )
}

/// The upstream path for `info` with its model replaced by `model`, encoded as the AWS SDKs
/// encode it (`:` as `%3A`, `/` as `%2F`).
pub fn with_model(info: &RequestInfo, model: &str) -> String {
    let (path, query) = match info.upstream_path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (info.upstream_path.as_str(), None),
    };
    let op = path.rsplit('/').next().unwrap_or_default();
    let mut out = model_path(model, op);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}
