//! Logging: the tracing subscriber the binary installs (text or JSON, by
//! `MODELREG_LOG`), and what must never reach a log line in clear.

/// A database URL without its password, for logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Installs the tracing subscriber for the binary.
pub fn init_logging(format: crate::settings::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MODELREG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        crate::settings::LogFormat::Text => builder.init(),
        crate::settings::LogFormat::Json => builder.json().init(),
    }
}
