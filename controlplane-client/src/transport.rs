//! HTTP(S) to the control plane: conditional GETs, HEADs and status POSTs,
//! with timeouts, a body cap and an optional bearer token.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use config_model::{ControlPlane, ControlPlaneHttp, PemSource};
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Why the client could not be set up (bad bootstrap material).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("control_plane.url: {0}")]
    Url(String),
    #[error("control_plane.tls.{what}: {message}")]
    Tls { what: &'static str, message: String },
}

/// Why a request to the control plane failed. `kind` names it in metrics.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("body larger than max_body_bytes ({0} bytes)")]
    TooLarge(u64),
    #[error("body cut short or unreadable: {0}")]
    Body(String),
    #[error("cannot read the token: {0}")]
    Token(String),
    #[error("bad manifest: {0}")]
    Manifest(String),
    /// A compressed file (`config.json.gz`) that does not decompress.
    #[error("cannot decompress {0}")]
    Decode(String),
}

impl FetchError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Connect(_) => "connect_error",
            FetchError::Timeout(_) => "timeout",
            FetchError::Status(_) => "http_error",
            FetchError::TooLarge(_) => "too_large",
            FetchError::Body(_) => "truncated",
            FetchError::Token(_) => "token_error",
            FetchError::Manifest(_) => "manifest_error",
            FetchError::Decode(_) => "decode_error",
        }
    }
}

/// A response worth reading: the body (capped) and the headers the client uses.
#[derive(Debug)]
pub struct Fetched {
    pub status: StatusCode,
    pub etag: Option<String>,
    pub content_type: Option<String>,
    /// The server held the request for a long poll (`Preference-Applied: wait`).
    pub waited: bool,
    pub body: Bytes,
}

enum Token {
    None,
    Fixed(HeaderValue),
    File(PathBuf),
}

/// One HTTP client for every request to the control plane; connections
/// are kept alive between polls.
pub struct Transport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    max_body: u64,
    token: Token,
}

impl Transport {
    /// `token` (from the environment) is used when no `token_file` is set.
    pub fn new(settings: &ControlPlane, token: Option<String>) -> Result<Self, SetupError> {
        let url = config_model::parse_http_url(&settings.url).map_err(SetupError::Url)?;
        let connect_timeout = settings.connect_timeout.parse().map_err(SetupError::Url)?;
        let timeout = settings.timeout.parse().map_err(SetupError::Url)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let tls = client_tls(settings, url.https)?;
        let mut builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
        if let Some(name) = settings.tls.as_ref().and_then(|tls| tls.server_name.clone()) {
            let name = rustls::pki_types::ServerName::try_from(name)
                .map_err(|e| SetupError::Tls { what: "server_name", message: e.to_string() })?;
            builder = builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
        }
        let connector = match settings.http_version {
            ControlPlaneHttp::Auto => builder.enable_all_versions().wrap_connector(http),
            ControlPlaneHttp::Http1 => builder.enable_http1().wrap_connector(http),
            ControlPlaneHttp::Http2 => builder.enable_http2().wrap_connector(http),
        };
        let mut client = Client::builder(TokioExecutor::new());
        client.pool_idle_timeout(Duration::from_secs(90));
        if settings.http_version == ControlPlaneHttp::Http2 {
            client.http2_only(true);
        }
        let token = match (&settings.token_file, token) {
            (Some(file), _) => Token::File(file.into()),
            (None, Some(token)) => Token::Fixed(
                bearer(&token).map_err(|message| SetupError::Tls { what: "token", message: message.to_string() })?,
            ),
            (None, None) => Token::None,
        };
        Ok(Transport { client: client.build(connector), timeout, max_body: settings.max_body_bytes, token })
    }

