//! TLS blocks, identities, SNI criteria and access lists. Whether files
//! exist and hold usable certificates is checked when the proxy compiles the
//! config (the messages name the same paths).

use super::Validator;
use crate::model::*;
use crate::tls::*;
use crate::values::is_hostname;

/// ALPN protocol ids are 1 to 255 bytes (RFC 7301).
const MAX_ALPN: usize = 255;

impl Validator {
    pub(super) fn identity(&mut self, identity: &Identity) {
        self.pem("identity.cert", &identity.cert);
        self.pem("identity.key", &identity.key.as_pem_source());
        self.pem("identity.ca", &identity.ca);
    }

    fn pem(&mut self, path: &str, source: &PemSource) {
        match source {
            PemSource::File(file) if file.trim().is_empty() => self.error(format!("{path}.file"), "empty path"),
            PemSource::Pem(text) if !text.contains("-----BEGIN ") => {
                self.error(format!("{path}.pem"), "not PEM text (no -----BEGIN line)")
            }
            _ => {}
        }
    }

    fn alpn(&mut self, path: &str, alpn: &Option<Vec<String>>) {
        for (i, protocol) in alpn.iter().flatten().enumerate() {
            if protocol.is_empty() || protocol.len() > MAX_ALPN {
                self.error(format!("{path}[{i}]"), "must be 1 to 255 bytes");
            }
        }
    }

    pub(super) fn listener_tls(&mut self, path: &str, listener: &Listener, has_identity: bool) {
        for (index, route) in listener.routes.iter().enumerate() {
            let route_path = format!("{path}.routes[{index}]");
            if let Some(sni) = &route.matches.sni {
                let name = sni.strip_prefix("*.").unwrap_or(sni);
                if !is_hostname(name) || name.ends_with('.') {
                    self.error(format!("{route_path}.match.sni"), format!("invalid server name {sni:?}"));
                }
                if listener.tls.is_none() {
                    self.error(format!("{route_path}.match.sni"), "needs a listener with `tls`");
                }
            }
            if let Some(access) = &route.access {
                self.access(&format!("{route_path}.access"), access, listener);
            }
        }
        if let Some(access) = &listener.access {
            self.access(&format!("{path}.access"), access, listener);
        }
        if let Some(redirect) = &listener.http.redirect_https {
            if ![301, 302, 303, 307, 308].contains(&redirect.status) {
                self.error(format!("{path}.http.redirect_https.status"), "must be 301, 302, 303, 307 or 308");
            }
            if redirect.port == Some(0) {
                self.error(format!("{path}.http.redirect_https.port"), "must be 1 to 65535");
            }
            if listener.protocol == ListenerProtocol::Tcp || listener.protocol == ListenerProtocol::Mqtt {
                self.error(format!("{path}.http.redirect_https"), "needs an HTTP listener");
            }
            if listener.tls.as_ref().is_some_and(|tls| tls.plaintext_sources.is_empty()) {
                self.error(format!("{path}.http.redirect_https"), "the listener takes only TLS already");
            }
        }
        let Some(tls) = &listener.tls else { return };
        let path = format!("{path}.tls");
        if tls.mode == TlsMode::Passthrough {
            if listener.protocol != ListenerProtocol::Tcp {
                self.error(format!("{path}.mode"), "passthrough needs `protocol: tcp` (nothing is decrypted)");
            }
            let terminating = !tls.certificates.is_empty()
                || tls.mesh
                || tls.client_auth.is_some()
                || !tls.plaintext_sources.is_empty()
                || tls.alpn.is_some();
            if terminating {
                self.error(
                    path.clone(),
                    "passthrough takes no certificates, mesh, client_auth, alpn or plaintext_sources",
                );
            }
            return;
        }
        if tls.certificates.is_empty() && !tls.mesh {
            self.error(format!("{path}.certificates"), "needs at least one certificate (or `mesh: true`)");
        }
        if tls.mesh && !has_identity {
            self.error(format!("{path}.mesh"), "needs the top-level `identity`");
        }
        let defaults = tls.certificates.iter().filter(|c| c.default).count();
        if defaults > 1 {
            self.error(format!("{path}.certificates"), "at most one certificate may be the default");
        }
        for (i, certificate) in tls.certificates.iter().enumerate() {
            let cert_path = format!("{path}.certificates[{i}]");
            self.pem(&format!("{cert_path}.cert"), &certificate.cert);
            self.pem(&format!("{cert_path}.key"), &certificate.key.as_pem_source());
            for (n, name) in certificate.server_names.iter().enumerate() {
                let bare = name.strip_prefix("*.").unwrap_or(name);
                if !is_hostname(bare) || bare.ends_with('.') {
                    self.error(format!("{cert_path}.server_names[{n}]"), format!("invalid server name {name:?}"));
                }
            }
        }
        self.alpn(&format!("{path}.alpn"), &tls.alpn);
        if let (Some(min), Some(max)) = (tls.min_version, tls.max_version) {
            if min > max {
                self.error(format!("{path}.min_version"), "is above max_version");
            }
        }
        for (i, suite) in tls.cipher_suites.iter().enumerate() {
            if !suite.starts_with("TLS") {
                self.error(
                    format!("{path}.cipher_suites[{i}]"),
                    format!("{suite:?} is not an IANA suite name (TLS_…)"),
                );
            }
        }
        if let Some(auth) = &tls.client_auth {
            match &auth.ca {
                Some(ca) => self.pem(&format!("{path}.client_auth.ca"), ca),
                None if !has_identity => {
                    self.error(format!("{path}.client_auth.ca"), "needed (no `identity` to take the mesh CA from)")
                }
                None => {}
            }
        }
        for (i, cidr) in tls.plaintext_sources.iter().enumerate() {
            if let Err(message) = cidr.parse::<crate::values::Cidr>() {
                self.error(format!("{path}.plaintext_sources[{i}]"), message);
            }
        }
        if let Some(timeout) = self.check(format!("{path}.handshake_timeout"), tls.handshake_timeout.parse()) {
            if timeout.is_zero() {
                self.error(format!("{path}.handshake_timeout"), "must be greater than 0");
            }
        }
    }

