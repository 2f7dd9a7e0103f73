//! Delivering one notification to a webhook: an HTTP/1.1 POST (https with
//! rustls and the Mozilla roots, or a given CA), signed with HMAC-SHA256
//! when a secret is set, and the retry policy around it.
//!
//! Signature: `X-Modelreg-Signature: sha256=<hex HMAC-SHA256(secret,
//! "<timestamp>.<body>")>` with `X-Modelreg-Timestamp` (Unix seconds) and
//! `X-Modelreg-Delivery` (the event sequence, the same on every retry, so a
//! receiver can drop duplicates).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, pki_types::ServerName};

/// `sha256=<hex>` of HMAC-SHA256 over `"<timestamp>.<body>"`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: delivered.
    Delivered(u16),
    /// Worth another try later (5xx, 429, 408, timeout, connection error);
    /// `retry_after` from the response when it said so.
    Retry {
        /// Why.
        reason: String,
        /// The server's Retry-After, if any.
        retry_after: Option<Duration>,
    },
    /// Never going to work as sent (other 4xx, a bad URL).
    Rejected(String),
}

/// A webhook endpoint.
#[derive(Clone)]
pub struct Webhook {
    url: hyper::Uri,
    secret: Option<Vec<u8>>,
    tls: Option<TlsConnector>,
    timeout: Duration,
}

impl Webhook {
    /// A webhook at `url` (`http://` or `https://`). For https the Mozilla
    /// roots are trusted, or only `ca_pem` when given.
    pub fn new(
        url: &str,
        secret: Option<&str>,
        ca_pem: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Webhook, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => None,
            Some("https") => {
                let mut roots = RootCertStore::empty();
                match ca_pem {
                    Some(pem) => {
                        let mut reader = std::io::BufReader::new(pem);
                        for cert in rustls_pem_certs(&mut reader)? {
                            roots
                                .add(cert)
                                .map_err(|e| format!("bad CA certificate: {e}"))?;
                        }
                    }
                    None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                }
                let config = ClientConfig::builder_with_provider(Arc::new(
                    tokio_rustls::rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
                Some(TlsConnector::from(Arc::new(config)))
            }
            _ => return Err(format!("{url:?}: use an http:// or https:// URL")),
        };
        if uri.host().is_none() {
            return Err(format!("{url:?} names no host"));
        }
        Ok(Webhook {
            url: uri,
            secret: secret.map(|s| s.as_bytes().to_vec()),
            tls,
            timeout,
        })
    }

    /// POSTs `body` once (as `content_type`), signed when a secret is set.
    pub async fn post(&self, body: &[u8], content_type: &str, delivery: u64) -> Outcome {
        match tokio::time::timeout(self.timeout, self.attempt(body, content_type, delivery)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Retry {
                reason: format!("no answer within {:?}", self.timeout),
                retry_after: None,
            },
        }
    }

    async fn attempt(&self, body: &[u8], content_type: &str, delivery: u64) -> Outcome {
        let retry = |reason: String| Outcome::Retry {
            reason,
            retry_after: None,
        };
        let host = self.url.host().unwrap_or_default().to_owned();
        let port = self
            .url
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = match TcpStream::connect((host.trim_matches(['[', ']']), port)).await {
            Ok(t) => t,
            Err(e) => return retry(format!("cannot connect to {host}:{port}: {e}")),
        };
        let _ = tcp.set_nodelay(true);
        let path = self.url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut req = Request::post(path)
            .header(hyper::header::HOST, authority(&self.url))
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header(hyper::header::USER_AGENT, "modelreg-notify")
            .header("X-Modelreg-Delivery", delivery.to_string());
        if let Some(secret) = &self.secret {
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            req = req
                .header("X-Modelreg-Timestamp", ts.to_string())
                .header("X-Modelreg-Signature", signature(secret, ts, body));
        }
        let req = match req.body(Full::new(Bytes::copy_from_slice(body))) {
            Ok(r) => r,
            Err(e) => return Outcome::Rejected(format!("cannot build the request: {e}")),
        };
        let response = match &self.tls {
            None => send(TokioIo::new(tcp), req).await,
            Some(tls) => {
                let name = match ServerName::try_from(host.trim_matches(['[', ']']).to_owned()) {
                    Ok(n) => n,
                    Err(e) => return Outcome::Rejected(format!("bad host name {host:?}: {e}")),
                };
                match tls.connect(name, tcp).await {
                    Ok(stream) => send(TokioIo::new(stream), req).await,
                    Err(e) => Err(format!("TLS with {host}: {e}")),
                }
            }
        };
        let (status, retry_after) = match response {
            Ok(r) => r,
            Err(e) => return retry(e),
        };
        match status {
            200..=299 => Outcome::Delivered(status),
            408 | 429 | 500..=599 => Outcome::Retry {
                reason: format!("the webhook answered {status}"),
                retry_after,
            },
            _ => Outcome::Rejected(format!("the webhook answered {status}")),
        }
    }
}

fn authority(uri: &hyper::Uri) -> String {
    uri.authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default()
}

/// Sends one request on a fresh HTTP/1.1 connection; the status and the
/// Retry-After (seconds) of the answer.
async fn send<I>(io: I, req: Request<Full<Bytes>>) -> Result<(u16, Option<Duration>), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let resp = crate::fetch::request_on(io, req).await?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // Read (and drop) the body so the connection ends cleanly.
    let _ = resp.into_body().collect().await;
    Ok((status, retry_after))
}

/// The certificates of a PEM bundle.
fn rustls_pem_certs(
    reader: &mut dyn std::io::BufRead,
) -> Result<Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>, String> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut text = Vec::new();
    reader
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read the CA certificate: {e}"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad CA certificate: {e}"))?;
    if certs.is_empty() {
        return Err("the CA file holds no certificate".into());
    }
    Ok(certs)
}

/// The wait before retry number `attempt` (1-based): exponential from 500 ms,
/// capped at `max`, with jitter; a server's Retry-After wins when longer.
pub fn backoff(attempt: u32, max: Duration, retry_after: Option<Duration>) -> Duration {
    let base = Duration::from_millis(500) * 2u32.saturating_pow(attempt.saturating_sub(1).min(10));
    let capped = base.min(max);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jittered = capped / 2 + capped.mul_f64(f64::from(nanos % 1000) / 2000.0);
    match retry_after {
        Some(r) if r > jittered => r,
        _ => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_a_known_hmac() {
        // HMAC-SHA256(key="secret", "1700000000.{}") computed independently:
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"secret",b"1700000000.{}",hashlib.sha256).hexdigest())'
        assert_eq!(
            signature(b"secret", 1_700_000_000, b"{}"),
            "sha256=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let max = Duration::from_secs(30);
        assert!(backoff(1, max, None) <= Duration::from_millis(500));
        assert!(backoff(20, max, None) <= max);
        assert!(backoff(20, max, None) >= max / 2);
        assert_eq!(
            backoff(1, max, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn only_http_and_https_urls_are_accepted() {
        let t = Duration::from_secs(1);
        assert!(Webhook::new("http://127.0.0.1:9/hook", None, None, t).is_ok());
        assert!(Webhook::new("https://hooks.example.com/x", None, None, t).is_ok());
        assert!(Webhook::new("ftp://x/y", None, None, t).is_err());
        assert!(Webhook::new("not a url", None, None, t).is_err());
    }
}
