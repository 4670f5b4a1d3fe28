//! What is fetched: one config file, or a Pipy-repo codebase whose manifest
//! names the config file.

use std::time::Duration;

use bytes::Bytes;
use config_model::Format;
use http::{Method, StatusCode, Uri};
use sha2::{Digest, Sha256};

use crate::transport::{FetchError, Fetched, Transport};

/// Names looked for in a manifest when `file` is not set, in this order.
/// `config.json.gz` first: FSM publishes the sidecar config compressed, and
/// a repo listing it serves it instead of `config.json`.
const DEFAULT_FILES: [&str; 7] =
    ["config.json.gz", "edgeplane.yaml", "edgeplane.yml", "edgeplane.json", "config.yaml", "config.yml", "config.json"];

/// The most a `.gz` file may decompress to (the compressed body is capped by
/// `max_body_bytes`; this caps the ratio).
const MAX_GUNZIPPED_BYTES: u64 = 64 << 20;

/// A config as the control plane serves it.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The ETag of the file or the codebase; the content hash when the
    /// server sends none.
    pub version: String,
    pub body: Bytes,
    pub format: Format,
    /// Where the body came from (the file's URL).
    pub location: String,
}

/// The answer to "did it change?".
#[derive(Debug)]
pub enum Poll {
    /// Still `version`: one small request, nothing parsed.
    Unchanged {
        waited: bool,
    },
    Changed(Snapshot),
}

enum Layout {
    File(Uri),
    /// `manifest` ends in `/`; files are fetched relative to it.
    Repo {
        manifest: Uri,
        file: Option<String>,
    },
}

pub struct Source {
    layout: Layout,
}

impl Source {
    pub fn new(url: &str, file: Option<String>) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
        let layout = if uri.path().ends_with('/') { Layout::Repo { manifest: uri, file } } else { Layout::File(uri) };
        Ok(Source { layout })
    }

    /// Asks whether the config changed from any of `known` (the live version,
    /// and one that was rejected, so a broken config is not fetched and
    /// rejected again on every poll) and fetches it if so.
    pub async fn poll(
        &self,
        transport: &Transport,
        known: &[&str],
        wait: Option<Duration>,
    ) -> Result<Poll, FetchError> {
        match &self.layout {
            Layout::File(uri) => {
                let fetched = transport.fetch(Method::GET, uri, &quoted(known), wait).await?;
                if fetched.status == StatusCode::NOT_MODIFIED {
                    return Ok(Poll::Unchanged { waited: fetched.waited });
                }
                let version = version_of(&fetched);
                // A server that ignores If-None-Match costs the transfer but
                // still no parse.
                if known.contains(&version.as_str()) {
                    return Ok(Poll::Unchanged { waited: fetched.waited });
                }
                let format = format_of(&fetched, uri.path());
                Ok(Poll::Changed(Snapshot { version, body: fetched.body, format, location: uri.to_string() }))
            }
            Layout::Repo { manifest, file } => {
                // A Pipy repo is polled with HEAD, as Pipy sidecars do; a long
                // poll needs a GET.
                let method = if wait.is_some() { Method::GET } else { Method::HEAD };
                let head = transport.fetch(method.clone(), manifest, &quoted(known), wait).await?;
                if head.status == StatusCode::NOT_MODIFIED {
                    return Ok(Poll::Unchanged { waited: head.waited });
                }
                if let Some(etag) = head.etag.as_deref().map(unquote) {
                    if known.contains(&etag) {
                        return Ok(Poll::Unchanged { waited: head.waited });
                    }
                }
                let listing = if method == Method::GET {
                    head
                } else {
                    transport.fetch(Method::GET, manifest, &[], None).await?
                };
                let version = version_of(&listing);
                if known.contains(&version.as_str()) {
                    return Ok(Poll::Unchanged { waited: listing.waited });
                }
                let entry = pick_entry(&listing.body, file.as_deref())?;
                let file_uri = join(manifest, &entry)?;
                let mut fetched = transport.fetch(Method::GET, &file_uri, &[], None).await?;
                let mut name = entry.as_str();
                if let Some(stem) = strip_suffix_ignore_case(&entry, ".gz") {
                    fetched.body = gunzip(&fetched.body, MAX_GUNZIPPED_BYTES)
                        .map_err(|error| FetchError::Decode(format!("{file_uri}: {error}")))?;
                    // What the server says about the type is about the gzip.
                    fetched.content_type = None;
                    name = stem;
                }
                let format = format_of(&fetched, name);
                Ok(Poll::Changed(Snapshot { version, body: fetched.body, format, location: file_uri.to_string() }))
            }
        }
    }
}

