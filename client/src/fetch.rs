//! Verified inputs for the workers: an evaluation set or an artifact,
//! materialised from its URI into the [`Cache`] and checked against its
//! digest before any command sees it.
//!
//! `file://` URIs (and plain absolute paths) are copied, `http://` and
//! `https://` are downloaded (Mozilla roots, up to five redirects), and any
//! other scheme is handed to a fetch hook: `sh -c CMD` with
//! `MODELREG_FETCH_URI`, `MODELREG_FETCH_DIGEST` and `MODELREG_FETCH_DEST`
//! (a path that does not exist yet, where the hook writes a file or a
//! directory). Content in the cache is used again while it is unchanged; a
//! local source is re-read whenever its size or modification time changed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, pki_types::ServerName};

use crate::verify::{Admit, Cache, Sha256Digest, stamp_of};
use crate::webhook::backoff;

/// One input a worker's command needs.
pub struct Input {
    /// How messages name it, e.g. `evaluation set holdout@v1`.
    pub what: String,
    /// Where it lives.
    pub uri: String,
    /// The digest it must have (`sha256:…`).
    pub digest: String,
    /// The environment variable that gives the command its verified path.
    pub env: &'static str,
}

impl Input {
    /// A version's artifact, when the version records a digest (there is
    /// nothing to check it against otherwise), given as
    /// `MODELREG_ARTIFACT_PATH`.
    pub fn artifact(model: &str, version: &crate::pb::ModelVersion) -> Option<Input> {
        (!version.artifact_digest.is_empty()).then(|| Input {
            what: format!("artifact of {model}/{}", version.version),
            uri: version.artifact_uri.clone(),
            digest: version.artifact_digest.clone(),
            env: "MODELREG_ARTIFACT_PATH",
        })
    }
}

/// The cache directory when none is given: `$XDG_CACHE_HOME/modelreg`,
/// else `$HOME/.cache/modelreg`, else `./modelreg-cache`.
pub fn default_cache_dir() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".cache")))
        .map(|d| d.join("modelreg"))
        .unwrap_or_else(|| PathBuf::from("modelreg-cache"))
}

/// Why an input could not be provided.
#[derive(Debug)]
pub enum FetchError {
    /// The content is not what the registry recorded.
    Mismatch {
        /// The input, as [`Input::what`] names it.
        what: String,
        /// The recorded digest.
        expected: String,
        /// The digest of what was fetched.
        actual: String,
    },
    /// It could not be fetched or read (after the retries).
    Failed(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Mismatch {
                what,
                expected,
                actual,
            } => write!(
                f,
                "digest mismatch for {what}: expected {expected}, got {actual}"
            ),
            FetchError::Failed(why) => f.write_str(why),
        }
    }
}

/// Materialises and verifies inputs.
#[derive(Clone)]
pub struct Fetcher {
    /// Where verified content is kept.
    cache: Cache,
    /// The command for schemes other than file and http(s).
    hook: Option<String>,
    /// How long one download or hook run may take.
    timeout: Duration,
    /// Tries per input when fetching fails (a mismatch is never retried).
    attempts: u32,
}

impl Fetcher {
    /// A fetcher keeping content in `cache`.
    pub fn new(cache: Cache, hook: Option<String>, timeout: Duration, attempts: u32) -> Fetcher {
        Fetcher {
            cache,
            hook,
            timeout,
            attempts: attempts.max(1),
        }
    }

    /// Each input's verified path as `(ENV, path)`; the first input that
    /// cannot be provided ends it. `log` hears of each failed attempt.
    pub async fn verified_env(
        &self,
        inputs: &[Input],
        log: impl Fn(String),
    ) -> Result<Vec<(&'static str, String)>, FetchError> {
        let mut env = Vec::new();
        for input in inputs {
            let mut attempt = 0;
            let path = loop {
                attempt += 1;
                match self.verified(input).await {
                    Err(FetchError::Failed(why)) if attempt < self.attempts => {
                        log(format!(
                            "{}: attempt {attempt}/{} failed: {why}",
                            input.what, self.attempts
                        ));
                        tokio::time::sleep(backoff(attempt, Duration::from_secs(30), None)).await;
                    }
                    other => break other?,
                }
            };
            env.push((input.env, path.display().to_string()));
        }
        Ok(env)
    }

