//! API-key authentication: `X-API-Key: <key>` or `Authorization: Bearer <key>`.
//!
//! Keys are kept only as sha256 digests and compared in constant time (`subtle`) against
//! every configured digest, so neither the key nor its length leaks through timing. The
//! digest's hex form is the job owner fingerprint ([`classifier_core::job::SubmitOptions::owner`]).

use http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::error::{Error, Result};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Auth is off, or an open route was called without a (valid) key.
    Anonymous,
    /// A valid key.
    Key {
        /// The key's fingerprint (hex sha256), stored as the job owner.
        owner: String,
        /// True for an admin key.
        admin: bool,
    },
}

impl Caller {
    /// The owner fingerprint for jobs this caller creates and may see (`None` = anonymous).
    pub fn owner(&self) -> Option<String> {
        match self {
            Caller::Anonymous => None,
            Caller::Key { owner, .. } => Some(owner.clone()),
        }
    }

    /// True if this caller may see a job owned by `owner`.
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        match self {
            Caller::Anonymous => owner.is_none(),
            Caller::Key { owner: mine, .. } => owner == Some(mine.as_str()),
        }
    }
}

/// The configured keys.
#[derive(Clone)]
pub struct Auth {
    users: Vec<[u8; 32]>,
    admins: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("api_keys", &self.users.len())
            .field("admin_api_keys", &self.admins.len())
            .finish()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn contains(set: &[[u8; 32]], d: &[u8; 32]) -> bool {
    let mut found = Choice::from(0);
    for k in set {
        found |= k.ct_eq(d);
    }
    found.into()
}

/// The key a request presents, if any.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(k) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k.trim()).filter(|k| !k.is_empty());
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl Auth {
    /// Auth with these keys (admin keys are API keys too). No keys at all = auth off.
    pub fn new(api_keys: &[String], admin_api_keys: &[String]) -> Auth {
        let admins: Vec<_> = admin_api_keys.iter().map(|k| digest(k)).collect();
        let mut users: Vec<_> = api_keys.iter().map(|k| digest(k)).collect();
        users.extend(admins.iter().copied());
        Auth { users, admins }
    }

    /// True when keys are configured.
    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// The caller of a request with `headers`: `Unauthorized` for a missing key (when auth
    /// is on) or an unknown key.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Caller> {
        if !self.enabled() {
            return Ok(Caller::Anonymous);
        }
        let key = presented_key(headers).ok_or_else(|| {
            Error::Unauthorized(
                "an API key is required (X-API-Key or Authorization: Bearer)".into(),
            )
        })?;
        let d = digest(key);
        if !contains(&self.users, &d) {
            return Err(Error::Unauthorized("the API key is not valid".into()));
        }
        Ok(Caller::Key {
            owner: hex::encode(d),
            admin: contains(&self.admins, &d),
        })
    }

    /// Like [`Auth::identify`], but also requires an admin key (`Forbidden` otherwise).
    /// With auth off everyone is admitted.
    pub fn identify_admin(&self, headers: &HeaderMap) -> Result<Caller> {
        match self.identify(headers)? {
            Caller::Key { admin: false, .. } => Err(Error::Forbidden),
            c => Ok(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        h
    }

    #[test]
    fn keys_admins_and_owners() {
        let auth = Auth::new(&["user".into()], &["boss".into()]);
        assert!(matches!(
            auth.identify(&HeaderMap::new()),
            Err(Error::Unauthorized(_))
        ));
        assert!(matches!(
            auth.identify(&headers("x-api-key", "nope")),
            Err(Error::Unauthorized(_))
        ));
        let user = auth.identify(&headers("x-api-key", "user")).unwrap();
        let same = auth
            .identify(&headers("authorization", "Bearer user"))
            .unwrap();
        assert_eq!(user, same);
        assert!(matches!(
            auth.identify_admin(&headers("x-api-key", "user")),
            Err(Error::Forbidden)
        ));
        let boss = auth
            .identify_admin(&headers("authorization", "bearer boss"))
            .unwrap();
        assert!(matches!(boss, Caller::Key { admin: true, .. }));
        assert!(user.may_see(user.owner().as_deref()));
        assert!(!boss.may_see(user.owner().as_deref()));
    }

    #[test]
    fn no_keys_means_auth_off() {
        let auth = Auth::new(&[], &[]);
        assert!(!auth.enabled());
        assert_eq!(auth.identify(&HeaderMap::new()).unwrap(), Caller::Anonymous);
        assert_eq!(
            auth.identify_admin(&HeaderMap::new()).unwrap(),
            Caller::Anonymous
        );
    }
}
