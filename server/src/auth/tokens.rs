//! The token file: bearer tokens (stored as their SHA-256 only) mapped to
//! identities and roles, reloaded on SIGHUP, and the credential each
//! authenticated call carries so a long stream ends when its token is
//! revoked.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::*;

/// The token file as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenFileRaw {
    /// The `[[tokens]]` entries.
    #[serde(default)]
    tokens: Vec<TokenEntryRaw>,
}

/// One `[[tokens]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenEntryRaw {
    /// The name recorded as the actor of the holder's events.
    identity: String,
    /// Role names.
    roles: Vec<String>,
    /// Hex SHA-256 of the bearer token; the file never holds the token itself.
    token_sha256: String,
}

/// Why a token file was refused. The message names the file and the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFileError(pub String);

impl fmt::Display for TokenFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TokenFileError {}

/// What one token grants.
#[derive(Debug, Clone)]
pub(super) struct Grant {
    /// The identity name.
    name: String,
    /// Its roles.
    roles: BTreeSet<Role>,
}

/// A validated token file: SHA-256 of a token → who holds it.
#[derive(Debug, Default)]
pub struct TokenTable {
    /// Keyed by the digest, so a lookup hashes the presented token and never
    /// compares secrets byte by byte.
    by_digest: HashMap<[u8; 32], Grant>,
}

impl TokenTable {
    /// Parses and validates the text of a token file; `origin` names the file
    /// in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<TokenTable, TokenFileError> {
        let fail = |msg: String| TokenFileError(format!("token file {origin}: {msg}"));
        let raw: TokenFileRaw = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
        if raw.tokens.is_empty() {
            return Err(fail(
                "no [[tokens]] entries: add at least one with identity, roles and token_sha256"
                    .into(),
            ));
        }
        let mut by_digest = HashMap::with_capacity(raw.tokens.len());
        for (i, entry) in raw.tokens.into_iter().enumerate() {
            let at = format!("entry {} (identity {:?})", i + 1, entry.identity);
            let name = entry.identity;
            if crate::domain::Actor::parse("identity", &name).is_err() {
                return Err(fail(format!(
                    "{at}: identity must be 1 to 256 printable characters"
                )));
            }
            if entry.roles.is_empty() {
                return Err(fail(format!(
                    "{at}: roles is empty; give at least one of {}",
                    role_names()
                )));
            }
            let mut roles = BTreeSet::new();
            for r in &entry.roles {
                let role = Role::parse(r).ok_or_else(|| {
                    fail(format!(
                        "{at}: unknown role {r:?}; the roles are {}",
                        role_names()
                    ))
                })?;
                roles.insert(role);
            }
            let digest = parse_digest(&entry.token_sha256).ok_or_else(|| {
                fail(format!(
                    "{at}: token_sha256 must be 64 hexadecimal digits (the SHA-256 of the token, e.g. from `printf %s \"$TOKEN\" | sha256sum`)"
                ))
            })?;
            if let Some(other) = by_digest.insert(digest, Grant { name, roles }) {
                return Err(fail(format!(
                    "{at}: token_sha256 is already used by identity {:?}; every token must be unique",
                    other.name
                )));
            }
        }
        Ok(TokenTable { by_digest })
    }

    /// Reads and validates the token file at `path`.
    pub fn load(path: &Path) -> Result<TokenTable, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            TokenFileError(format!("token file {}: cannot read: {e}", path.display()))
        })?;
        TokenTable::parse(&text, &path.display().to_string())
    }

    /// How many tokens the table holds.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether the table holds no token.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The identity holding `token`, if any.
    pub fn identify(&self, token: &str) -> Option<Identity> {
        self.grant(&digest_of(token))
    }

    fn grant(&self, digest: &[u8; 32]) -> Option<Identity> {
        self.by_digest.get(digest).map(|g| Identity {
            name: g.name.clone(),
            roles: g.roles.clone(),
            local: false,
        })
    }
}

