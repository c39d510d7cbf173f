//! `X-Request-ID`: echoed when the client sends a sane one, generated otherwise.

use http::HeaderMap;

/// The header name.
pub const HEADER: &str = "x-request-id";

/// The request id for a request with `headers`: the client's `X-Request-ID` if it is 1 to
/// 128 characters of `[A-Za-z0-9._:-]` (safe to log and echo), else a fresh UUID v4.
///
/// ```
/// let mut h = http::HeaderMap::new();
/// h.insert("x-request-id", "abc-123".parse().unwrap());
/// assert_eq!(classifier_http::request_id::from_headers(&h), "abc-123");
/// h.insert("x-request-id", "bad id with spaces".parse().unwrap());
/// assert_ne!(classifier_http::request_id::from_headers(&h), "bad id with spaces");
/// ```
pub fn from_headers(headers: &HeaderMap) -> String {
    headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| is_acceptable(s))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn is_acceptable(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}
