//! From a request's path to a file or a codebase (a directory) inside the
//! served directory, and the version (ETag) of each.
//!
//! Everything here blocks on the filesystem; the server calls it from
//! `spawn_blocking`.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::headers::{etag, sha256};

/// The reserved top-level name of the status document.
pub(super) const STATUS: &str = "_status";

/// A file whose modification time is this close to the moment it was hashed
/// may change again without its time changing (timestamps are coarse:
/// jiffies on Linux, 2 s on FAT), so its hash is recomputed until it is
/// older. This is git's "racily clean" rule.
const RACY: Duration = Duration::from_secs(2);
/// Cached hashes; past this the cache starts again, which drops the
/// entries of files that are gone.
const CACHE_ENTRIES: usize = 4096;
/// Bounds the manifest walk (directory symlinks are not followed, so this is
/// only about absurd trees).
const MAX_DEPTH: usize = 64;

/// What a request path names, before looking at the filesystem.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// `/_status`.
    Status,
    Resource(RequestPath),
}

/// A decoded request path: its segments, and whether it ended with `/`
/// (which asks for a codebase manifest).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RequestPath {
    segments: Vec<String>,
    directory: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum PathError {
    /// `400`: the path cannot be read as a path.
    Malformed(&'static str),
    /// `404`: a name that is never served (hidden, `..`, reserved).
    NotFound,
}

/// Decodes and checks a request's path (without its query).
pub(super) fn route(raw: &str) -> Result<Route, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::Malformed("the path must start with /"));
    }
    let decoded = percent_decode(raw.as_bytes())?;
    if decoded.contains(&0) {
        return Err(PathError::Malformed("NUL in the path"));
    }
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::Malformed("the path is not UTF-8"))?;
    let directory = decoded.ends_with('/');
    let segments: Vec<String> = decoded.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect();
    // `.` and `..` start with a dot too, so this one rule refuses traversal
    // and hidden names alike.
    if !segments.iter().all(|s| visible(s)) {
        return Err(PathError::NotFound);
    }
    match segments.first() {
        Some(first) if first == STATUS => {
            if segments.len() == 1 && !directory {
                Ok(Route::Status)
            } else {
                Err(PathError::NotFound)
            }
        }
        _ => Ok(Route::Resource(RequestPath { segments, directory })),
    }
}

/// Whether a name may be served and listed: not hidden (editors' temp
/// files, `.git`), and free of control characters, which a one-path-a-line
/// manifest could not carry.
fn visible(name: &str) -> bool {
    !name.starts_with('.') && !name.chars().any(char::is_control)
}

fn percent_decode(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'%' {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let digit = |at: usize| raw.get(at).and_then(|b| char::from(*b).to_digit(16));
        match (digit(i + 1), digit(i + 2)) {
            (Some(high), Some(low)) => out.push((high * 16 + low) as u8),
            _ => return Err(PathError::Malformed("bad percent-encoding in the path")),
        }
        i += 3;
    }
    Ok(out)
}