fn quoted(known: &[&str]) -> Vec<String> {
    known.iter().filter(|v| !v.is_empty()).map(|v| format!("\"{v}\"")).collect()
}

/// `"abc"` and `W/"abc"` → `abc`.
fn unquote(etag: &str) -> &str {
    let etag = etag.trim();
    let etag = etag.strip_prefix("W/").unwrap_or(etag);
    etag.strip_prefix('"').and_then(|e| e.strip_suffix('"')).unwrap_or(etag)
}

/// The ETag, or a hash of the body when there is none.
fn version_of(fetched: &Fetched) -> String {
    match fetched.etag.as_deref().map(unquote) {
        Some(etag) if !etag.is_empty() => etag.to_owned(),
        _ => content_version(&fetched.body),
    }
}

/// The version of a body without an ETag: `sha256:` and 16 hex digits.
pub fn content_version(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let mut text = String::with_capacity(23);
    text.push_str("sha256:");
    for byte in &digest[..8] {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

fn strip_suffix_ignore_case<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    let split = name.len().checked_sub(suffix.len())?;
    (name.is_char_boundary(split) && name[split..].eq_ignore_ascii_case(suffix)).then(|| &name[..split])
}

/// The gunzipped `body` (all members), at most `max` bytes.
fn gunzip(body: &[u8], max: u64) -> Result<Bytes, String> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(body)
        .take(max + 1)
        .read_to_end(&mut out)
        .map_err(|error| format!("not valid gzip: {error}"))?;
    if out.len() as u64 > max {
        return Err(format!("it decompresses to more than {max} bytes"));
    }
    Ok(Bytes::from(out))
}

/// JSON if the server says so or the name ends in `.json`, YAML if it
/// says YAML; otherwise JSON when the body starts with `{`. JSON that is
/// an osm-edge/FSM sidecar config is [`Format::PipyConf`].
fn format_of(fetched: &Fetched, path: &str) -> Format {
    let format = format_by_type_or_name(fetched, path);
    if format == Format::Json {
        // A body that is not UTF-8 fails later, at parse, as before.
        if let Ok(text) = std::str::from_utf8(&fetched.body) {
            return format.sniff(text);
        }
    }
    format
}

fn format_by_type_or_name(fetched: &Fetched, path: &str) -> Format {
    let content_type = fetched.content_type.as_deref().unwrap_or_default().to_ascii_lowercase();
    if content_type.contains("json") {
        return Format::Json;
    }
    if content_type.contains("yaml") {
        return Format::Yaml;
    }
    if path.to_ascii_lowercase().ends_with(".json") {
        return Format::Json;
    }
    match fetched.body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Format::Json,
        _ => Format::Yaml,
    }
}

/// The manifest entry holding the config.
fn pick_entry(manifest: &[u8], wanted: Option<&str>) -> Result<String, FetchError> {
    let text = std::str::from_utf8(manifest).map_err(|_| FetchError::Manifest("not UTF-8".into()))?;
    let entries: Vec<&str> = text.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    let name_of = |entry: &&str| entry.trim_start_matches('/').to_owned();
    let found = match wanted {
        Some(wanted) => {
            let wanted = wanted.trim_start_matches('/');
            entries.iter().find(|entry| entry.trim_start_matches('/') == wanted).map(name_of)
        }
        None => DEFAULT_FILES
            .iter()
            .find_map(|name| entries.iter().find(|entry| entry.trim_start_matches('/') == *name).map(name_of)),
    };
    let entry = found.ok_or_else(|| match wanted {
        Some(wanted) => FetchError::Manifest(format!("it does not list {wanted:?} ({} entries)", entries.len())),
        None => FetchError::Manifest(format!(
            "it lists none of {} ({} entries); set control_plane.file",
            DEFAULT_FILES.join(", "),
            entries.len()
        )),
    })?;
    if entry.split('/').any(|part| part == ".." || part == ".") || entry.contains(['?', '#', '\\']) {
        return Err(FetchError::Manifest(format!("refusing entry {entry:?}")));
    }
    Ok(entry)
}