    /// The verified local path of `input`.
    pub async fn verified(&self, input: &Input) -> Result<PathBuf, FetchError> {
        let failed = |why: String| FetchError::Failed(format!("{}: {why}", input.what));
        let digest = Sha256Digest::parse(&input.digest).map_err(failed)?;
        let local = local_path(&input.uri);
        let source_stamp = match &local {
            Some(p) => Some(stamp_of(p).map_err(|e| failed(format!("{}: {e}", p.display())))?),
            None => None,
        };
        let cache = self.cache.clone();
        let stamp = source_stamp.clone();
        let hit = tokio::task::spawn_blocking(move || cache.lookup(&digest, stamp.as_deref()))
            .await
            .map_err(|e| failed(e.to_string()))?;
        if let Some(path) = hit {
            return Ok(path);
        }
        let staging = self
            .cache
            .staging_dir()
            .map_err(|e| failed(format!("cannot use the cache: {e}")))?;
        let staged = staging.path().join("content");
        match &local {
            Some(source) => {
                let (from, to) = (source.clone(), staged.clone());
                tokio::task::spawn_blocking(move || copy_tree(&from, &to))
                    .await
                    .map_err(|e| failed(e.to_string()))?
                    .map_err(|e| failed(format!("cannot copy {}: {e}", source.display())))?
            }
            None => {
                let fetch = async {
                    if input.uri.starts_with("http://") || input.uri.starts_with("https://") {
                        download(&input.uri, &staged).await
                    } else {
                        self.run_hook(input, &staged).await
                    }
                };
                match tokio::time::timeout(self.timeout, fetch).await {
                    Ok(r) => r.map_err(failed)?,
                    Err(_) => return Err(failed(format!("not fetched within {:?}", self.timeout))),
                }
            }
        }
        let cache = self.cache.clone();
        let admitted =
            tokio::task::spawn_blocking(move || cache.admit(&staged, &digest, source_stamp))
                .await
                .map_err(|e| failed(e.to_string()))?;
        match admitted {
            Ok(path) => Ok(path),
            Err(Admit::Mismatch(actual)) => Err(FetchError::Mismatch {
                what: input.what.clone(),
                expected: digest.to_string(),
                actual: actual.to_string(),
            }),
            Err(Admit::Unreadable(why)) => Err(failed(format!("{} as fetched: {why}", input.uri))),
        }
    }

    /// Runs the fetch hook for `input`, writing to `dest`.
    async fn run_hook(&self, input: &Input, dest: &Path) -> Result<(), String> {
        let Some(hook) = &self.hook else {
            return Err(format!(
                "no built-in way to fetch {} (file://, http:// and https:// are built in): give --fetch CMD",
                input.uri
            ));
        };
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(hook)
            .env("MODELREG_FETCH_URI", &input.uri)
            .env("MODELREG_FETCH_DIGEST", &input.digest)
            .env("MODELREG_FETCH_DEST", dest)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("cannot start the fetch command: {e}"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: String = stderr.trim().chars().rev().take(2000).collect();
            let tail: String = tail.chars().rev().collect();
            return Err(format!(
                "the fetch command exited with {}: {tail}",
                out.status
            ));
        }
        if std::fs::symlink_metadata(dest).is_err() {
            return Err(format!(
                "the fetch command wrote nothing to MODELREG_FETCH_DEST for {}",
                input.uri
            ));
        }
        Ok(())
    }
}

/// The local path a `file://` URI or an absolute path names.
fn local_path(uri: &str) -> Option<PathBuf> {
    if let Some(rest) = uri.strip_prefix("file://") {
        // file:///p and file://localhost/p
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        return Some(PathBuf::from(percent_decode(path)));
    }
    uri.starts_with('/').then(|| PathBuf::from(uri))
}

