//! Peer identities from verified certificates, and allow lists over them
//! (SMI TrafficTarget).
//!
//! osm-edge issues each service account a certificate whose common name and
//! DNS SAN are `<sa>.<ns>.<trust domain>`; SPIFFE-style meshes put
//! `spiffe://<trust domain>/ns/<ns>/sa/<sa>` in a URI SAN. Both read as the
//! identity `<sa>.<ns>`.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// The names a verified peer certificate carries, the mesh identity first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// `sa.ns` from a SPIFFE URI, if any; then URIs, DNS names, the CN.
    names: Box<[Box<str>]>,
    /// How many leading names came from SPIFFE URIs (as `sa.ns`).
    spiffe: usize,
}

impl PeerIdentity {
    pub fn from_der(der: &CertificateDer<'_>) -> Option<PeerIdentity> {
        let (_, parsed) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(Self::from_parsed(&parsed))
    }

    pub fn from_parsed(cert: &X509Certificate<'_>) -> PeerIdentity {
        let mut derived = Vec::new();
        let mut others = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) => {
                        if let Some(short) = spiffe_short_name(uri) {
                            derived.push(short.into_boxed_str());
                        }
                        others.push(Box::from(*uri));
                    }
                    GeneralName::DNSName(dns) => others.push(dns.to_ascii_lowercase().into_boxed_str()),
                    _ => {}
                }
            }
        }
        if let Some(cn) = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()) {
            let cn = cn.to_ascii_lowercase();
            if !others.iter().any(|name| **name == *cn) {
                others.push(cn.into_boxed_str());
            }
        }
        let spiffe = derived.len();
        derived.extend(others);
        PeerIdentity { names: derived.into_boxed_slice(), spiffe }
    }

    /// The name logs and headers show: `sa.ns` when known.
    pub fn primary(&self) -> &str {
        self.names.first().map(|name| &**name).unwrap_or("")
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|name| &**name)
    }

    /// Whether this identity is `entry` (see [`AllowList`]).
    pub fn is(&self, entry: &str) -> bool {
        if entry.contains("://") {
            return self.names.iter().skip(self.spiffe).any(|name| name.eq_ignore_ascii_case(entry));
        }
        self.names.iter().enumerate().any(|(i, name)| {
            if i < self.spiffe {
                return name.eq_ignore_ascii_case(entry);
            }
            // `sa.ns` matches `sa.ns` and `sa.ns.<trust domain>`; a single
            // label matches only itself (`sa` alone names no namespace).
            name.len() >= entry.len()
                && name[..entry.len()].eq_ignore_ascii_case(entry)
                && (name.len() == entry.len() || (entry.contains('.') && name.as_bytes()[entry.len()] == b'.'))
        })
    }
}

/// `spiffe://td/ns/<ns>/sa/<sa>` → `<sa>.<ns>`.
fn spiffe_short_name(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (_trust_domain, path) = rest.split_once('/')?;
    let mut parts = path.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("ns"), Some(ns), Some("sa"), Some(sa), None) if !ns.is_empty() && !sa.is_empty() => {
            Some(format!("{sa}.{ns}").to_ascii_lowercase())
        }
        _ => None,
    }
}

/// Who may pass, compiled from an `access` block.
#[derive(Debug)]
pub struct AllowList {
    pub permissive: bool,
    entries: Box<[Box<str>]>,
}

impl AllowList {
    pub fn compile(access: &config_model::AccessControl) -> Arc<AllowList> {
        Arc::new(AllowList {
            permissive: access.permissive,
            entries: access.allow.iter().map(|entry| entry.trim().to_ascii_lowercase().into_boxed_str()).collect(),
        })
    }

    pub fn allows(&self, peer: Option<&PeerIdentity>) -> bool {
        if self.permissive {
            return true;
        }
        let Some(peer) = peer else { return false };
        self.entries.iter().any(|entry| peer.is(entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(names: &[&str], spiffe: usize) -> PeerIdentity {
        PeerIdentity { names: names.iter().map(|n| Box::from(*n)).collect(), spiffe }
    }

    #[test]
    fn spiffe_uris_read_as_sa_dot_ns() {
        assert_eq!(spiffe_short_name("spiffe://cluster.local/ns/books/sa/buyer").as_deref(), Some("buyer.books"));
        assert_eq!(spiffe_short_name("spiffe://cluster.local/ns/books/sa/"), None);
        assert_eq!(spiffe_short_name("spiffe://cluster.local/ns/books/sa/buyer/x"), None);
        assert_eq!(spiffe_short_name("https://cluster.local/ns/books/sa/buyer"), None);
    }

    #[test]
    fn allow_entries_match_mesh_names() {
        let osm = identity(&["bookbuyer.bookbuyer.cluster.local"], 0);
        assert!(osm.is("bookbuyer.bookbuyer"));
        assert!(osm.is("bookbuyer.bookbuyer.cluster.local"));
        assert!(!osm.is("bookbuyer.book"));
        assert!(!osm.is("bookbuyer"));
        let spiffe = identity(&["buyer.books", "spiffe://td/ns/books/sa/buyer"], 1);
        assert!(spiffe.is("buyer.books"));
        assert!(spiffe.is("spiffe://td/ns/books/sa/buyer"));
        assert!(!spiffe.is("buyer.books.td"));
        assert!(!spiffe.is("spiffe://other/ns/books/sa/buyer"));
    }

    #[test]
    fn permissive_allows_everyone_and_strict_needs_an_identity() {
        let strict =
            AllowList::compile(&config_model::AccessControl { permissive: false, allow: vec!["Buyer.Books".into()] });
        assert!(!strict.allows(None));
        assert!(strict.allows(Some(&identity(&["buyer.books"], 1))));
        assert!(!strict.allows(Some(&identity(&["thief.books"], 1))));
        let open = AllowList::compile(&config_model::AccessControl { permissive: true, allow: vec![] });
        assert!(open.allows(None));
    }
}