fn join(manifest: &Uri, entry: &str) -> Result<Uri, FetchError> {
    let base = manifest.to_string();
    let base = base.split_once('?').map_or(base.as_str(), |(path, _)| path);
    format!("{base}{entry}").parse().map_err(|e| FetchError::Manifest(format!("entry {entry:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(etag: Option<&str>, content_type: Option<&str>, body: &'static str) -> Fetched {
        Fetched {
            status: StatusCode::OK,
            etag: etag.map(str::to_owned),
            content_type: content_type.map(str::to_owned),
            waited: false,
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn versions_come_from_etags_or_content() {
        assert_eq!(version_of(&fetched(Some("\"abc\""), None, "x")), "abc");
        assert_eq!(version_of(&fetched(Some("W/\"abc\""), None, "x")), "abc");
        assert_eq!(version_of(&fetched(Some("1000"), None, "x")), "1000");
        let hashed = version_of(&fetched(None, None, "x"));
        assert!(hashed.starts_with("sha256:") && hashed.len() == 23, "{hashed}");
        assert_ne!(hashed, version_of(&fetched(None, None, "y")));
    }

    #[test]
    fn formats_by_type_name_then_content() {
        assert_eq!(format_of(&fetched(None, Some("application/json"), "a: 1"), "/c"), Format::Json);
        assert_eq!(format_of(&fetched(None, Some("application/yaml"), "{}"), "/c.json"), Format::Yaml);
        assert_eq!(format_of(&fetched(None, Some("text/plain"), "a: 1"), "/c.json"), Format::Json);
        assert_eq!(format_of(&fetched(None, None, "  {\"a\":1}"), "/c"), Format::Json);
        assert_eq!(format_of(&fetched(None, None, "a: 1"), "/c"), Format::Yaml);
    }

    #[test]
    fn manifests_name_the_config() {
        let manifest = b"/main.js\n/config.json\n/edgeplane.yaml\n";
        assert_eq!(pick_entry(manifest, None).unwrap(), "edgeplane.yaml");
        assert_eq!(pick_entry(manifest, Some("config.json")).unwrap(), "config.json");
        assert_eq!(pick_entry(b"/main.js\n/config.json\n", None).unwrap(), "config.json");
        assert!(pick_entry(b"/main.js\n", None).unwrap_err().to_string().contains("set control_plane.file"));
        assert!(pick_entry(b"/../x.yaml\n", Some("../x.yaml")).is_err());
        assert!(pick_entry(&[0xff, 0xfe], None).is_err());
        let fsm = b"/main.js\n/config.json\n/config.json.gz\n/edgeplane.yaml\n";
        assert_eq!(pick_entry(fsm, None).unwrap(), "config.json.gz");
        assert_eq!(pick_entry(fsm, Some("config.json")).unwrap(), "config.json");
        let uri: Uri = "http://repo:6060/repo/sidecar/".parse().unwrap();
        assert_eq!(
            join(&uri, "sub/edgeplane.yaml").unwrap().to_string(),
            "http://repo:6060/repo/sidecar/sub/edgeplane.yaml"
        );
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gz_files_are_gunzipped_within_a_cap() {
        let text = b"{\"listeners\": []}";
        assert_eq!(gunzip(&gzip(text), 1024).unwrap().as_ref(), text);
        let big = vec![b' '; 4096];
        assert!(gunzip(&gzip(&big), 4096).is_ok());
        assert!(gunzip(&gzip(&big), 4095).unwrap_err().contains("more than 4095 bytes"));
        // Not gzip, and gzip cut short: errors, never a panic.
        assert!(gunzip(b"{\"listeners\": []}", 1024).unwrap_err().contains("not valid gzip"));
        let zipped = gzip(text);
        assert!(gunzip(&zipped[..zipped.len() / 2], 1024).is_err());
        let error = FetchError::Decode(format!("http://repo/config.json.gz: {}", gunzip(b"junk", 1024).unwrap_err()));
        assert_eq!(error.kind(), "decode_error");
        assert!(
            error.to_string().starts_with("cannot decompress http://repo/config.json.gz: not valid gzip"),
            "{error}"
        );
        assert_eq!(strip_suffix_ignore_case("config.json.GZ", ".gz"), Some("config.json"));
        assert_eq!(strip_suffix_ignore_case("gz", ".gz"), None);
    }

    #[test]
    fn json_that_is_a_pipyconf_is_marked_so() {
        let pipy = r#"{"Ts": "2024-01-01T00:00:00Z", "Version": "1", "Spec": {}}"#;
        assert_eq!(format_of(&fetched(None, None, pipy), "config.json"), Format::PipyConf);
        assert_eq!(format_of(&fetched(None, Some("application/json"), pipy), "/c"), Format::PipyConf);
        assert_eq!(format_of(&fetched(None, None, "{\"listeners\": []}"), "config.json"), Format::Json);
        assert_eq!(format_of(&fetched(None, Some("application/yaml"), pipy), "/c"), Format::Yaml);
    }
}
