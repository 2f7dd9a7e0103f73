//! Browser sessions: a random id in an HttpOnly, SameSite=Strict cookie,
//! mapped in memory to who signed in and the session's CSRF token.
//!
//! Every visitor gets a session on the first page, so the sign-in form is
//! CSRF-protected too. Signing in replaces the session (a new id), so an id
//! planted before sign-in is worthless after it. The bearer token is kept,
//! not the identity it named: each request identifies it again, so a token
//! removed from the token file (and SIGHUP) signs its sessions out at once.
//! Sessions live in this process; a restart signs everyone out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cookie's name.
pub const COOKIE: &str = "modelreg_session";

/// How long a session lasts from sign-in (or from the first page).
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// More sessions than this and the oldest are dropped: a flood of cookie-less
/// requests cannot grow memory without bound.
const MAX_SESSIONS: usize = 10_000;

/// What a session knows.
#[derive(Debug, Clone)]
pub struct Session {
    /// The cookie value.
    pub id: String,
    /// The token signed in with (token mode).
    pub token: Option<String>,
    /// The self-declared name (local mode).
    pub actor: Option<String>,
    /// Must come back with every state-changing form.
    pub csrf: String,
    /// When it ends.
    pub expires: Instant,
    /// True when the response must set the cookie (a new session).
    pub fresh: bool,
}

/// Every live session.
#[derive(Debug, Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// The session named by `cookie`, or a new anonymous one.
    pub fn get_or_start(&self, cookie: Option<&str>) -> Session {
        let now = Instant::now();
        let mut map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = cookie
            && let Some(s) = map.get(id)
        {
            if s.expires > now {
                let mut s = s.clone();
                s.fresh = false;
                return s;
            }
            map.remove(id);
        }
        let session = Session {
            id: random_hex(),
            token: None,
            actor: None,
            csrf: random_hex(),
            expires: now + LIFETIME,
            fresh: true,
        };
        insert(&mut map, session.clone(), now);
        session
    }

    /// Replaces `old` with a new session holding `token` or `actor`.
    pub fn sign_in(&self, old: &str, token: Option<String>, actor: Option<String>) -> Session {
        let now = Instant::now();
        let mut map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(old);
        let session = Session {
            id: random_hex(),
            token,
            actor,
            csrf: random_hex(),
            expires: now + LIFETIME,
            fresh: true,
        };
        insert(&mut map, session.clone(), now);
        session
    }

    /// Remembers the name a local-mode visitor last acted as.
    pub fn remember_actor(&self, id: &str, actor: &str) {
        let mut map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get_mut(id) {
            s.actor = Some(actor.to_owned());
        }
    }

    /// Ends a session.
    pub fn end(&self, id: &str) {
        self.by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// Adds `session`, first dropping expired ones and, when still full, the
/// ones closest to expiry.
fn insert(map: &mut HashMap<String, Session>, session: Session, now: Instant) {
    if map.len() >= MAX_SESSIONS {
        map.retain(|_, s| s.expires > now);
        while map.len() >= MAX_SESSIONS {
            let Some(oldest) = map.values().min_by_key(|s| s.expires).map(|s| s.id.clone()) else {
                break;
            };
            map.remove(&oldest);
        }
    }
    map.insert(session.id.clone(), session);
}

/// 32 random bytes from the operating system, as hex.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("the operating system's random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `Set-Cookie` value for `session`; `secure` under TLS.
pub fn set_cookie(session: &Session, secure: bool) -> String {
    let age = session
        .expires
        .saturating_duration_since(Instant::now())
        .as_secs();
    format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={age}{}",
        session.id,
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the cookie.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The session id in a `Cookie` header, if any.
pub fn from_cookie_header(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_start_rotate_on_sign_in_and_end() {
        let sessions = Sessions::default();
        let anon = sessions.get_or_start(None);
        assert!(anon.fresh && anon.token.is_none());
        assert_eq!(anon.id.len(), 64);
        let again = sessions.get_or_start(Some(&anon.id));
        assert!(!again.fresh);
        assert_eq!(again.csrf, anon.csrf);

        let signed = sessions.sign_in(&anon.id, Some("t".into()), None);
        assert_ne!(signed.id, anon.id, "sign-in issues a new id");
        assert_ne!(signed.csrf, anon.csrf);
        let planted = sessions.get_or_start(Some(&anon.id));
        assert!(
            planted.fresh && planted.token.is_none(),
            "the old id is dead"
        );

        sessions.end(&signed.id);
        assert!(sessions.get_or_start(Some(&signed.id)).token.is_none());
    }

    #[test]
    fn cookies_parse_and_carry_their_attributes() {
        assert_eq!(
            from_cookie_header("a=1; modelreg_session=abc ; b=2"),
            Some("abc")
        );
        assert_eq!(from_cookie_header("modelreg_session="), None);
        assert_eq!(from_cookie_header("other=1"), None);
        let s = Sessions::default().get_or_start(None);
        let c = set_cookie(&s, true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"));
        assert!(!set_cookie(&s, false).contains("Secure"));
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("a", "ab"));
    }
}