    fn access(&mut self, path: &str, access: &AccessControl, listener: &Listener) {
        if !access.permissive && access.allow.is_empty() {
            self.error(format!("{path}.allow"), "empty: nobody could connect (use `permissive: true` to allow all)");
        }
        for (i, entry) in access.allow.iter().enumerate() {
            let entry = entry.trim();
            let valid = if let Some(rest) = entry.strip_prefix("spiffe://") {
                !rest.is_empty() && rest.contains('/')
            } else {
                is_hostname(entry)
            };
            if !valid {
                self.error(
                    format!("{path}.allow[{i}]"),
                    format!("{entry:?} is neither sa.ns, a DNS name nor a SPIFFE URI"),
                );
            }
        }
        let verifies_clients = listener.tls.as_ref().is_some_and(|tls| tls.mesh || tls.client_auth.is_some());
        if !access.permissive && !verifies_clients {
            self.error(
                path.to_string(),
                "identities come from verified client certificates: the listener needs `tls.mesh` or `tls.client_auth`",
            );
        }
    }

    pub(super) fn cluster_tls(&mut self, path: &str, tls: &ClusterTls, has_identity: bool) {
        if tls.mesh {
            if !has_identity {
                self.error(format!("{path}.mesh"), "needs the top-level `identity`");
            }
            if tls.cert.is_some() || tls.key.is_some() {
                self.error(format!("{path}.cert"), "mesh clusters present the identity; no `cert`/`key`");
            }
        } else if !tls.identities.is_empty() {
            self.error(format!("{path}.identities"), "only with `mesh: true`");
        }
        match (&tls.cert, &tls.key) {
            (Some(_), None) => self.error(format!("{path}.key"), "needed with `cert`"),
            (None, Some(_)) => self.error(format!("{path}.cert"), "needed with `key`"),
            _ => {}
        }
        if let Some(name) = &tls.server_name {
            if !is_hostname(name) && name.parse::<std::net::IpAddr>().is_err() {
                self.error(format!("{path}.server_name"), format!("invalid server name {name:?}"));
            }
        }
        for (field, source) in [("ca", tls.ca.clone()), ("cert", tls.cert.clone())] {
            if let Some(source) = source {
                self.pem(&format!("{path}.{field}"), &source);
            }
        }
        if let Some(key) = &tls.key {
            self.pem(&format!("{path}.key"), &key.as_pem_source());
        }
        self.alpn(&format!("{path}.alpn"), &tls.alpn);
    }
}