    /// A GET (`If-None-Match` when `known` is given, a long poll when `wait`
    /// is) or a HEAD. Any status but 2xx and 304 is an error.
    pub async fn fetch(
        &self,
        method: Method,
        uri: &Uri,
        known: &[String],
        wait: Option<Duration>,
    ) -> Result<Fetched, FetchError> {
        let mut request = Request::builder().method(method.clone()).uri(uri.clone());
        if !known.is_empty() {
            let list = known.join(", ");
            if let Ok(value) = HeaderValue::from_str(&list) {
                request = request.header(header::IF_NONE_MATCH, value);
            }
        }
        let timeout = match wait {
            Some(wait) => {
                request = request.header("prefer", format!("wait={}", wait.as_secs().max(1)));
                self.timeout + wait
            }
            None => self.timeout,
        };
        let request =
            self.authorize(request).await?.body(Full::default()).map_err(|e| FetchError::Connect(e.to_string()))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| FetchError::Connect(error_chain(&e)))?;
            let status = response.status();
            if !(status.is_success() || status == StatusCode::NOT_MODIFIED) {
                return Err(FetchError::Status(status));
            }
            let headers = response.headers();
            let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let etag = text(header::ETAG);
            let content_type = text(header::CONTENT_TYPE);
            let waited = headers.get("preference-applied").is_some();
            let declared =
                headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
            if method != Method::HEAD && declared.is_some_and(|length| length > self.max_body) {
                return Err(FetchError::TooLarge(self.max_body));
            }
            let limit = usize::try_from(self.max_body).unwrap_or(usize::MAX);
            let body = match Limited::new(response.into_body(), limit).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(error) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                    return Err(FetchError::TooLarge(self.max_body))
                }
                Err(error) => return Err(FetchError::Body(error_chain(&*error))),
            };
            Ok(Fetched { status, etag, content_type, waited, body })
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| FetchError::Timeout(timeout))?
    }

    /// POSTs a JSON document; any 2xx is success.
    pub async fn post_json(&self, uri: &Uri, body: Vec<u8>) -> Result<StatusCode, FetchError> {
        let request =
            Request::builder().method(Method::POST).uri(uri.clone()).header(header::CONTENT_TYPE, "application/json");
        let request = self
            .authorize(request)
            .await?
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| FetchError::Connect(e.to_string()))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| FetchError::Connect(error_chain(&e)))?;
            let status = response.status();
            // Drain (capped) so the connection can be reused.
            let _ = Limited::new(response.into_body(), 64 << 10).collect().await;
            if status.is_success() {
                Ok(status)
            } else {
                Err(FetchError::Status(status))
            }
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| FetchError::Timeout(self.timeout))?
    }

    async fn authorize(&self, request: http::request::Builder) -> Result<http::request::Builder, FetchError> {
        Ok(match &self.token {
            Token::None => request,
            Token::Fixed(value) => request.header(header::AUTHORIZATION, value.clone()),
            Token::File(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| FetchError::Token(format!("{}: {e}", path.display())))?;
                let value = bearer(text.trim()).map_err(|m| FetchError::Token(format!("{}: {m}", path.display())))?;
                request.header(header::AUTHORIZATION, value)
            }
        })
    }
}

fn bearer(token: &str) -> Result<HeaderValue, &'static str> {
    if token.is_empty() {
        return Err("empty token");
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| "not a valid header value")?;
    value.set_sensitive(true);
    Ok(value)
}

/// The error and its causes on one line ("client error (Connect): tcp
/// connect error: Connection refused").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn read_pem(source: &PemSource, what: &'static str) -> Result<Vec<u8>, SetupError> {
    match source {
        PemSource::Pem(text) => Ok(text.as_bytes().to_vec()),
        PemSource::File(path) => {
            std::fs::read(path).map_err(|e| SetupError::Tls { what, message: format!("{path}: {e}") })
        }
    }
}

fn client_tls(settings: &ControlPlane, https: bool) -> Result<rustls::ClientConfig, SetupError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SetupError::Tls { what: "versions", message: e.to_string() })?;
    let tls = settings.tls.clone().unwrap_or_default();
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some(ca) => {
            let pem = read_pem(ca, "ca")?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| SetupError::Tls { what: "ca", message: e.to_string() })?;
                roots.add(cert).map_err(|e| SetupError::Tls { what: "ca", message: e.to_string() })?;
            }
            if roots.is_empty() {
                return Err(SetupError::Tls { what: "ca", message: "no certificate in the bundle".into() });
            }
        }
        // Plain http needs no roots; don't read the system store for nothing.
        None if https => {
            let loaded = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(loaded.certs);
        }
        None => {}
    }
    let builder = builder.with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read_pem(cert, "cert")?)
                .collect::<Result<_, _>>()
                .map_err(|e| SetupError::Tls { what: "cert", message: e.to_string() })?;
            if chain.is_empty() {
                return Err(SetupError::Tls { what: "cert", message: "no certificate in the file".into() });
            }
            let key_pem = read_pem(&key.as_pem_source(), "key")?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| SetupError::Tls { what: "key", message: e.to_string() })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| SetupError::Tls { what: "cert", message: e.to_string() })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}
