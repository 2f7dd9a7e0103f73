//! The HTTP listener (`--http-listen`): `/metrics` for Prometheus and the
//! approval dashboard, with the gRPC port's TLS and bearer tokens.
//!
//! HTTP/1.1 on hyper; every connection ends with the server. It owns only
//! the connections, the `Host` names it answers to ([`AllowedHosts`]) and
//! `/metrics`' access rule; what the series say is [`crate::metrics`]'s
//! business, the MLflow REST API under `/api/2.0/mlflow/` and
//! `/ajax-api/2.0/mlflow/` is [`crate::mlflow`]'s, every other path is
//! [`crate::dashboard`]'s.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth::TokenStore;
use crate::dashboard::{Body, Dashboard, Registry};
use crate::metrics::Metrics;
use crate::mlflow::{self, Facade};
use crate::settings::PublicUrl;

/// How long a client may take for its TLS handshake or request head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The content type of the text `prometheus-client` writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What each connection needs.
#[derive(Clone)]
struct Shared {
    /// The series.
    metrics: Arc<Metrics>,
    /// The bearer tokens; `None` is local mode (loopback only, open).
    tokens: Option<TokenStore>,
    /// Every path but `/metrics` and the MLflow API's.
    dashboard: Arc<Dashboard>,
    /// The MLflow REST API.
    mlflow: Arc<Facade>,
    /// Which `Host` names are answered.
    hosts: Arc<AllowedHosts>,
}

/// The `Host` names the listener answers to, against DNS rebinding: a page
/// whose name an attacker points at 127.0.0.1 reaches this listener as a
/// same-origin page of that name, and the browser sends that name as
/// `Host`. Refusing names that are not this server's keeps such a page from
/// reading a page (and its CSRF token) or posting a decision.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    /// The listener's port: a loopback name must come with it, or with none.
    port: u16,
    /// `--public-url`'s host and port.
    public: Option<PublicUrl>,
    /// Local mode: every path is checked, `/metrics` too, since nothing else
    /// stands between a page and the data. With tokens, only dashboard paths
    /// are, and only when `--public-url` names the dashboard: a re-bound page
    /// has no session cookie for its name, and `/metrics` and the MLflow API
    /// want a token in every request (their clients address the server by
    /// any name or address).
    local: bool,
}

impl AllowedHosts {
    /// The rule for a listener on `port`.
    pub fn new(port: u16, public: Option<PublicUrl>, local: bool) -> AllowedHosts {
        AllowedHosts {
            port,
            public,
            local,
        }
    }

    /// Whether to answer `req`: its `Host` (exactly one), and the authority
    /// of an absolute-form target if it has one, are this server's names.
    fn admits<B>(&self, req: &Request<B>) -> bool {
        let path = req.uri().path();
        let checked =
            self.local || (self.public.is_some() && path != "/metrics" && !mlflow::serves(path));
        if !checked {
            return true;
        }
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let host = match (hosts.next(), hosts.next()) {
            (Some(host), None) => host.to_str().ok(),
            _ => None,
        };
        host.is_some_and(|h| self.is_ours(h))
            && req
                .uri()
                .authority()
                .is_none_or(|a| self.is_ours(a.as_str()))
    }

    /// Whether `host` (`name` or `name:port`) names this server: a loopback
    /// name or address with this listener's port or none, or the public
    /// URL's host with its port or none (a proxy may drop the port).
    fn is_ours(&self, host: &str) -> bool {
        let Some((name, port)) = split_host(host) else {
            return false;
        };
        let name = name.to_ascii_lowercase();
        let loopback = name == "localhost"
            || name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.to_canonical().is_loopback());
        if loopback && port.is_none_or(|p| p == self.port) {
            return true;
        }
        self.public
            .as_ref()
            .is_some_and(|u| name == u.host && port.is_none_or(|p| p == u.port))
    }
}

/// `name` and the port of a `Host` value; `None` when it is malformed.
fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = match host.rfind([':', ']']) {
        Some(i) if host.as_bytes()[i] == b':' => (&host[..i], Some(&host[i + 1..])),
        _ => (host, None),
    };
    if name.is_empty() || (name.starts_with('[') != name.ends_with(']')) {
        return None;
    }
    match port {
        None => Some((name, None)),
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some((name, Some(p.parse().ok()?)))
        }
        Some(_) => None,
    }
}

