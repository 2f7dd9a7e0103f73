//! Who is calling, and what they may do. Roles and their meaning are documented in the README (Authentication and TLS).
//!
//! Every call reaching the service carries an [`Identity`] in its request
//! extensions. With a token file the identity comes from the bearer token;
//! in local mode (no token file, loopback only) it is the `x-modelreg-actor`
//! header (or `anonymous`) holding every role.
//!
//! This module owns the token file ([`TokenTable`], reloaded through
//! [`TokenStore`]), the action → role table ([`Action::required_role`], which
//! the gRPC layer reaches by method name through [`required_role`] and the
//! dashboard by [`Action`]) and the tower
//! layer ([`AuthLayer`]) that refuses unauthenticated or under-privileged
//! `ModelRegistryService` calls before any handler runs. Health and reflection
//! stay open. Checks that depend on the resource (no self-approval, cancel by
//! the requester) belong to the service, not here.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use strum::{Display, EnumString, IntoStaticStr};

use tonic::Status;
use tonic::codegen::Service;
use tonic::codegen::http;
use tower_layer::Layer;

/// The self-declared caller name of local mode (the service reads the same key).
use modelreg_api::ACTOR_HEADER;

mod actions;
mod tokens;

pub use actions::*;
pub use tokens::*;

/// A role from the token file. `Admin` implies every other role.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, IntoStaticStr, EnumString, Display,
)]
#[strum(serialize_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Reader,
    /// Registers versions and requests transitions.
    Publisher,
    /// Attaches evaluations.
    Evaluator,
    /// Reports deployments and live metrics.
    Deployer,
    /// Approves, rejects and rolls back.
    Approver,
    /// Changes policies and evaluation sets; implies every role.
    Admin,
}

impl Role {
    /// Every role, in declaration order.
    pub const ALL: [Role; 6] = [
        Role::Reader,
        Role::Publisher,
        Role::Evaluator,
        Role::Deployer,
        Role::Approver,
        Role::Admin,
    ];

    /// The name used in token files and error messages.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Parses a role name.
    pub fn parse(raw: &str) -> Option<Role> {
        raw.parse().ok()
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The name recorded as the actor of every event the call causes.
    pub name: String,
    /// The roles granted.
    pub roles: BTreeSet<Role>,
    /// True in local mode (no token file): the name is self-declared.
    pub local: bool,
}

impl Identity {
    /// A local-mode caller: self-declared name, every role.
    pub fn local(name: impl Into<String>) -> Identity {
        Identity {
            name: name.into(),
            roles: Role::ALL.into_iter().collect(),
            local: true,
        }
    }

    /// Whether the caller holds `role`: admins hold every role, and every
    /// role includes reading.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
            || self.roles.contains(&Role::Admin)
            || (role == Role::Reader && !self.roles.is_empty())
    }
}

/// The gRPC path prefix of the calls this module guards. Health checks and
/// reflection stay open so load balancers and `grpcurl list` need no token.
pub const GUARDED_PREFIX: &str = "/modelreg.v1.ModelRegistryService/";

/// The role a `ModelRegistryService` method needs, by its name (the last
/// segment of the gRPC path): its [`Action`]'s. An unknown method needs
/// [`Role::Admin`], so a method added to the proto is closed until someone
/// gives it an action and decides who may call it.
pub fn required_role(method: &str) -> Role {
    Action::from_method(method).map_or(Role::Admin, Action::required_role)
}

/// Tower layer that authenticates every `ModelRegistryService` call and
/// checks its role, before the service sees it. See [`AuthService`].
#[derive(Clone, Debug)]
pub struct AuthLayer {
    /// The tokens; `None` is local mode.
    tokens: Option<TokenStore>,
}

impl AuthLayer {
    /// Bearer-token authentication against `tokens`.
    pub fn tokens(tokens: TokenStore) -> AuthLayer {
        AuthLayer {
            tokens: Some(tokens),
        }
    }

