//! The last config that applied, kept on local disk so that a restart
//! during a control-plane outage serves it.
//!
//! The file is a JSON envelope holding the body and its SHA-256; it is
//! written to a temporary file, fsynced, renamed over the old one and the
//! directory fsynced, so a power cut leaves either the old or the new file,
//! and a damaged one is detected rather than served.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use config_model::Format;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::source::Snapshot;

const ENVELOPE_VERSION: u32 = 1;

/// Why a persisted file was not usable.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is damaged ({reason}); ignoring it")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    envelope: u32,
    version: String,
    location: String,
    format: String,
    /// Unix seconds.
    saved_at: u64,
    sha256: String,
    body: String,
}

/// A config read back from disk.
#[derive(Clone, Debug)]
pub struct Persisted {
    pub snapshot: Snapshot,
    pub saved_at: u64,
}

/// Writes `snapshot` to `path` (mode 0600: configs carry private keys).
/// Blocking; run it off the runtime's threads.
pub fn save(path: &Path, snapshot: &Snapshot) -> Result<(), PersistError> {
    let failed = |source| PersistError::Write { path: path.to_owned(), source };
    let body = std::str::from_utf8(&snapshot.body)
        .map_err(|_| failed(std::io::Error::new(std::io::ErrorKind::InvalidData, "config is not UTF-8")))?;
    let envelope = Envelope {
        envelope: ENVELOPE_VERSION,
        version: snapshot.version.clone(),
        location: snapshot.location.clone(),
        format: format_name(snapshot.format).into(),
        saved_at: unix_now(),
        sha256: hex(&Sha256::digest(&snapshot.body)),
        body: body.to_owned(),
    };
    let bytes = serde_json::to_vec(&envelope).map_err(|e| failed(std::io::Error::other(e)))?;
    let directory = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(directory).map_err(failed)?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = directory.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        // The rename is durable only once the directory is.
        std::fs::File::open(directory)?.sync_all()
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&temp);
        failed(source)
    })
}

/// Reads `path`: `None` when there is no file, an error when it is damaged.
pub fn load(path: &Path) -> Result<Option<Persisted>, PersistError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PersistError::Read { path: path.to_owned(), source }),
    };
    let corrupt = |reason: String| PersistError::Corrupt { path: path.to_owned(), reason };
    let envelope: Envelope =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not a persisted config: {e}")))?;
    if envelope.envelope != ENVELOPE_VERSION {
        return Err(corrupt(format!("envelope version {} is not {ENVELOPE_VERSION}", envelope.envelope)));
    }
    if hex(&Sha256::digest(envelope.body.as_bytes())) != envelope.sha256 {
        return Err(corrupt("checksum mismatch".into()));
    }
    let format = match envelope.format.as_str() {
        "json" => Format::Json,
        "pipyconf" => Format::PipyConf,
        "yaml" => Format::Yaml,
        other => return Err(corrupt(format!("unknown format {other:?}"))),
    };
    Ok(Some(Persisted {
        snapshot: Snapshot {
            version: envelope.version,
            body: Bytes::from(envelope.body),
            format,
            location: envelope.location,
        },
        saved_at: envelope.saved_at,
    }))
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Json => "json",
        Format::PipyConf => "pipyconf",
        Format::Yaml => "yaml",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(body: &'static str) -> Snapshot {
        Snapshot {
            version: "v7".into(),
            body: Bytes::from_static(body.as_bytes()),
            format: Format::Yaml,
            location: "http://cp/c.yaml".into(),
        }
    }

    #[test]
    fn round_trip_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/last.json");
        assert!(load(&path).unwrap().is_none());
        save(&path, &snapshot("listeners: []\n")).unwrap();
        save(&path, &snapshot("clusters: []\n")).unwrap();
        let loaded = load(&path).unwrap().unwrap();
        assert_eq!(&loaded.snapshot.body[..], b"clusters: []\n");
        assert_eq!(loaded.snapshot.version, "v7");
        assert_eq!(loaded.snapshot.format, Format::Yaml);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.json");
        save(&path, &snapshot("listeners: []\n")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        // A flipped byte inside the body.
        std::fs::write(&path, text.replace("listeners", "listenerz")).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("checksum mismatch"));
        // Truncated, as after a crash on a file system without ordering.
        std::fs::write(&path, &text.as_bytes()[..text.len() / 2]).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("not a persisted config"));
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(load(&path), Err(PersistError::Corrupt { .. })));
    }
}