/// Serves `listener` until `stop` turns true, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    tokens: Option<TokenStore>,
    hosts: AllowedHosts,
    metrics: Arc<Metrics>,
    registry: Registry,
    stop: CancellationToken,
) {
    let mlflow = Arc::new(Facade::new(
        registry.store.clone(),
        tokens.clone(),
        hosts.public.clone(),
        tls.is_some(),
    ));
    let dashboard = Arc::new(Dashboard::new(registry, tokens.clone(), tls.is_some()));
    let shared = Shared {
        metrics,
        tokens,
        dashboard,
        mlflow,
        hosts: Arc::new(hosts),
    };
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!(error = %e, "http: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        if stop.is_cancelled() {
            break;
        }
        let _ = stream.set_nodelay(true);
        let (tls, shared, stop) = (tls.clone(), shared.clone(), stop.clone());
        connections.spawn(async move {
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, shared, stop).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "http: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "http: TLS handshake timed out"),
                    }
                }
                None => serve_connection(stream, shared, stop).await,
            }
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Serves one connection's requests until it closes or the server stops.
async fn serve_connection<IO>(io: IO, shared: Shared, stop: CancellationToken)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(route(req, &shared).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
}

/// Answers one request.
async fn route(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    if !shared.hosts.admits(&req) {
        let host = req.headers().get(header::HOST);
        tracing::info!(
            ?host,
            "http: refused a request for a host name that is not this server's (see --public-url)"
        );
        return plain(
            StatusCode::MISDIRECTED_REQUEST,
            "this server answers to localhost, 127.0.0.1 and [::1] on its own port, and to the host of \
             --public-url (MODELREG_PUBLIC_URL) when that is set\n",
        );
    }
    if mlflow::serves(req.uri().path()) {
        return shared.mlflow.handle(req).await;
    }
    if req.uri().path() != "/metrics" {
        return shared.dashboard.handle(req).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    if let Some(tokens) = &shared.tokens {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        if token.and_then(|t| tokens.identify(t)).is_none() {
            let mut resp = plain(
                StatusCode::UNAUTHORIZED,
                "send `Authorization: Bearer <token>` with a token from the server's token file\n",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"modelreg\""),
            );
            return resp;
        }
    }
    let body = shared.metrics.render().await;
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
    resp
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(host: Option<&str>, target: &str) -> Request<()> {
        let mut req = Request::get(target);
        if let Some(host) = host {
            req = req.header(header::HOST, host);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn local_mode_answers_loopback_names_of_its_port() {
        let hosts = AllowedHosts::new(8080, None, true);
        for ok in [
            "localhost:8080",
            "LOCALHOST",
            "127.0.0.1:8080",
            "127.9.9.9",
            "[::1]:8080",
            "[::1]",
            "[::ffff:127.0.0.1]:8080",
        ] {
            assert!(hosts.admits(&get(Some(ok), "/")), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "evil.example",
            "localhost:8081",
            "localhost:",
            "localhost:80x",
            "127.0.0.1.evil.example",
            "0.0.0.0:8080",
            "[::1",
            "::1",
            "10.0.0.1:8080",
            "",
        ] {
            assert!(!hosts.admits(&get(Some(bad), "/")), "{bad}");
            assert!(!hosts.admits(&get(Some(bad), "/metrics")), "{bad}");
        }
        assert!(!hosts.admits(&get(None, "/")), "no Host");
        assert!(!hosts.admits(&get(Some("localhost:8080"), "http://evil.example/")));
        let mut two = get(Some("localhost:8080"), "/");
        two.headers_mut()
            .append(header::HOST, HeaderValue::from_static("evil.example"));
        assert!(!hosts.admits(&two), "two Host headers");
    }

    #[test]
    fn the_public_url_adds_its_host() {
        let public = crate::settings::parse_public_url("https://registry.example.com").unwrap();
        let local = AllowedHosts::new(8080, Some(public.clone()), true);
        for ok in [
            "registry.example.com",
            "registry.example.com:443",
            "localhost:8080",
        ] {
            assert!(local.admits(&get(Some(ok), "/")), "{ok}");
        }
        assert!(!local.admits(&get(Some("registry.example.com:8080"), "/")));
        assert!(!local.admits(&get(Some("evil.example"), "/")));

        // With tokens: dashboard paths only, and only with a public URL.
        let tokens = AllowedHosts::new(8080, Some(public), false);
        assert!(!tokens.admits(&get(Some("evil.example"), "/requests")));
        assert!(tokens.admits(&get(Some("10.1.2.3:8080"), "/metrics")));
        let open = AllowedHosts::new(8080, None, false);
        assert!(open.admits(&get(Some("registry.internal:8080"), "/")));
    }
}
