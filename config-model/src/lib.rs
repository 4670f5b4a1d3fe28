//! edgeplane's configuration: the typed model, loading from YAML or JSON,
//! validation that reports every problem with its path, and the JSON Schema.
//!
//! ```
//! let config = config_model::from_yaml_str(r#"
//! listeners:
//!   - name: web
//!     bind: 127.0.0.1:8080
//!     routes: [ { cluster: app } ]
//! clusters:
//!   - name: app
//!     endpoints: [ 127.0.0.1:9000 ]
//! "#).unwrap();
//! config_model::validate(&config).unwrap();
//! ```
#![forbid(unsafe_code)]

mod bootstrap;
mod jwt;
mod model;
mod mqtt;
pub mod pipy;
mod policy;
mod string_or;
mod tls;
mod validate;
mod values;

use std::path::Path;

pub use bootstrap::*;
pub use jwt::*;
pub use model::*;
pub use mqtt::*;
pub use policy::*;
pub use tls::*;
pub use validate::{validate, ValidationError, MAX_WEIGHT};
pub use values::{parse_duration, BindAddress, ByteRate, Cidr, Duration, ParsedUpstream, UpstreamAddress};

/// Why a config could not be read or parsed. Semantic problems are
/// [`ValidationError`]s instead.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid YAML/JSON or does not fit the model. `at` is the
    /// path of the offending field (`listeners[0].protocol`), empty at the top.
    #[error("{}{message}", if at.is_empty() { String::new() } else { format!("{at}: ") })]
    Parse { at: String, message: String },
}

/// Config file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
    /// An osm-edge/FSM sidecar `config.json` (see [`pipy`]), translated.
    PipyConf,
}

impl Format {
    /// `.json` files are JSON; everything else is read as YAML.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|ext| ext.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Yaml,
        }
    }

    /// The format of a text that claims to be `self`: JSON that is a PipyConf
    /// is [`Format::PipyConf`].
    pub fn sniff(self, text: &str) -> Self {
        if self == Format::Json && pipy::looks_like_pipyconf(text) {
            Format::PipyConf
        } else {
            self
        }
    }
}

/// Reads and parses a config file (not validated).
pub fn load_file(path: &Path) -> Result<Config, LoadError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| LoadError::Io { path: path.display().to_string(), source })?;
    from_str(&text, Format::from_path(path))
}

/// Parses config text (not validated).
pub fn from_str(text: &str, format: Format) -> Result<Config, LoadError> {
    match format {
        Format::Yaml => from_yaml_str(text),
        Format::Json => from_json_str(text),
        Format::PipyConf => pipy::translate(text, &pipy::SidecarContext::default()).map(|t| t.config),
    }
}

pub fn from_json_str(text: &str) -> Result<Config, LoadError> {
    parse_json(text)
}

pub fn from_yaml_str(text: &str) -> Result<Config, LoadError> {
    parse_yaml(text)
}

/// Parses a bootstrap file's text (not validated; see [`validate_bootstrap`]).
pub fn bootstrap_from_str(text: &str, format: Format) -> Result<Bootstrap, LoadError> {
    match format {
        Format::Yaml => parse_yaml(text),
        Format::Json | Format::PipyConf => parse_json(text),
    }
}

/// Reads, parses and validates a bootstrap file; the error lists every problem.
pub fn load_bootstrap(path: &Path) -> Result<Bootstrap, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
    let bootstrap = bootstrap_from_str(&text, Format::from_path(path)).map_err(|error| vec![error.to_string()])?;
    validate_bootstrap(&bootstrap).map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    Ok(bootstrap)
}

/// The JSON Schema of [`Bootstrap`].
pub fn bootstrap_json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(Bootstrap);
    serde_json::to_value(&schema).expect("a schema is always valid JSON")
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, LoadError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|error| LoadError::Parse { at: path_text(error.path()), message: error.into_inner().to_string() })?;
    deserializer.end().map_err(|error| LoadError::Parse { at: String::new(), message: error.to_string() })?;
    Ok(value)
}

fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, LoadError> {
    let mut at = String::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |deserializer| {
        serde_path_to_error::deserialize::<_, T>(deserializer).map_err(|error| {
            at = path_text(error.path());
            error.into_inner()
        })
    });
    result.map_err(|error| LoadError::Parse { at, message: error.to_string() })
}

fn path_text(path: &serde_path_to_error::Path) -> String {
    let text = path.to_string();
    if text == "." {
        String::new()
    } else {
        text
    }
}

/// Loads, parses and validates a config file; the error lists every problem.
pub fn load_and_validate(path: &Path) -> Result<Config, Vec<String>> {
    let config = load_file(path).map_err(|error| vec![error.to_string()])?;
    validate(&config).map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    Ok(config)
}

/// The JSON Schema of [`Config`], for editors and CI.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(Config);
    serde_json::to_value(&schema).expect("a schema is always valid JSON")
}
