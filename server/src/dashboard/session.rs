//! Browser sessions: a random id in an HttpOnly, SameSite=Strict cookie.
//!
//! Only people who signed in (or, in local mode, named themselves) have a
//! session in memory: who they are and the session's CSRF token. Anonymous
//! visitors cost the server nothing: their cookie holds a random id and
//! their CSRF token is an HMAC of it under a key of this process, so the
//! sign-in form is CSRF-protected, and a flood of cookie-less requests
//! cannot push a signed-in session out of the bounded table.
//!
//! Signing in replaces the session (a new id), so an id planted before
//! sign-in is worthless after it. The bearer token is kept, not the identity
//! it named: each request identifies it again, so a token removed from the
//! token file (and SIGHUP) signs its sessions out at once. Sessions live in
//! this process; a restart signs everyone out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The cookie's name.
pub const COOKIE: &str = "modelreg_session";

/// How long a session lasts from sign-in (or an anonymous cookie from the
/// first page).
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// More signed-in sessions than this and the ones closest to expiry are
/// dropped, so memory stays bounded. Anonymous visitors never count.
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
    /// True when the response must set the cookie (a new id).
    pub fresh: bool,
}

/// Every signed-in session, and the key that signs anonymous CSRF tokens.
pub struct Sessions {
    /// Signed-in sessions only; anonymous visitors are never stored.
    by_id: Mutex<HashMap<String, Session>>,
    /// Random per process: anonymous CSRF tokens are HMACs of the cookie
    /// under it, so only this server can make one, and none survive a restart.
    key: [u8; 32],
}

impl Default for Sessions {
    fn default() -> Sessions {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).expect("the operating system's random source");
        Sessions {
            by_id: Mutex::default(),
            key,
        }
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    /// The signed-in session named by `cookie`, or an anonymous one: the
    /// cookie's id when it is well-formed, a new id otherwise. Stores nothing.
    pub fn get_or_start(&self, cookie: Option<&str>) -> Session {
        let now = Instant::now();
        if let Some(id) = cookie {
            let mut map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = map.get(id) {
                if s.expires > now {
                    let mut s = s.clone();
                    s.fresh = false;
                    return s;
                }
                map.remove(id);
            }
        }
        match cookie.filter(|id| is_id(id)) {
            Some(id) => self.anonymous(id.to_owned(), now, false),
            None => self.anonymous(random_hex(), now, true),
        }
    }

    /// An anonymous visitor with cookie `id`.
    fn anonymous(&self, id: String, now: Instant, fresh: bool) -> Session {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(b"modelreg anonymous csrf\0");
        mac.update(id.as_bytes());
        let csrf = format!("{:x}", mac.finalize().into_bytes());
        Session {
            id,
            token: None,
            actor: None,
            csrf,
            expires: now + LIFETIME,
            fresh,
        }
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

    /// Remembers the name a local-mode visitor last acted as; an anonymous
    /// visitor's session is stored from then on, under the same cookie and
    /// CSRF token so the page in hand keeps working (local mode trusts
    /// whoever reaches it, so there is nothing to fixate).
    pub fn remember_actor(&self, session: &Session, actor: &str) {
        let mut map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(&session.id) {
            Some(s) => s.actor = Some(actor.to_owned()),
            None => {
                let kept = Session {
                    actor: Some(actor.to_owned()),
                    fresh: false,
                    ..session.clone()
                };
                insert(&mut map, kept, Instant::now());
            }
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
/// ones closest to expiry. Every stored session is a signed-in one, so an
/// anonymous visitor can never push one out.
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

/// Whether `id` has the shape of the ids this module makes (64 lowercase
/// hex digits), so a cookie's value is never taken whole into a page or a
/// `Set-Cookie`.
fn is_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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
        assert_eq!(again.csrf, anon.csrf, "the cookie alone carries the token");
        assert_ne!(again.csrf, anon.id);

        let signed = sessions.sign_in(&anon.id, Some("t".into()), None);
        assert_ne!(signed.id, anon.id, "sign-in issues a new id");
        assert_ne!(signed.csrf, anon.csrf);
        assert_eq!(
            sessions.get_or_start(Some(&signed.id)).token.as_deref(),
            Some("t")
        );
        let planted = sessions.get_or_start(Some(&anon.id));
        assert!(planted.token.is_none(), "the old id is anonymous");

        sessions.end(&signed.id);
        assert!(sessions.get_or_start(Some(&signed.id)).token.is_none());
        let odd = sessions.get_or_start(Some("not-an-id"));
        assert!(odd.fresh && odd.id != "not-an-id");
    }

    /// Anonymous visitors are never stored, so however many come, the
    /// signed-in sessions stay.
    #[test]
    fn anonymous_visitors_take_no_room() {
        let sessions = Sessions::default();
        let signed = sessions.sign_in("", Some("t".into()), None);
        for _ in 0..MAX_SESSIONS + 50 {
            sessions.get_or_start(None);
        }
        assert_eq!(sessions.by_id.lock().unwrap().len(), 1);
        assert!(!sessions.get_or_start(Some(&signed.id)).fresh);
        let id = "0".repeat(64);
        assert_ne!(
            Sessions::default().get_or_start(Some(&id)).csrf,
            sessions.get_or_start(Some(&id)).csrf,
            "another process's key makes other tokens"
        );
    }

    #[test]
    fn local_names_are_remembered() {
        let sessions = Sessions::default();
        let anon = sessions.get_or_start(None);
        sessions.remember_actor(&anon, "carol");
        let back = sessions.get_or_start(Some(&anon.id));
        assert_eq!(back.actor.as_deref(), Some("carol"));
        assert_eq!(back.csrf, anon.csrf, "the page in hand keeps working");
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
