//! The server's configuration: one clap struct, every flag with its
//! `MODELREG_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// modelreg-server: the model registry's gRPC server.
#[derive(Debug, Clone, Parser)]
#[command(name = "modelreg-server", version, about)]
pub struct Settings {
    /// The address to serve gRPC on.
    #[arg(long, env = "MODELREG_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// The address of the HTTP listener that serves the approval dashboard
    /// and `/metrics` (Prometheus text format), or `off`. Same TLS and bearer
    /// tokens as the gRPC port.
    #[arg(long, env = "MODELREG_HTTP_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_http_listen)]
    pub http_listen: HttpListen,

    /// Once the gRPC and HTTP listeners are bound, write the addresses they
    /// got to this file, one line each: `grpc=127.0.0.1:41234` and (unless
    /// --http-listen is off) `http=127.0.0.1:41235`. It is written whole
    /// (a temporary file renamed into place) and removed at start, so a
    /// script or test that starts the server on port 0 polls for it to learn
    /// the real ports instead of picking a "free" one that can be taken.
    #[arg(long, env = "MODELREG_READY_FILE", value_name = "FILE")]
    pub ready_file: Option<PathBuf>,

    /// The database: sqlite:///absolute/path.db or sqlite://relative/path.db
    /// (created with its folder on first start), or
    /// postgres://user:password@host:5432/database for several replicas.
    #[arg(
        long,
        env = "MODELREG_DATABASE_URL",
        default_value = "sqlite://modelreg-data/registry.db"
    )]
    pub database_url: String,

    /// Most connections this server opens to a PostgreSQL database (SQLite
    /// always uses one writer and eight readers).
    #[arg(long, env = "MODELREG_DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,

    /// Log format.
    #[arg(long, env = "MODELREG_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// How often an idle WatchTransitions stream receives a heartbeat, e.g.
    /// `10s`, `500ms`.
    #[arg(long, env = "MODELREG_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = modelreg_api::duration::parse)]
    pub heartbeat_interval: Duration,

    /// The token file (TOML, `[[tokens]]` entries with identity, roles and
    /// token_sha256): callers must send `authorization: Bearer <token>`.
    /// Re-read on SIGHUP. Without it the server runs in local mode, and only
    /// on a loopback address.
    #[arg(long, env = "MODELREG_AUTH_TOKENS", value_name = "FILE")]
    pub auth_tokens: Option<PathBuf>,

    /// The server's TLS certificate chain (PEM); needs --tls-key.
    #[arg(
        long,
        env = "MODELREG_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM); needs --tls-cert.
    #[arg(
        long,
        env = "MODELREG_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// The URL people open the dashboard at when it is not a loopback
    /// address, e.g. `https://registry.example.com` behind a proxy. In local
    /// mode the HTTP listener answers only requests whose `Host` is a
    /// loopback name or address with its own port, or this URL's host (DNS
    /// rebinding); with a token file, dashboard pages follow the same rule
    /// once this is set.
    #[arg(long, env = "MODELREG_PUBLIC_URL", value_name = "URL", value_parser = parse_public_url)]
    pub public_url: Option<PublicUrl>,

    /// How often the policy engine applies the models' archival policies
    /// (archiving passed-over candidates, watching live metrics), e.g. `60s`,
    /// `5m`. Every replica may run it: each action is taken once.
    #[arg(long, env = "MODELREG_POLICY_INTERVAL", default_value = "60s", value_parser = modelreg_api::duration::parse)]
    pub policy_interval: Duration,

    /// What "now" is for policy decisions and unstamped live metrics; the
    /// system clock unless an embedder (a test) sets another.
    #[arg(skip)]
    pub clock: crate::policy::Clock,
}

