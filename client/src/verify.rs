//! Content digests and the workers' content-addressed cache.
//!
//! A digest is `sha256:<64 lowercase hex>`, as the registry stores it for
//! artifacts and evaluation sets. A regular file's digest is the SHA-256 of
//! its bytes. A directory's digest is the SHA-256 of its **manifest**: one
//! line `<hex SHA-256 of the file>  <path>\n` per regular file below it,
//! `<path>` relative with `/` separators, lines sorted by the path's bytes;
//! empty directories add nothing, and a symbolic link or any other special
//! file is refused. It is what this prints, run in the directory:
//!
//! ```sh
//! find . -type f | sed 's|^\./||' | LC_ALL=C sort | xargs -d '\n' sha256sum | sha256sum
//! ```
//!
//! The cache keeps verified content under `ROOT/sha256/<hex>` (files made
//! read-only) with a record beside it, `<hex>.json`, of the entry's *stamp*
//! (size and modification time of every file in it) and, for a local
//! source, the source's stamp. An entry is used again only while both stamps
//! are unchanged; anything else, and every mismatch, removes it, so
//! tampered content is never trusted.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest as _, Sha256};

/// A SHA-256 content digest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(text: &str) -> Result<Sha256Digest, String> {
        let hex = text
            .strip_prefix("sha256:")
            .filter(|h| {
                h.len() == 64
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
            .ok_or_else(|| format!("{text:?} is not a digest (sha256:<64 lowercase hex>)"))?;
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex");
        }
        Ok(Sha256Digest(out))
    }

    /// The 64 hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl std::fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The digest of the file or directory at `path` (see the module's
/// documentation for directories).
pub fn digest_of(path: &Path) -> io::Result<Sha256Digest> {
    if fs::symlink_metadata(path)?.is_dir() {
        let mut manifest = Vec::new();
        for (relative, file) in files_below(path)? {
            manifest.extend_from_slice(format!("{}  ", file_digest(&file)?.hex()).as_bytes());
            manifest.extend_from_slice(relative.as_bytes());
            manifest.push(b'\n');
        }
        Ok(Sha256Digest(Sha256::digest(&manifest).into()))
    } else {
        file_digest(path)
    }
}

fn file_digest(path: &Path) -> io::Result<Sha256Digest> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(Sha256Digest(hasher.finalize().into()));
        }
        hasher.update(&buf[..n]);
    }
}

/// Every regular file below `dir`, as (relative path with `/`, full path),
/// sorted by the relative path's bytes; a symbolic link or special file is
/// an error.
fn files_below(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut pending = vec![(String::new(), dir.to_path_buf())];
    while let Some((prefix, at)) = pending.pop() {
        for entry in fs::read_dir(&at)? {
            let entry = entry?;
            let name = entry.file_name().into_string().map_err(|n| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{n:?} is not UTF-8"))
            })?;
            let relative = format!("{prefix}{name}");
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push((format!("{relative}/"), entry.path()));
            } else if kind.is_file() {
                out.push((relative, entry.path()));
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is neither a file nor a directory",
                        entry.path().display()
                    ),
                ));
            }
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

/// Size and modification time of the file, or of every file below the
/// directory, at `path`: cheap to take, and changed by any ordinary write.
pub fn stamp_of(path: &Path) -> io::Result<String> {
    let one = |m: &fs::Metadata| {
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        format!(
            "{} {}.{:09}",
            m.len(),
            mtime.as_secs(),
            mtime.subsec_nanos()
        )
    };
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(one(&meta));
    }
    let mut listing = String::new();
    for (relative, file) in files_below(path)? {
        listing.push_str(&format!("{relative} {}\n", one(&fs::metadata(file)?)));
    }
    Ok(format!(
        "dir {}",
        Sha256Digest(Sha256::digest(listing.as_bytes()).into()).hex()
    ))
}

/// The content-addressed cache of verified inputs.
#[derive(Clone, Debug)]
pub struct Cache {
    /// `ROOT`: entries live under `ROOT/sha256/`, downloads in progress under
    /// `ROOT/tmp/`.
    root: PathBuf,
}

/// What the cache remembers about one entry.
#[derive(PartialEq, Eq)]
struct Record {
    /// The entry's own stamp when it was verified.
    entry: String,
    /// The local source's stamp then (`None` for remote sources).
    source: Option<String>,
}