    /// Local mode: every caller is who its `x-modelreg-actor` header says,
    /// with every role.
    pub fn local() -> AuthLayer {
        AuthLayer { tokens: None }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// Puts the caller's [`Identity`] into the extensions of each
/// `ModelRegistryService` call (where handlers read it from
/// `tonic::Request::extensions()`), or answers UNAUTHENTICATED /
/// PERMISSION_DENIED without calling the service. Other paths pass untouched.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    /// The routes behind this layer.
    inner: S,
    /// The tokens; `None` is local mode.
    tokens: Option<TokenStore>,
}

/// What the layer decided for one call.
enum Verdict {
    /// Not a guarded path.
    Pass,
    /// Forward with this identity (and its token, for streams).
    Allow(Identity, Option<Credential>),
    /// Answer with this status.
    Refuse(Status),
}

impl<S> AuthService<S> {
    fn judge<B>(&self, req: &http::Request<B>) -> Verdict {
        let Some(method) = req.uri().path().strip_prefix(GUARDED_PREFIX) else {
            return Verdict::Pass;
        };
        let Some(tokens) = &self.tokens else {
            // Lenient: the service validates the header and answers
            // INVALID_ARGUMENT for a bad one.
            let name = req
                .headers()
                .get(ACTOR_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|s| !s.is_empty())
                .unwrap_or("anonymous");
            return Verdict::Allow(Identity::local(name), None);
        };
        let token = match bearer_token(req.headers()) {
            Ok(t) => t,
            Err(problem) => {
                tracing::info!(method, problem, "call refused: not authenticated");
                return Verdict::Refuse(unauthenticated(problem));
            }
        };
        let Some((identity, credential)) = tokens.authenticate(token) else {
            tracing::info!(method, "call refused: unknown bearer token");
            return Verdict::Refuse(unauthenticated("unknown bearer token"));
        };
        let role = required_role(method);
        if !identity.has(role) {
            tracing::info!(method, identity = %identity.name, role = %role, "call refused: missing role");
            return Verdict::Refuse(Status::permission_denied(format!(
                "{} lacks the role \"{role}\" needed by {method}",
                identity.name
            )));
        }
        Verdict::Allow(identity, Some(credential))
    }
}

/// UNAUTHENTICATED saying what is wrong and how to authenticate; never
/// echoes what the caller sent.
fn unauthenticated(problem: &str) -> Status {
    Status::unauthenticated(format!(
        "{problem}: send the metadata `authorization: Bearer <token>` with a token whose SHA-256 is in the server's token file (modelreg CLI: --token or MODELREG_TOKEN)"
    ))
}

/// The token of an `authorization: Bearer <token>` header, or what is wrong.
fn bearer_token(headers: &http::HeaderMap) -> Result<&str, &'static str> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values.next().ok_or("missing bearer token")?;
    if values.next().is_some() {
        return Err("more than one authorization header");
    }
    let value = value
        .to_str()
        .map_err(|_| "the authorization header is not text")?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or("the authorization header is not `Bearer <token>`")?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err("the authorization header is not `Bearer <token>`");
    }
    Ok(token)
}

impl<S, B, ResBody> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.judge(&req) {
            Verdict::Pass => {}
            Verdict::Refuse(status) => {
                // A complete gRPC answer (HTTP 200, grpc-status), so unary
                // and streaming clients alike see the code at call time.
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
            Verdict::Allow(identity, credential) => {
                if !identity.local {
                    // Nothing downstream may read a self-declared name when
                    // the caller proved who it is.
                    match http::HeaderValue::from_str(&identity.name) {
                        Ok(v) => req.headers_mut().insert(ACTOR_HEADER, v),
                        Err(_) => req.headers_mut().remove(ACTOR_HEADER),
                    };
                }
                req.extensions_mut().insert(identity);
                if let Some(credential) = credential {
                    req.extensions_mut().insert(credential);
                }
            }
        }
        // The clone is not the instance `poll_ready` readied; swap them.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH_A: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    const HASH_B: &str = "486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7";