impl Settings {
    /// Settings for a server on a database URL with every other flag at its default.
    pub fn for_database(database_url: impl Into<String>) -> Settings {
        let mut s = Settings::parse_from(["modelreg-server"]);
        s.database_url = database_url.into();
        // Whatever the environment says, tests and embedders start without
        // authentication or TLS unless they ask for them.
        s.auth_tokens = None;
        s.tls_cert = None;
        s.tls_key = None;
        // An embedder holds its listeners and knows their addresses.
        s.ready_file = None;
        // Parallel tests must never fight over port 8080; a test that wants
        // the HTTP listener asks for 127.0.0.1:0.
        s.http_listen = HttpListen::Off;
        s.public_url = None;
        s
    }
}

/// `--public-url`: where the dashboard is served from, as the browser sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    /// The host name or address, lowercase (an IPv6 address in brackets).
    pub host: String,
    /// The port the browser connects to (the scheme's default when the URL has none).
    pub port: u16,
    /// The port a browser leaves out of `Host`: 443 for https, 80 for http.
    pub default_port: u16,
}

/// Parses an `http://` or `https://` URL with a host, an optional port, and
/// no path, query or credentials.
pub fn parse_public_url(raw: &str) -> Result<PublicUrl, String> {
    let bad = |why: &str| format!("{raw:?} {why}: give a URL like https://registry.example.com");
    let uri: hyper::Uri = raw.trim().parse().map_err(|_| bad("is not a URL"))?;
    let default_port = match uri.scheme_str() {
        Some("https") => 443,
        Some("http") => 80,
        _ => return Err(bad("is not an http or https URL")),
    };
    let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("must not hold credentials"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("must not have a path or query"));
    }
    let host = authority.host().to_ascii_lowercase();
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    Ok(PublicUrl {
        host,
        port: authority.port_u16().unwrap_or(default_port),
        default_port,
    })
}

/// Where the HTTP listener (dashboard, `/metrics`) listens, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpListen {
    /// `--http-listen off`: no HTTP listener.
    Off,
    /// Listen on this address (port 0 picks a free port).
    On(SocketAddr),
}

impl HttpListen {
    /// The address, unless the listener is off.
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            HttpListen::Off => None,
            HttpListen::On(addr) => Some(addr),
        }
    }
}

/// Parses `off` or a socket address such as `127.0.0.1:8080`.
pub fn parse_http_listen(raw: &str) -> Result<HttpListen, String> {
    let raw = raw.trim();
    if raw.eq_ignore_ascii_case("off") {
        return Ok(HttpListen::Off);
    }
    raw.parse()
        .map(HttpListen::On)
        .map_err(|_| format!("{raw:?} is not an address like 127.0.0.1:8080, nor `off`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_flags_default_through_the_shared_parser() {
        let s = Settings::for_database("sqlite://x.db");
        assert_eq!(s.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(s.policy_interval, Duration::from_secs(60));
        let s = Settings::parse_from(["modelreg-server", "--heartbeat-interval", "250ms"]);
        assert_eq!(s.heartbeat_interval, Duration::from_millis(250));
        assert!(Settings::try_parse_from(["modelreg-server", "--policy-interval", "0s"]).is_err());
    }

    #[test]
    fn public_urls_name_a_host_and_port() {
        let url = parse_public_url("https://Registry.Example.com").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("registry.example.com", 443));
        let url = parse_public_url("http://[::1]:8080/").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("[::1]", 8080));
        for bad in [
            "registry.example.com",
            "ftp://registry.example.com",
            "https://registry.example.com/dashboard",
            "https://registry.example.com/?x=1",
            "https://user:pw@registry.example.com",
            "https://",
        ] {
            assert!(parse_public_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn http_listen_is_an_address_or_off() {
        assert_eq!(parse_http_listen("off").unwrap(), HttpListen::Off);
        assert_eq!(
            parse_http_listen("127.0.0.1:9090").unwrap(),
            HttpListen::On("127.0.0.1:9090".parse().unwrap())
        );
        assert!(parse_http_listen("localhost").is_err());
        assert_eq!(
            Settings::for_database("sqlite://x.db").http_listen,
            HttpListen::Off
        );
    }
}
