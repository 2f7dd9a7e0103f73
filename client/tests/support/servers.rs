//! Starting the real binaries from the client crate's end-to-end tests:
//! where they are, and a server's ready file. Each test crate that includes
//! this uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Child;

/// A binary built next to the `modelreg` CLI (`modelreg-server`, `modelreg`).
pub fn bin(name: &str) -> PathBuf {
    let cli = PathBuf::from(env!("CARGO_BIN_EXE_modelreg"));
    let path = cli.with_file_name(name);
    assert!(
        path.is_file(),
        "{} not found: build it first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// The addresses a `modelreg-server` reported in its `--ready-file`.
pub struct Bound {
    /// `grpc=` line: where gRPC is served.
    pub grpc: String,
    /// `http=` line: where the HTTP listener is, absent when it is off.
    pub http: Option<String>,
}

/// Reads the ready file's `grpc=ADDR` and `http=ADDR` lines; `None` until
/// a `grpc=` line is there.
fn parse_ready(text: &str) -> Option<Bound> {
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    Some(Bound {
        grpc: value("grpc")?,
        http: value("http"),
    })
}

/// Waits until the server `child` has written its ready file at `ready`;
/// panics with its log if it exits first. The bound only stops a broken run.
pub async fn wait_ready(child: &mut Child, ready: &Path, log: &Path) -> Bound {
    for _ in 0..1200 {
        if let Some(bound) = std::fs::read_to_string(ready)
            .ok()
            .and_then(|t| parse_ready(&t))
        {
            return bound;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "modelreg-server exited ({status}) before writing {}:\n{}",
                ready.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "modelreg-server wrote no {} within a minute:\n{}",
        ready.display(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}
