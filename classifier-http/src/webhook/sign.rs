//! Webhook signatures: `X-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
//!
//! The timestamp (`X-Signature-Timestamp`, Unix seconds) is signed with the body so a
//! receiver can refuse replays of old requests: it recomputes the HMAC over the header's
//! timestamp, a dot and the raw body bytes, compares in constant time, and checks that the
//! timestamp is recent.

use std::fmt;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The signing key. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// A secret from configured text (its UTF-8 bytes are the HMAC key).
    pub fn new(secret: impl AsRef<[u8]>) -> Secret {
        Secret(secret.as_ref().to_vec())
    }

    /// 32 random bytes (hex-encoded, so the same text could be configured elsewhere).
    pub fn random() -> Secret {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Secret(hex::encode(bytes).into_bytes())
    }

    /// The `X-Signature` value of `body` sent at `timestamp` (Unix seconds).
    ///
    /// ```
    /// use classifier_http::webhook::Secret;
    /// // HMAC-SHA256 with key "key" over "1700000000.{}", hex, after "sha256=".
    /// let sig = Secret::new("key").sign(1_700_000_000, b"{}");
    /// assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
    /// ```
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // RFC 4231 test case 2: the HMAC itself.
        let mut mac = HmacSha256::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // sign() is HMAC over "<ts>.<body>".
        let mut mac = HmacSha256::new_from_slice(b"s3cret").unwrap();
        mac.update(b"1700000000.{\"a\":1}");
        let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(
            Secret::new("s3cret").sign(1_700_000_000, b"{\"a\":1}"),
            want
        );
    }

    #[test]
    fn random_secrets_differ_and_hide() {
        let a = Secret::random();
        let b = Secret::random();
        assert_ne!(a.sign(1, b"x"), b.sign(1, b"x"));
        assert_eq!(a.0.len(), 64);
        assert_eq!(format!("{a:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn timestamp_is_signed() {
        let s = Secret::new("k");
        assert_ne!(s.sign(1, b"body"), s.sign(2, b"body"));
        assert_ne!(s.sign(1, b"body"), s.sign(1, b"body "));
    }
}
