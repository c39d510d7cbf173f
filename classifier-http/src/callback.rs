//! The SSRF guard of webhook destinations (`callback_url`).
//!
//! A destination must be an absolute `http` or `https` URL without credentials whose host is
//! not, and does not resolve to, an address the server must never call on a client's behalf:
//!
//! - always refused: unspecified (`0.0.0.0/8`, `::`), broadcast (`255.255.255.255`),
//!   multicast (`224.0.0.0/4`, `ff00::/8`), reserved (`240.0.0.0/4`) and the cloud metadata
//!   endpoints (`169.254.169.254`, `fd00:ec2::254`);
//! - refused unless private destinations are allowed (`WEBHOOK_ALLOW_PRIVATE`, for tests and
//!   internal deployments): loopback (`127.0.0.0/8`, `::1`, `localhost` names), private
//!   (RFC 1918, `fc00::/7`), carrier-grade NAT (`100.64.0.0/10`), link-local
//!   (`169.254.0.0/16`, `fe80::/10`), site-local `fec0::/10`, and the special-purpose
//!   `192.0.0.0/24`, benchmarking and documentation ranges.
//!
//! Every spelling of an address is covered because the URL is parsed once, with the WHATWG
//! rules of the `url` crate, which normalize IPv4 hosts written in decimal (`2130706433`), hex
//! (`0x7f000001`, `0x7f.0.0.1`), octal (`0177.0.0.1`) or short form (`127.1`); IPv6 hosts that
//! embed an IPv4 address (mapped `::ffff:127.0.0.1` = `::ffff:7f00:1`, compatible
//! `::127.0.0.1`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by that address. A name
//! is resolved and refused if ANY of its addresses is forbidden.
//!
//! The check runs at submission ([`validate_callback_url`], a 422 on refusal) and again at
//! every delivery ([`resolve_callback_url`]), which returns the checked socket addresses: the
//! dispatcher connects to those, never resolving the name a second time, so a DNS answer
//! that changes between the check and the connection (rebinding) cannot reach a forbidden
//! address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use url::{Host, Url};

/// Longest accepted callback URL.
pub const MAX_LEN: usize = 2048;

/// Longest time a name resolution may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a callback URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackError {
    /// Not an acceptable URL (form, scheme, credentials, length): permanent.
    Invalid(String),
    /// The host is, or resolves to, a forbidden address: permanent.
    Forbidden(String),
    /// The name could not be resolved now (may be temporary).
    Unresolved(String),
}

impl fmt::Display for CallbackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallbackError::Invalid(m)
            | CallbackError::Forbidden(m)
            | CallbackError::Unresolved(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CallbackError {}

/// Parse `raw` as a callback URL: absolute, `http` or `https`, with a host and without
/// credentials. No address check (see [`resolve_callback_url`]).
///
/// ```
/// use classifier_http::callback::parse_callback_url;
/// assert!(parse_callback_url("https://example.com/hook").is_ok());
/// assert!(parse_callback_url("ftp://example.com/x").is_err());
/// assert!(parse_callback_url("http://").is_err());
/// // WHATWG parsing: every IPv4 spelling becomes the dotted form.
/// let url = parse_callback_url("http://0x7f.1/").unwrap();
/// assert_eq!(url.host_str(), Some("127.0.0.1"));
/// ```
pub fn parse_callback_url(raw: &str) -> Result<Url, CallbackError> {
    if raw.len() > MAX_LEN {
        return Err(CallbackError::Invalid(format!(
            "callback_url is longer than {MAX_LEN} characters"
        )));
    }
    let url = Url::parse(raw)
        .map_err(|e| CallbackError::Invalid(format!("callback_url is not a valid URL: {e}")))?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(CallbackError::Invalid(format!(
                "callback_url must be http or https, not {:?}",
                crate::router::truncate(other, 32)
            )))
        }
    }
    if matches!(url.host(), None | Some(Host::Domain(""))) {
        return Err(CallbackError::Invalid("callback_url has no host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(CallbackError::Invalid(
            "callback_url must not contain credentials (user:password@)".into(),
        ));
    }
    Ok(url)
}

/// Why `ip` may not be a webhook destination, or `None` if it may.
///
/// ```
/// use classifier_http::callback::forbidden_reason;
/// assert_eq!(forbidden_reason("127.0.0.1".parse().unwrap(), false), Some("loopback"));
/// assert_eq!(forbidden_reason("127.0.0.1".parse().unwrap(), true), None);
/// assert_eq!(forbidden_reason("::ffff:10.0.0.1".parse().unwrap(), false), Some("private (RFC 1918)"));
/// assert_eq!(forbidden_reason("93.184.216.34".parse().unwrap(), false), None);
/// ```
pub fn forbidden_reason(ip: IpAddr, allow_private: bool) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4, allow_private),
        IpAddr::V6(v6) => v6_reason(v6, allow_private),
    }
}

