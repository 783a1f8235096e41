//! Base URLs of the targets the load generators drive: `http://host:port/prefix`, the mock
//! directly or a gateway's front door.

/// `http://host:port/prefix` → (`host:port`, `/prefix` without a trailing slash).
pub fn split_base_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// targets are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    let authority = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.trim_end_matches('/').to_string()))
}

#[cfg(test)]
mod tests {
    use super::split_base_url;

    #[test]
    fn base_urls() {
        assert_eq!(
            split_base_url("http://127.0.0.1:8080/bedrock/").unwrap(),
            ("127.0.0.1:8080".into(), "/bedrock".into())
        );
        assert_eq!(
            split_base_url("http://localhost").unwrap(),
            ("localhost:80".into(), "".into())
        );
        assert!(split_base_url("https://x").is_err());
    }
}