impl Cache {
    /// A cache rooted at `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    fn entry(&self, digest: &Sha256Digest) -> PathBuf {
        self.root.join("sha256").join(digest.hex())
    }

    fn record_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.root
            .join("sha256")
            .join(format!("{}.json", digest.hex()))
    }

    /// A fresh, empty directory to build content in before [`Cache::admit`].
    pub fn staging_dir(&self) -> io::Result<tempfile::TempDir> {
        let tmp = self.root.join("tmp");
        fs::create_dir_all(&tmp)?;
        tempfile::tempdir_in(tmp)
    }

    /// The cached content for `digest`, if it is there and unchanged since it
    /// was verified, and (for a local source) `source_stamp` is the stamp its
    /// source had then. A changed entry is removed.
    pub fn lookup(&self, digest: &Sha256Digest, source_stamp: Option<&str>) -> Option<PathBuf> {
        let path = self.entry(digest);
        let record = self.read_record(digest)?;
        let entry_now = stamp_of(&path).ok();
        if entry_now.as_deref() != Some(record.entry.as_str()) {
            // Edited, truncated or half-removed behind our back: never trusted again.
            self.evict(digest);
            return None;
        }
        (record.source.as_deref() == source_stamp).then_some(path)
    }

    /// Checks the content at `staged` against `expected`; on a match moves
    /// it into the cache (read-only) and returns its path there. On a
    /// mismatch the staged content and any entry for `expected` are removed
    /// and the error carries the actual digest.
    pub fn admit(
        &self,
        staged: &Path,
        expected: &Sha256Digest,
        source_stamp: Option<String>,
    ) -> Result<PathBuf, Admit> {
        let actual = digest_of(staged).map_err(|e| Admit::Unreadable(e.to_string()))?;
        if actual != *expected {
            self.evict(expected);
            remove(staged);
            return Err(Admit::Mismatch(actual));
        }
        let io = |e: io::Error| Admit::Unreadable(e.to_string());
        read_only(staged).map_err(io)?;
        let path = self.entry(expected);
        fs::create_dir_all(path.parent().expect("under the root")).map_err(io)?;
        // A file replaces an earlier entry atomically, so another worker
        // sharing the cache never sees the path missing; a directory cannot
        // replace a directory, so an earlier one goes first.
        if fs::rename(staged, &path).is_err() {
            self.evict(expected);
            fs::rename(staged, &path).map_err(io)?;
        }
        let record = Record {
            entry: stamp_of(&path).map_err(io)?,
            source: source_stamp,
        };
        self.write_record(expected, &record).map_err(io)?;
        Ok(path)
    }

    /// Forgets the entry for `digest`.
    pub fn evict(&self, digest: &Sha256Digest) {
        let _ = fs::remove_file(self.record_path(digest));
        remove(&self.entry(digest));
    }

    fn read_record(&self, digest: &Sha256Digest) -> Option<Record> {
        let text = fs::read_to_string(self.record_path(digest)).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(Record {
            entry: json["entry"].as_str()?.to_owned(),
            source: json["source"].as_str().map(str::to_owned),
        })
    }

    fn write_record(&self, digest: &Sha256Digest, record: &Record) -> io::Result<()> {
        let json = serde_json::json!({ "entry": record.entry, "source": record.source });
        let path = self.record_path(digest);
        // A temporary file of its own: workers sharing the cache may write
        // the same record at once.
        let mut tmp = tempfile::NamedTempFile::new_in(path.parent().expect("under the root"))?;
        io::Write::write_all(&mut tmp, json.to_string().as_bytes())?;
        tmp.persist(path).map(drop).map_err(|e| e.error)
    }
}

/// Why content was not admitted to the cache.
#[derive(Debug)]
pub enum Admit {
    /// Its digest is this, not the expected one.
    Mismatch(Sha256Digest),
    /// It could not be read or moved.
    Unreadable(String),
}

/// Makes every file at or below `path` read-only, so a command cannot
/// change verified content by accident.
fn read_only(path: &Path) -> io::Result<()> {
    let files = if fs::symlink_metadata(path)?.is_dir() {
        files_below(path)?.into_iter().map(|(_, p)| p).collect()
    } else {
        vec![path.to_path_buf()]
    };
    for file in files {
        let mut perms = fs::metadata(&file)?.permissions();
        perms.set_readonly(true);
        fs::set_permissions(&file, perms)?;
    }
    Ok(())
}