fn v4_reason(ip: Ipv4Addr, allow_private: bool) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    // Never a unicast destination, or never one for a webhook.
    if a == 0 {
        return Some("unspecified (0.0.0.0/8)");
    }
    if ip.is_broadcast() {
        return Some("broadcast");
    }
    if ip.is_multicast() {
        return Some("multicast");
    }
    if a >= 240 {
        return Some("reserved (240.0.0.0/4)");
    }
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        return Some("cloud metadata (link-local)");
    }
    if allow_private {
        return None;
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if ip.is_private() {
        return Some("private (RFC 1918)");
    }
    if a == 100 && (b & 0xc0) == 64 {
        return Some("carrier-grade NAT (100.64.0.0/10)");
    }
    if ip.is_link_local() {
        return Some("link-local (169.254.0.0/16)");
    }
    if a == 192 && b == 0 && c == 0 {
        return Some("special-purpose (192.0.0.0/24)");
    }
    if a == 198 && (b & 0xfe) == 18 {
        return Some("benchmarking (198.18.0.0/15)");
    }
    if (a, b, c) == (192, 0, 2) || (a, b, c) == (198, 51, 100) || (a, b, c) == (203, 0, 113) {
        return Some("documentation");
    }
    None
}

/// The IPv4 address an IPv6 address stands for or embeds, if any: mapped
/// (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`), 6to4
/// (`2002:aabb:ccdd::`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6].iter().all(|&x| x == 0) && !ip.is_unspecified() && !ip.is_loopback() {
        return Some(tail);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

fn v6_reason(ip: Ipv6Addr, allow_private: bool) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_multicast() {
        return Some("multicast");
    }
    if let Some(v4) = embedded_v4(ip) {
        if let Some(reason) = v4_reason(v4, allow_private) {
            return Some(reason);
        }
    }
    let s = ip.segments();
    if s == [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254] {
        return Some("cloud metadata");
    }
    if allow_private {
        return None;
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if (s[0] & 0xfe00) == 0xfc00 {
        return Some("private (unique local fc00::/7)");
    }
    if (s[0] & 0xffc0) == 0xfe80 {
        return Some("link-local (fe80::/10)");
    }
    if (s[0] & 0xffc0) == 0xfec0 {
        return Some("site-local (fec0::/10)");
    }
    if s[0] == 0x2001 && s[1] == 0x0db8 {
        return Some("documentation");
    }
    if s[..4] == [0x0100, 0, 0, 0] {
        return Some("discard-only (100::/64)");
    }
    None
}

/// `localhost`, its subdomains and the usual loopback aliases (refused by name, before any
/// resolution).
fn is_localhost_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name == "localhost.localdomain"
        || name == "ip6-localhost"
        || name == "ip6-loopback"
}

/// Check every resolved address of `name`; all must be allowed.
pub fn check_resolved(
    name: &str,
    addrs: &[SocketAddr],
    allow_private: bool,
) -> Result<(), CallbackError> {
    if addrs.is_empty() {
        return Err(CallbackError::Unresolved(format!(
            "callback_url host {name:?} has no address"
        )));
    }
    for addr in addrs {
        if let Some(reason) = forbidden_reason(addr.ip(), allow_private) {
            return Err(CallbackError::Forbidden(format!(
                "callback_url host {name:?} resolves to {}, a {reason} address; webhooks are not sent there",
                addr.ip()
            )));
        }
    }
    Ok(())
}

/// The socket addresses of `url`'s host, all checked: an IP literal is checked as is, a
/// name is resolved once (bounded by [`RESOLVE_TIMEOUT`]) and refused if any address is
/// forbidden. Connect only to the returned addresses.
pub async fn resolve_callback_url(
    url: &Url,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, CallbackError> {
    let port = url
        .port_or_known_default()
        .ok_or_else(|| CallbackError::Invalid("callback_url has no port".into()))?;
    let literal = |ip: IpAddr| match forbidden_reason(ip, allow_private) {
        Some(reason) => Err(CallbackError::Forbidden(format!(
            "callback_url host {ip} is a {reason} address; webhooks are not sent there"
        ))),
        None => Ok(vec![SocketAddr::new(ip, port)]),
    };
    match url.host() {
        Some(Host::Ipv4(ip)) => literal(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => literal(IpAddr::V6(ip)),
        Some(Host::Domain(name)) => {
            if !allow_private && is_localhost_name(name) {
                return Err(CallbackError::Forbidden(format!(
                    "callback_url host {name:?} is a loopback name; webhooks are not sent there"
                )));
            }
            let lookup = tokio::net::lookup_host((name.trim_end_matches('.'), port));
            let addrs: Vec<SocketAddr> = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(addrs)) => addrs.collect(),
                Ok(Err(e)) => {
                    return Err(CallbackError::Unresolved(format!(
                        "callback_url host {name:?} does not resolve: {e}"
                    )))
                }
                Err(_) => {
                    return Err(CallbackError::Unresolved(format!(
                        "callback_url host {name:?} did not resolve within {RESOLVE_TIMEOUT:?}"
                    )))
                }
            };
            check_resolved(name, &addrs, allow_private)?;
            Ok(addrs)
        }
        None => Err(CallbackError::Invalid("callback_url has no host".into())),
    }
}

