//! Servers with a token file: identities with one role each, and clients
//! that call as them, for the suites whose point is who may do what.

use std::path::{Path, PathBuf};

use modelreg_client::{ConnectOptions, RegistryClient};

/// The bearer token a token file of [`token_file`] gives `identity`.
pub fn token_of(identity: &str) -> String {
    format!("token-of-{identity}-0123456789")
}

/// Writes `dir/tokens.toml` granting each `(identity, role)` its
/// [`token_of`] token; the path, for `Settings::auth_tokens`.
pub fn token_file(dir: &Path, grants: &[(&str, &str)]) -> PathBuf {
    let text: String = grants
        .iter()
        .map(|(identity, role)| {
            format!(
                "[[tokens]]\nidentity = {identity:?}\nroles = [{role:?}]\ntoken_sha256 = {:?}\n\n",
                modelreg_server::domain::audit::sha256_hex(token_of(identity).as_bytes())
            )
        })
        .collect();
    let path = dir.join("tokens.toml");
    std::fs::write(&path, text).expect("write the token file");
    path
}

/// A connection to `url` calling as `identity` with its [`token_of`] token.
pub async fn client_with_token(url: &str, identity: &str) -> RegistryClient {
    modelreg_client::connect(&ConnectOptions::new(url).token(token_of(identity)))
        .await
        .expect("connect to test server")
}