/// Removes a file or a directory tree, if there.
fn remove(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = fs::remove_file(path);
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_and_print_back() {
        let text = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
        assert_eq!(Sha256Digest::parse(text).unwrap().to_string(), text);
        assert!(Sha256Digest::parse("sha256:2C26").is_err());
        assert!(Sha256Digest::parse(&text.to_uppercase()).is_err());
        assert!(Sha256Digest::parse("md5:00").is_err());
    }

    #[test]
    fn a_file_hashes_to_the_sha256_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("foo");
        fs::write(&file, "foo").unwrap();
        assert_eq!(
            digest_of(&file).unwrap().hex(),
            "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
        );
    }

    #[test]
    fn a_directory_hashes_to_its_documented_manifest() {
        // Arrange: files in nested folders, written out of order, and an empty folder.
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("b/c")).unwrap();
        fs::create_dir_all(dir.path().join("empty")).unwrap();
        fs::write(dir.path().join("b/c/x.bin"), "test").unwrap();
        fs::write(dir.path().join("a.txt"), "foo").unwrap();

        // Act
        let digest = digest_of(dir.path()).unwrap();

        // Assert: the SHA-256 of exactly the manifest the module documents.
        let manifest = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae  a.txt\n\
                        9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  b/c/x.bin\n";
        assert_eq!(digest, Sha256Digest(Sha256::digest(manifest).into()));
        // The documented shell command agrees.
        let shell = std::process::Command::new("sh")
            .arg("-c")
            .arg(r"find . -type f | sed 's|^\./||' | LC_ALL=C sort | xargs -d '\n' sha256sum | sha256sum")
            .current_dir(dir.path())
            .output()
            .unwrap();
        let printed = String::from_utf8(shell.stdout).unwrap();
        assert_eq!(
            printed.split_whitespace().next(),
            Some(digest.hex().as_str())
        );
    }

    /// The digest of "foo".
    fn foo_digest() -> Sha256Digest {
        Sha256Digest::parse(
            "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
        )
        .unwrap()
    }

    /// A cache in a temporary root, and `content` staged in it (the
    /// temporary directories live as long as the caller keeps them).
    fn staged(content: &str) -> (tempfile::TempDir, Cache, tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::new(root.path());
        let staging = cache.staging_dir().unwrap();
        let staged = staging.path().join("content");
        fs::write(&staged, content).unwrap();
        (root, cache, staging, staged)
    }

    #[test]
    fn a_changed_entry_is_evicted_not_trusted() {
        // Arrange: "foo" admitted under its digest.
        let (_root, cache, _staging, staged) = staged("foo");
        let digest = foo_digest();
        let path = cache.admit(&staged, &digest, None).unwrap();
        assert_eq!(cache.lookup(&digest, None), Some(path.clone()));
        assert_eq!(cache.lookup(&digest, Some("other source")), None);

        // Act: the cached copy is rewritten behind the cache's back.
        let mut perms = fs::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        fs::set_permissions(&path, perms).unwrap();
        fs::write(&path, "fooo").unwrap();

        // Assert
        assert_eq!(cache.lookup(&digest, None), None);
        assert!(!path.exists(), "the changed entry is gone");
    }

    #[test]
    fn workers_sharing_a_cache_admit_the_same_content_at_once() {
        // Two workers (here threads, each with its own Cache on one root)
        // admit the same content again and again at the same time: every
        // admission succeeds and leaves a readable entry.
        let root = tempfile::tempdir().unwrap();
        let digest = foo_digest();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (cache, digest) = (Cache::new(root.path()), digest);
                std::thread::spawn(move || {
                    for _ in 0..300 {
                        let staging = cache.staging_dir().unwrap();
                        let staged = staging.path().join("content");
                        fs::write(&staged, "foo").unwrap();
                        let path = cache.admit(&staged, &digest, None).unwrap();
                        assert_eq!(fs::read_to_string(path).unwrap(), "foo");
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("every admission succeeds");
        }
    }

    #[test]
    fn wrong_content_is_refused_with_its_digest() {
        let (_root, cache, _staging, staged) = staged("bar");
        let expected = foo_digest();
        match cache.admit(&staged, &expected, None) {
            Err(Admit::Mismatch(actual)) => assert_eq!(
                actual.hex(),
                "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9"
            ),
            other => panic!("{other:?}"),
        }
        assert!(!staged.exists());
        assert_eq!(cache.lookup(&expected, None), None);
    }
}