/// The submission-time check: [`parse_callback_url`] then [`resolve_callback_url`]; the
/// error is a readable reason (the handlers answer 422 with it).
pub async fn validate_callback_url(raw: &str, allow_private: bool) -> Result<(), String> {
    let url = parse_callback_url(raw).map_err(|e| e.to_string())?;
    resolve_callback_url(&url, allow_private)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn check(raw: &str, allow_private: bool) -> Result<Vec<SocketAddr>, CallbackError> {
        let url = parse_callback_url(raw)?;
        resolve_callback_url(&url, allow_private).await
    }

    async fn refused(raw: &str) -> String {
        match check(raw, false).await {
            Err(CallbackError::Forbidden(m)) => m,
            other => panic!("{raw} should be forbidden, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn loopback_in_every_spelling() {
        for raw in [
            "http://127.0.0.1/",
            "http://127.0.0.1:8080/hook",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0x7F.0.0.1/",
            "http://0177.0.0.1/",
            "http://0177.0000.0000.0001/",
            "http://017700000001/",
            "http://127.1/",
            "http://127.0.1/",
            "http://127.255.255.254/",
            "https://[::1]/",
            "http://[0:0:0:0:0:0:0:1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[0:0:0:0:0:ffff:7f00:0001]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[2002:7f00:1::]/",
            "http://%31%32%37.0.0.1/",
        ] {
            let reason = refused(raw).await;
            assert!(reason.contains("loopback"), "{raw}: {reason}");
        }
    }

    #[tokio::test]
    async fn localhost_names() {
        for raw in [
            "http://localhost/",
            "http://LOCALHOST:9000/x",
            "http://localhost./",
            "http://api.localhost/",
            "http://localhost.localdomain/",
        ] {
            let reason = refused(raw).await;
            assert!(reason.contains("loopback name"), "{raw}: {reason}");
        }
    }

    #[tokio::test]
    async fn unspecified_broadcast_multicast_reserved() {
        for (raw, want) in [
            ("http://0.0.0.0/", "unspecified"),
            ("http://0/", "unspecified"),
            ("http://0x0/", "unspecified"),
            ("http://0.1.2.3/", "unspecified"),
            ("http://[::]/", "unspecified"),
            ("http://[::ffff:0.0.0.0]/", "unspecified"),
            ("http://255.255.255.255/", "broadcast"),
            ("http://4294967295/", "broadcast"),
            ("http://0xffffffff/", "broadcast"),
            ("http://224.0.0.1/", "multicast"),
            ("http://239.255.255.250:1900/", "multicast"),
            ("http://[ff02::1]/", "multicast"),
            ("http://[::ffff:224.0.0.251]/", "multicast"),
            ("http://240.0.0.1/", "reserved"),
        ] {
            let reason = refused(raw).await;
            assert!(reason.contains(want), "{raw}: {reason}");
        }
    }

    #[tokio::test]
    async fn private_cgnat_link_local_and_metadata() {
        for (raw, want) in [
            ("http://10.0.0.1/", "private"),
            ("http://012.0.0.1/", "private"),
            ("http://167772161/", "private"),
            ("http://0xa.0.0.1/", "private"),
            ("http://172.16.0.1/", "private"),
            ("http://172.31.255.255/", "private"),
            ("http://192.168.1.10/", "private"),
            ("http://0xc0a8010a/", "private"),
            ("http://[::ffff:192.168.1.10]/", "private"),
            ("http://[::ffff:c0a8:10a]/", "private"),
            ("http://[fc00::1]/", "private"),
            ("http://[fd12:3456::1]/", "private"),
            ("http://100.64.0.1/", "carrier-grade NAT"),
            ("http://100.127.255.254/", "carrier-grade NAT"),
            ("http://169.254.0.1/", "link-local"),
            ("http://[fe80::1]/", "link-local"),
            ("http://[febf::1]/", "link-local"),
            ("http://[fec0::1]/", "site-local"),
            ("http://169.254.169.254/latest/meta-data/", "metadata"),
            ("http://2852039166/", "metadata"),
            ("http://0xa9fea9fe/", "metadata"),
            ("http://0251.0376.0251.0376/", "metadata"),
            ("http://169.254.43518/", "metadata"),
            ("http://[::ffff:169.254.169.254]/", "metadata"),
            ("http://[::ffff:a9fe:a9fe]/", "metadata"),
            ("http://[fd00:ec2::254]/", "metadata"),
            ("http://192.0.0.8/", "special-purpose"),
            ("http://198.18.0.1/", "benchmarking"),
            ("http://192.0.2.1/", "documentation"),
            ("http://[2001:db8::1]/", "documentation"),
        ] {
            let reason = refused(raw).await;
            assert!(reason.contains(want), "{raw}: {reason}");
        }
    }

    #[tokio::test]
    async fn public_addresses_pass() {
        for (raw, ip, port) in [
            ("http://93.184.216.34/hook", "93.184.216.34", 80),
            ("https://8.8.8.8/", "8.8.8.8", 443),
            ("http://134744072:8080/", "8.8.8.8", 8080),
            ("http://100.63.255.255/", "100.63.255.255", 80),
            ("http://100.128.0.1/", "100.128.0.1", 80),
            ("http://172.32.0.1/", "172.32.0.1", 80),
            ("http://[2606:4700:4700::1111]/", "2606:4700:4700::1111", 80),
            ("http://[::ffff:8.8.8.8]/", "::ffff:8.8.8.8", 80),
        ] {
            let addrs = check(raw, false)
                .await
                .unwrap_or_else(|e| panic!("{raw}: {e}"));
            let want = SocketAddr::new(ip.parse().unwrap(), port);
            assert_eq!(addrs, vec![want], "{raw}");
        }
    }

    #[tokio::test]
    async fn allow_private_allows_internal_but_never_the_rest() {
        for raw in [
            "http://127.0.0.1:1234/",
            "http://2130706433/",
            "http://[::1]/",
            "http://localhost/",
            "http://10.1.2.3/",
            "http://[fd00::1]/",
            "http://100.64.0.1/",
            "http://169.254.1.1/",
            "http://[fe80::1]/",
        ] {
            assert!(check(raw, true).await.is_ok(), "{raw}");
        }
        for raw in [
            "http://0.0.0.0/",
            "http://[::]/",
            "http://255.255.255.255/",
            "http://224.0.0.1/",
            "http://169.254.169.254/",
            "http://[fd00:ec2::254]/",
            "http://[::ffff:169.254.169.254]/",
        ] {
            assert!(
                matches!(check(raw, true).await, Err(CallbackError::Forbidden(_))),
                "{raw}"
            );
        }
    }

    #[test]
    fn bad_forms_are_invalid() {
        for raw in [
            "ftp://example.com/x",
            "file:///etc/passwd",
            "gopher://127.0.0.1:6379/_INFO",
            "javascript:alert(1)",
            "data:text/plain,hi",
            "http://",
            "example.com/hook",
            "/relative",
            "http://user:pw@example.com/",
            "http://user@example.com/",
            "http://256.0.0.1/",
            "http://1.2.3.4.5/",
            "http://[::1/",
            "http://exa mple.com/",
        ] {
            assert!(
                matches!(parse_callback_url(raw), Err(CallbackError::Invalid(_))),
                "{raw}: {:?}",
                parse_callback_url(raw)
            );
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_LEN));
        assert!(parse_callback_url(&long).is_err());
    }

    #[test]
    fn resolved_addresses_are_all_checked() {
        let public: SocketAddr = "93.184.216.34:443".parse().unwrap();
        let private: SocketAddr = "10.0.0.7:443".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:443".parse().unwrap();
        assert!(check_resolved("example.com", &[public], false).is_ok());
        // One bad address among good ones is enough to refuse (rebinding-style answers).
        let err = check_resolved("rebind.example", &[public, private], false).unwrap_err();
        assert!(
            matches!(&err, CallbackError::Forbidden(m) if m.contains("10.0.0.7")),
            "{err}"
        );
        assert!(check_resolved("x.example", &[mapped], false).is_err());
        assert!(check_resolved("x.example", &[private], true).is_ok());
        assert!(matches!(
            check_resolved("x.example", &[], false),
            Err(CallbackError::Unresolved(_))
        ));
    }

    #[tokio::test]
    async fn validate_gives_readable_reasons() {
        let e = validate_callback_url("http://169.254.169.254/", false)
            .await
            .unwrap_err();
        assert!(
            e.contains("169.254.169.254") && e.contains("metadata"),
            "{e}"
        );
        let e = validate_callback_url("http://2130706433/", false)
            .await
            .unwrap_err();
        assert!(e.contains("127.0.0.1") && e.contains("loopback"), "{e}");
        let e = validate_callback_url("ftp://x.example/", false)
            .await
            .unwrap_err();
        assert!(e.contains("http or https"), "{e}");
        assert!(validate_callback_url("http://127.0.0.1:9/", true)
            .await
            .is_ok());
    }
}
