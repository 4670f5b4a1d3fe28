//! The server's rustls configuration.

use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::ServerTls;

pub(super) fn server_config(tls: &ServerTls) -> anyhow::Result<Arc<ServerConfig>> {
    // An explicit provider, so nothing depends on a process-wide default
    // having been installed (or on only one provider being compiled in).
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&tls.cert_pem)
        .collect::<Result<_, _>>()
        .context("the server certificate is not valid PEM")?;
    if chain.is_empty() {
        bail!("the server certificate PEM holds no certificate");
    }
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem).context("the server key PEM holds no usable private key")?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &tls.client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca_pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca_pem) {
                roots.add(cert.context("the client CA is not valid PEM")?).context("a client CA certificate")?;
            }
            if roots.is_empty() {
                bail!("the client CA PEM holds no certificate");
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder.with_single_cert(chain, key).context("the server certificate and key do not make a pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