pub(super) fn digest_of(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub(super) fn role_names() -> String {
    Role::ALL.map(Role::as_str).join(", ")
}

/// 64 hex digits (either case) → 32 bytes.
pub(super) fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// The live token table of a server and the file it comes from; cheap to
/// clone. [`TokenStore::reload`] swaps in a new table atomically: a call sees
/// either the old tokens or the new ones, never a mix.
#[derive(Clone)]
pub struct TokenStore {
    /// The token file, re-read by `reload`.
    path: PathBuf,
    /// The current table; replaced whole, never edited in place. A watch
    /// channel, so open streams ([`Credential`]) learn of every reload.
    table: Arc<watch::Sender<Arc<TokenTable>>>,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.path)
            .field("tokens", &self.current().len())
            .finish()
    }
}

impl TokenStore {
    /// Loads the token file at `path`; a bad file is an error.
    pub fn open(path: impl Into<PathBuf>) -> Result<TokenStore, TokenFileError> {
        let path = path.into();
        let table = TokenTable::load(&path)?;
        Ok(TokenStore {
            path,
            table: Arc::new(watch::Sender::new(Arc::new(table))),
        })
    }

    /// The token file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the token file. A good file replaces every token at once and
    /// returns how many it holds; a bad one is an error and the old tokens stay.
    pub fn reload(&self) -> Result<usize, TokenFileError> {
        let table = TokenTable::load(&self.path)?;
        let n = table.len();
        self.table.send_replace(Arc::new(table));
        Ok(n)
    }

    /// The table in force now.
    pub fn current(&self) -> Arc<TokenTable> {
        self.table.borrow().clone()
    }

    /// The identity holding `token` under the current table.
    pub fn identify(&self, token: &str) -> Option<Identity> {
        self.current().identify(token)
    }

    /// The identity holding `token`, and the [`Credential`] that tells a
    /// call outliving this check (a stream) when a reload removes the token.
    pub fn authenticate(&self, token: &str) -> Option<(Identity, Credential)> {
        let digest = digest_of(token);
        let tables = self.table.subscribe();
        let identity = tables.borrow().grant(&digest)?;
        Some((identity, Credential { digest, tables }))
    }
}

/// A bearer token as a stream holds it: whether the token file in force
/// still lists it. Put in a call's extensions next to its [`Identity`], so
/// WatchTransitions (gRPC, and the dashboard's `/events` over it) can end
/// when SIGHUP removes the token instead of serving it for ever.
#[derive(Clone)]
pub struct Credential {
    /// The token's SHA-256; the token itself is not kept.
    digest: [u8; 32],
    /// Every table the store swaps in.
    tables: watch::Receiver<Arc<TokenTable>>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential").finish_non_exhaustive()
    }
}

impl Credential {
    /// Whether the table in force now lists the token.
    pub fn is_valid(&self) -> bool {
        self.tables.borrow().by_digest.contains_key(&self.digest)
    }

    /// Completes once the table in force no longer lists the token (at
    /// once if it already does not); pends while it does. Cancel-safe.
    pub async fn revoked(&mut self) {
        loop {
            if !self
                .tables
                .borrow_and_update()
                .by_digest
                .contains_key(&self.digest)
            {
                return;
            }
            if self.tables.changed().await.is_err() {
                // The store is gone: the server is stopping, which ends streams itself.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Re-reads `store`'s file on every SIGHUP until `stop` turns true; a bad
/// file is logged and the old tokens stay in force. The handler is in place
/// when this returns (so a SIGHUP no longer ends the process); call it inside
/// a tokio runtime.
#[cfg(unix)]
pub fn reload_on_sighup(store: TokenStore, stop: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                got = hangups.recv() => if got.is_none() { return },
                _ = stop.cancelled() => return,
            }
            match store.reload() {
                Ok(n) => {
                    tracing::info!(file = %store.path().display(), tokens = n, "SIGHUP: token file reloaded")
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: token file refused; the previous tokens stay in force")
                }
            }
        }
    });
    Ok(())
}