    fn entry(identity: &str, roles: &str, hash: &str) -> String {
        format!(
            "[[tokens]]\nidentity = \"{identity}\"\nroles = {roles}\ntoken_sha256 = \"{hash}\"\n"
        )
    }

    fn parse_err(text: &str) -> String {
        TokenTable::parse(text, "tokens.toml")
            .expect_err("the file must be refused")
            .0
    }

    /// A good file maps each token (by its SHA-256, either hex case) to its identity and roles.
    #[test]
    fn good_file_identifies_tokens() {
        let text = entry("alice", r#"["publisher", "approver"]"#, HASH_A)
            + &entry("bob", r#"["reader"]"#, &HASH_B.to_uppercase());
        let table = TokenTable::parse(&text, "tokens.toml").unwrap();
        assert_eq!(table.len(), 2);
        // HASH_A is sha256("hello"), HASH_B is sha256("world").
        let alice = table.identify("hello").expect("alice's token");
        assert_eq!(alice.name, "alice");
        assert!(!alice.local);
        assert!(alice.has(Role::Approver) && alice.has(Role::Reader));
        assert!(!alice.has(Role::Admin) && !alice.has(Role::Deployer));
        assert_eq!(table.identify("world").unwrap().name, "bob");
        assert!(table.identify("hello ").is_none());
        assert!(table.identify(HASH_A).is_none());
    }

    /// Bad hex, short or long digests are refused, naming the file and the entry.
    #[test]
    fn bad_hex_is_refused() {
        let bad = HASH_A.replace('2', "g");
        let msg = parse_err(&entry("alice", r#"["reader"]"#, &bad));
        assert!(msg.contains("tokens.toml"), "{msg}");
        assert!(msg.contains("entry 1") && msg.contains("alice"), "{msg}");
        assert!(msg.contains("token_sha256"), "{msg}");
        parse_err(&entry("alice", r#"["reader"]"#, &HASH_A[..63]));
        parse_err(&entry("alice", r#"["reader"]"#, &format!("{HASH_A}0")));
        parse_err(&entry("alice", r#"["reader"]"#, ""));
    }

    /// A role that does not exist is refused, and the message lists the real ones.
    #[test]
    fn unknown_role_is_refused() {
        let text = entry("alice", r#"["reader"]"#, HASH_A) + &entry("bob", r#"["root"]"#, HASH_B);
        let msg = parse_err(&text);
        assert!(msg.contains("entry 2") && msg.contains("bob"), "{msg}");
        assert!(
            msg.contains("\"root\"") && msg.contains("approver"),
            "{msg}"
        );
        parse_err(&entry("alice", r#"["Reader"]"#, HASH_A));
    }

    /// Two entries with the same token hash (in any hex case) are refused.
    #[test]
    fn duplicate_hash_is_refused() {
        let text = entry("alice", r#"["reader"]"#, HASH_A)
            + &entry("bob", r#"["admin"]"#, &HASH_A.to_uppercase());
        let msg = parse_err(&text);
        assert!(
            msg.contains("entry 2") && msg.contains("already used"),
            "{msg}"
        );
        assert!(msg.contains("alice"), "{msg}");
    }

    /// An entry without roles is refused.
    #[test]
    fn empty_roles_are_refused() {
        let msg = parse_err(&entry("alice", "[]", HASH_A));
        assert!(msg.contains("roles is empty"), "{msg}");
    }

    /// Unknown keys (typos) are refused at the top level and in entries.
    #[test]
    fn unknown_keys_are_refused() {
        let text = entry("alice", r#"["reader"]"#, HASH_A) + "expires = \"tomorrow\"\n";
        let msg = parse_err(&text);
        assert!(msg.contains("expires"), "{msg}");
        let msg = parse_err(&entry("alice", r#"["reader"]"#, HASH_A).replace("tokens", "token"));
        assert!(msg.contains("token"), "{msg}");
        // A missing key is refused too.
        let msg = parse_err("[[tokens]]\nidentity = \"alice\"\nroles = [\"reader\"]\n");
        assert!(msg.contains("token_sha256"), "{msg}");
    }

    /// Bad identities, an empty file and broken TOML are refused.
    #[test]
    fn other_bad_files_are_refused() {
        parse_err(&entry("", r#"["reader"]"#, HASH_A));
        parse_err(&entry("al\\u0007ice", r#"["reader"]"#, HASH_A));
        parse_err(&entry(&"x".repeat(257), r#"["reader"]"#, HASH_A));
        TokenTable::parse(&entry(&"é".repeat(256), r#"["reader"]"#, HASH_A), "t").unwrap();
        assert!(parse_err("").contains("no [[tokens]]"));
        parse_err("[[tokens]\n");
    }

    /// `reload` swaps in a good file whole and keeps the old tokens when the new file is bad.
    #[test]
    fn reload_replaces_tokens_or_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, entry("alice", r#"["reader"]"#, HASH_A)).unwrap();
        let store = TokenStore::open(&path).unwrap();
        assert_eq!(store.identify("hello").unwrap().name, "alice");

        std::fs::write(&path, entry("bob", r#"["admin"]"#, HASH_B)).unwrap();
        assert_eq!(store.reload().unwrap(), 1);
        assert!(store.identify("hello").is_none());
        assert_eq!(store.identify("world").unwrap().name, "bob");

        std::fs::write(&path, entry("carol", r#"["wizard"]"#, HASH_A)).unwrap();
        let err = store.reload().unwrap_err();
        assert!(err.0.contains("wizard"), "{err}");
        assert_eq!(store.identify("world").unwrap().name, "bob");
        assert!(store.identify("hello").is_none());

        std::fs::remove_file(&path).unwrap();
        assert!(store.reload().unwrap_err().0.contains("cannot read"));
        assert_eq!(store.identify("world").unwrap().name, "bob");
    }

    /// A credential stays valid across reloads that keep its token and
    /// reports the first reload that drops it.
    #[tokio::test]
    async fn credentials_learn_of_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let both = entry("alice", r#"["reader"]"#, HASH_A) + &entry("bob", r#"["admin"]"#, HASH_B);
        std::fs::write(&path, &both).unwrap();
        let store = TokenStore::open(&path).unwrap();
        assert!(store.authenticate("nobody").is_none());
        let (alice, mut credential) = store.authenticate("hello").unwrap();
        assert_eq!(alice.name, "alice");

        store.reload().unwrap();
        assert!(credential.is_valid(), "a reload that keeps the token");
        std::fs::write(&path, entry("bob", r#"["admin"]"#, HASH_B)).unwrap();
        store.reload().unwrap();
        assert!(!credential.is_valid());
        let bound = std::time::Duration::from_secs(30);
        tokio::time::timeout(bound, credential.revoked())
            .await
            .expect("revoked() completes once the token is gone");
    }

    /// Every method named in the role table maps to its role; others need admin.
    #[test]
    fn role_table() {
        assert_eq!(required_role("GetModel"), Role::Reader);
        assert_eq!(required_role("WatchTransitions"), Role::Reader);
        assert_eq!(required_role("TransitionStage"), Role::Publisher);
        assert_eq!(required_role("AttachEvaluation"), Role::Evaluator);
        assert_eq!(required_role("ReportLiveMetric"), Role::Deployer);
        assert_eq!(required_role("ReportWorkerFailure"), Role::Evaluator);
        assert_eq!(required_role("Rollback"), Role::Approver);
        assert_eq!(required_role("CreateEvaluationSet"), Role::Admin);
        assert_eq!(required_role("DropEverything"), Role::Admin);
    }

    /// Only `Bearer <token>` (scheme in any case) is accepted.
    #[test]
    fn bearer_header_parsing() {
        let with = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert_eq!(bearer_token(&with("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(&with("bearer abc")), Ok("abc"));
        assert!(bearer_token(&with("Basic abc")).is_err());
        assert!(bearer_token(&with("Bearer ")).is_err());
        assert!(bearer_token(&with("abc")).is_err());
        assert!(bearer_token(&http::HeaderMap::new()).is_err());
    }
}
