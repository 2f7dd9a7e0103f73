//! The HTTP listener (`--http-listen`): `/metrics` for Prometheus and the
//! approval dashboard, with the gRPC port's TLS and bearer tokens.
//!
//! HTTP/1.1 on hyper; every connection ends with the server. It owns only
//! the connections and `/metrics`' access rule; what the series say is
//! [`crate::metrics`]'s business, every other path is [`crate::dashboard`]'s.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::auth::TokenStore;
use crate::dashboard::{Body, Dashboard};
use crate::metrics::Metrics;
use crate::service::RegistryService;

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
    /// Every path but `/metrics`.
    dashboard: Arc<Dashboard>,
}

/// Serves `listener` until `stop` turns true, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    tokens: Option<TokenStore>,
    metrics: Arc<Metrics>,
    service: RegistryService,
    mut stop: watch::Receiver<bool>,
) {
    let dashboard = Arc::new(Dashboard::new(service, tokens.clone(), tls.is_some()));
    let shared = Shared {
        metrics,
        tokens,
        dashboard,
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
            _ = stop.changed() => break,
        };
        if *stop.borrow() {
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
async fn serve_connection<IO>(io: IO, shared: Shared, mut stop: watch::Receiver<bool>)
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
        _ = stop.wait_for(|stopped| *stopped) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
}

/// Answers one request.
async fn route(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
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
