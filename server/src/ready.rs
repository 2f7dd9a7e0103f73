//! The ready file (`--ready-file`): how a server started on port 0 tells
//! whoever started it which addresses it actually bound. It owns the file's
//! format and its atomic replacement; it does not bind or serve anything.
//!
//! The format is one `key=value` line per listener, e.g.
//!
//! ```text
//! grpc=127.0.0.1:41234
//! http=127.0.0.1:41235
//! ```
//!
//! `http=` is absent with `--http-listen off`. Readers ignore keys they do
//! not know, so lines may be added later.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The text of a ready file for these addresses.
pub fn render(grpc: SocketAddr, http: Option<SocketAddr>) -> String {
    let mut text = format!("grpc={grpc}\n");
    if let Some(http) = http {
        text.push_str(&format!("http={http}\n"));
    }
    text
}

/// Removes a ready file left by an earlier run, so nobody reads a dead
/// server's addresses while this one starts. A missing file is fine.
pub fn clear(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `text` to `path` atomically: to a temporary file in the same
/// folder, then renamed over `path`, so a reader polling for the file sees
/// nothing or all of it, never a half-written line.
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = temporary_name(path);
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// `path` with `.tmp.<pid>` appended: in the same folder (rename stays on one
/// file system) and unique to this process.
fn temporary_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp.{}", std::process::id()));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_listener() {
        let grpc = "127.0.0.1:41234".parse().unwrap();
        let http = "[::1]:8080".parse().unwrap();
        assert_eq!(render(grpc, None), "grpc=127.0.0.1:41234\n");
        assert_eq!(
            render(grpc, Some(http)),
            "grpc=127.0.0.1:41234\nhttp=[::1]:8080\n"
        );
    }

    #[test]
    fn a_written_file_replaces_the_old_one_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready");
        clear(&path).unwrap();
        std::fs::write(&path, "grpc=127.0.0.1:1\nhttp=127.0.0.1:2\n").unwrap();
        write(&path, "grpc=127.0.0.1:3\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "grpc=127.0.0.1:3\n"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind");
        clear(&path).unwrap();
        assert!(!path.exists());
    }
}