/// What a path names in the served directory, with its current ETag.
#[derive(Debug, Clone)]
pub(super) enum Found {
    File { path: PathBuf, etag: String, len: u64, content_type: &'static str },
    Codebase { etag: String, manifest: Bytes },
}

impl Found {
    pub(super) fn etag(&self) -> &str {
        match self {
            Found::File { etag, .. } | Found::Codebase { etag, .. } => etag,
        }
    }
}

/// The served directory and a cache of its files' hashes.
pub(super) struct Files {
    /// Canonical, so that "inside" is a prefix test on canonical paths.
    root: PathBuf,
    hashes: Mutex<HashMap<PathBuf, Hashed>>,
}

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    /// Inode and ctime: a file replaced by a rename, or rewritten and
    /// given its old mtime back (`touch -r`, `cp -p`), still differs.
    #[cfg(unix)]
    inode: (u64, u64),
    #[cfg(unix)]
    changed: (i64, i64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Stamp {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            inode: (meta.dev(), meta.ino()),
            #[cfg(unix)]
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

struct Hashed {
    stamp: Stamp,
    digest: [u8; 32],
    /// False while the file is racily new (see [`RACY`]).
    trusted: bool,
}

impl Files {
    /// `root` must be canonical.
    pub(super) fn new(root: PathBuf) -> Files {
        Files { root, hashes: Mutex::new(HashMap::new()) }
    }

    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    fn hashes(&self) -> MutexGuard<'_, HashMap<PathBuf, Hashed>> {
        // A cache: whatever a panicking holder left is still valid entries.
        self.hashes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The file or codebase `request` names, `None` if there is none that
    /// may be served. Errors are I/O failures on something that exists.
    pub(super) fn look_up(&self, request: &RequestPath) -> io::Result<Option<Found>> {
        let mut joined = self.root.clone();
        joined.extend(&request.segments);
        let Some((canonical, meta)) = self.inside(&joined) else { return Ok(None) };
        if request.directory {
            return if meta.is_dir() { self.codebase(&canonical).map(Some) } else { Ok(None) };
        }
        if !meta.is_file() {
            return Ok(None);
        }
        let digest = match self.digest(&canonical, &meta) {
            Ok(digest) => digest,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        // The type follows the name asked for, which for a symlink is the
        // name the client knows.
        let name = request.segments.last().map(String::as_str).unwrap_or_default();
        Ok(Some(Found::File {
            path: canonical,
            etag: etag(&digest),
            len: meta.len(),
            content_type: content_type(name),
        }))
    }

    /// The canonical form of `path` and its metadata, if it is inside the
    /// served directory. Symlinks are followed, and one that leads out is
    /// as good as missing.
    ///
    /// Between this check and the open a writer of the directory could swap
    /// a checked directory for a symlink; the directory's writers are
    /// trusted (they write the configs being served).
    fn inside(&self, path: &Path) -> Option<(PathBuf, Metadata)> {
        let canonical = fs::canonicalize(path).ok()?;
        if !canonical.starts_with(&self.root) {
            return None;
        }
        let meta = fs::metadata(&canonical).ok()?;
        Some((canonical, meta))
    }

    /// The bytes of a file [`Files::look_up`] found, with their own ETag
    /// (the file may have changed since).
    pub(super) fn read(&self, path: &Path) -> io::Result<(Bytes, String)> {
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no longer a regular file"));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0).min(1 << 24));
        file.read_to_end(&mut bytes)?;
        let digest = sha256(&bytes);
        self.remember(path, Stamp::of(&meta), digest);
        Ok((Bytes::from(bytes), etag(&digest)))
    }

    /// A file's SHA-256, from the cache while its stamp is unchanged.
    fn digest(&self, path: &Path, meta: &Metadata) -> io::Result<[u8; 32]> {
        let stamp = Stamp::of(meta);
        if let Some(hashed) = self.hashes().get(path) {
            if hashed.trusted && hashed.stamp == stamp {
                return Ok(hashed.digest);
            }
        }
        let mut file = File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0; 64 * 1024];
        loop {
            match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buffer[..n]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        let digest = hasher.finalize().into();
        self.remember(path, stamp, digest);
        Ok(digest)
    }

    fn remember(&self, path: &Path, stamp: Stamp, digest: [u8; 32]) {
        let age = stamp.modified.and_then(|modified| SystemTime::now().duration_since(modified).ok());
        let trusted = age.is_some_and(|age| age >= RACY);
        let mut hashes = self.hashes();
        if hashes.len() >= CACHE_ENTRIES && !hashes.contains_key(path) {
            hashes.clear();
        }
        hashes.insert(path.to_owned(), Hashed { stamp, digest, trusted });
    }

    /// The manifest of the codebase `dir` (canonical, inside the root) and
    /// its ETag, a hash over every (path, file hash) listed, so a change to
    /// any file changes it.
    fn codebase(&self, dir: &Path) -> io::Result<Found> {
        let mut entries = Vec::new();
        self.walk(dir, "", dir == self.root, 0, &mut entries)?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut manifest = String::new();
        let mut version = Sha256::new();
        for (relative, path, meta) in entries {
            // A file that vanished or cannot be read since the walk is left
            // out: every path listed should be one a client can fetch.
            let digest = match self.digest(&path, &meta) {
                Ok(digest) => digest,
                Err(error) => {
                    tracing::debug!(path = %path.display(), %error, "left out of the manifest");
                    continue;
                }
            };
            manifest.push_str(&relative);
            manifest.push('\n');
            // Paths hold no NUL and digests have a fixed length, so this
            // encoding of the list is unambiguous.
            version.update(relative.as_bytes());
            version.update([0]);
            version.update(digest);
        }
        Ok(Found::Codebase { etag: etag(&version.finalize().into()), manifest: Bytes::from(manifest) })
    }

    /// Collects the regular files under `dir` as (`/relative/path`, path to
    /// hash, metadata). Symlinks to files inside the root are listed;
    /// symlinks to directories are not followed (no cycles to detect).
    fn walk(
        &self,
        dir: &Path,
        prefix: &str,
        top: bool,
        depth: usize,
        out: &mut Vec<(String, PathBuf, Metadata)>,
    ) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !visible(name) || (top && name == STATUS) {
                continue;
            }
            let Ok(kind) = entry.file_type() else { continue };
            let relative = format!("{prefix}/{name}");
            if kind.is_dir() {
                if depth < MAX_DEPTH {
                    if let Err(error) = self.walk(&entry.path(), &relative, false, depth + 1, out) {
                        tracing::debug!(path = %entry.path().display(), %error, "left out of the manifest");
                    }
                }
            } else if kind.is_file() {
                if let Ok(meta) = entry.metadata() {
                    out.push((relative, entry.path(), meta));
                }
            } else if kind.is_symlink() {
                if let Some((target, meta)) = self.inside(&entry.path()) {
                    if meta.is_file() {
                        out.push((relative, target, meta));
                    }
                }
            }
        }
        Ok(())
    }
}

/// By extension; configs are JSON or YAML, and anything else (scripts,
/// PEM) is served as text.
fn content_type(name: &str) -> &'static str {
    let extension = Path::new(name).extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("json") => "application/json",
        Some("yaml" | "yml") => "application/yaml",
        _ => "text/plain; charset=utf-8",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(segments: &[&str], directory: bool) -> Result<Route, PathError> {
        Ok(Route::Resource(RequestPath { segments: segments.iter().map(|s| s.to_string()).collect(), directory }))
    }

    #[test]
    fn paths_are_decoded_and_checked() {
        assert_eq!(route("/"), resource(&[], true));
        assert_eq!(route("/a/b.json"), resource(&["a", "b.json"], false));
        assert_eq!(route("//a//b/"), resource(&["a", "b"], true));
        assert_eq!(route("/a%20b/c%2Fd"), resource(&["a b", "c", "d"], false));
        assert_eq!(route("/_status"), Ok(Route::Status));
        assert_eq!(route("/%5Fstatus"), Ok(Route::Status));
        assert_eq!(route("/_status/"), Err(PathError::NotFound));
        assert_eq!(route("/_status/x"), Err(PathError::NotFound));
        assert_eq!(route("/x/_status"), resource(&["x", "_status"], false));
        for refused in ["/../etc/passwd", "/a/%2e%2e/b", "/%2E%2E%2Fetc", "/.git/config", "/a/.b.swp", "/./a", "/a%0ab"]
        {
            assert_eq!(route(refused), Err(PathError::NotFound), "{refused}");
        }
        for malformed in ["a", "*", "/a%00b", "/a%zz", "/a%2", "/%ff%fe"] {
            assert!(matches!(route(malformed), Err(PathError::Malformed(_))), "{malformed}");
        }
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("config.json"), "application/json");
        assert_eq!(content_type("a.YAML"), "application/yaml");
        assert_eq!(content_type("a.yml"), "application/yaml");
        assert_eq!(content_type("main.js"), "text/plain; charset=utf-8");
        assert_eq!(content_type("README"), "text/plain; charset=utf-8");
    }
}
