//! Checks of a submitted `callback_url` (webhook destination).
//!
//! At submission only the form is checked: an absolute `http` or `https` URL with a host.
//! The SSRF checks (private, loopback, link-local, metadata addresses in every spelling, and
//! again at delivery) belong to the webhook issue and will extend this module.

/// Longest accepted callback URL.
pub const MAX_LEN: usize = 2048;

/// Check that `url` is an absolute http(s) URL with a host; the error is a readable reason.
///
/// ```
/// use classifier_http::callback::validate_callback_url;
/// assert!(validate_callback_url("https://example.com/hook").is_ok());
/// assert!(validate_callback_url("ftp://example.com/x").is_err());
/// assert!(validate_callback_url("http:///nohost").is_err());
/// ```
pub fn validate_callback_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_LEN {
        return Err(format!("callback_url is longer than {MAX_LEN} characters"));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("callback_url is not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {}
        Some(s) => return Err(format!("callback_url must be http or https, not {s:?}")),
        None => return Err("callback_url must be an absolute http(s) URL".into()),
    }
    match uri.host() {
        Some(h) if !h.is_empty() => Ok(()),
        _ => Err("callback_url has no host".into()),
    }
}