/// Decodes `%XX` escapes (a file URI's spaces and the like).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Copies a file, or a directory tree of regular files, from `from` to `to`.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(from)?;
    if !meta.is_dir() {
        return std::fs::copy(from, to).map(|_| ());
    }
    std::fs::create_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        copy_tree(&entry.path(), &to.join(entry.file_name()))?;
    }
    Ok(())
}

/// GETs `url` into the file `dest`, following up to five redirects.
async fn download(url: &str, dest: &Path) -> Result<(), String> {
    let mut url = url.to_owned();
    for _ in 0..=5 {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
        let headers = [(hyper::header::USER_AGENT, "modelreg-worker")];
        let resp = get(&uri, &headers).await?;
        match save(resp, dest).await? {
            Got::Done => return Ok(()),
            Got::Redirect(location) => url = resolve(&uri, &location),
        }
    }
    Err(format!("{url}: too many redirects"))
}

/// One GET of `uri` with `headers` on a fresh HTTP/1.1 connection (TLS with
/// the Mozilla roots for https): the answer, whose body is still to be read.
pub(crate) async fn get(
    uri: &hyper::Uri,
    headers: &[(hyper::header::HeaderName, &str)],
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let host = uri
        .host()
        .ok_or_else(|| format!("{uri} names no host"))?
        .trim_matches(['[', ']'])
        .to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = hyper::Request::get(path).header(
        hyper::header::HOST,
        uri.authority().map(|a| a.as_str()).unwrap_or(&host),
    );
    for (name, value) in headers {
        req = req.header(name, *value);
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    if https {
        let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host:?}: {e}"))?;
        let tls = tls_connector()
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        request_on(TokioIo::new(tls), req).await
    } else {
        request_on(TokioIo::new(tcp), req).await
    }
}

/// How one GET ended.
enum Got {
    /// The body is in the file.
    Done,
    /// Go there instead.
    Redirect(String),
}

/// A 2xx answer's body written to `dest`, or the redirect it is.
async fn save(resp: hyper::Response<hyper::body::Incoming>, dest: &Path) -> Result<Got, String> {
    let status = resp.status();
    let location = resp.headers().get(hyper::header::LOCATION);
    if let Some(location) = location.filter(|_| status.is_redirection()) {
        let location = location.to_str().map_err(|e| e.to_string())?;
        return Ok(Got::Redirect(location.to_owned()));
    }
    if !status.is_success() {
        return Err(format!("GET answered {status}"));
    }
    let mut file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| e.to_string())?;
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the body: {e}"))?;
        if let Some(data) = frame.data_ref() {
            file.write_all(data).await.map_err(|e| e.to_string())?;
        }
    }
    file.flush().await.map_err(|e| e.to_string())?;
    Ok(Got::Done)
}

/// Sends `req` on a fresh HTTP/1.1 connection over `io`: the answer, whose
/// body is still to be read.
pub(crate) async fn request_on<I, B>(
    io: I,
    req: hyper::Request<B>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    // The connection ends with the exchange (the sender is dropped).
    tokio::spawn(conn);
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("sending the request: {e}"))
}

/// A redirect's `location`, absolute, relative to `base`.
fn resolve(base: &hyper::Uri, location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    format!("{scheme}://{authority}{location}")
}

/// TLS with the Mozilla roots.
fn tls_connector() -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_name_local_paths() {
        assert_eq!(
            local_path("file:///data/a%20b.csv"),
            Some("/data/a b.csv".into())
        );
        assert_eq!(local_path("file://localhost/x"), Some("/x".into()));
        assert_eq!(local_path("/abs/x"), Some("/abs/x".into()));
        assert_eq!(local_path("s3://bucket/x"), None);
    }

    #[test]
    fn redirects_resolve_against_the_request() {
        let base: hyper::Uri = "http://h:8/a/b".parse().unwrap();
        assert_eq!(resolve(&base, "/c"), "http://h:8/c");
        assert_eq!(resolve(&base, "https://x/y"), "https://x/y");
    }
}
