//! Sidecar mTLS end to end: client → outbound proxy → mTLS → inbound proxy
//! → app, with identities from a mesh CA made at test time; access control
//! by identity (allow, deny, permissive, mixed mode); TCP and MQTT behind
//! mTLS; certificate and CA rotation under load.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgeplane_tests::harness::{eventually, guard, TestProxy};
use edgeplane_tests::pki::{self, Ca, Issued};
use edgeplane_tests::upstream::{
    try_publish, ClientOptions, HttpProto, HttpUpstream, Mosquitto, MqttVersion, Subscriber, TcpEcho,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Identity files of one sidecar.
struct Sidecar {
    cert: PathBuf,
    key: PathBuf,
}

fn sidecar(dir: &Path, issued: &Issued, name: &str) -> Sidecar {
    let (cert, key) = issued.write(dir, name);
    Sidecar { cert, key }
}

fn identity_block(side: &Sidecar, ca: &Path) -> String {
    format!(
        "identity:\n  cert: {{ file: {} }}\n  key: {{ file: {} }}\n  ca: {{ file: {} }}\n",
        path(&side.cert),
        path(&side.key),
        path(ca)
    )
}

/// The inbound sidecar of `bookstore`: mTLS listener, access list, the app behind.
fn inbound_config(side: &Sidecar, ca: &Path, app: std::net::SocketAddr, access: &str, tls_extra: &str) -> String {
    format!(
        "{}listeners:\n  - name: inbound\n    bind: 127.0.0.1:0\n    tls:\n      mesh: true\n{tls_extra}    access: {access}\n    routes:\n      - cluster: local-app\nclusters:\n  - name: local-app\n    endpoints: [ \"{app}\" ]\n",
        identity_block(side, ca)
    )
}

/// An outbound sidecar whose cluster `bookstore` reaches `inbound` over mTLS.
fn outbound_config(side: &Sidecar, ca: &Path, inbound: std::net::SocketAddr, expect: &str) -> String {
    format!(
        "{}listeners:\n  - name: outbound\n    bind: 127.0.0.1:0\n    routes:\n      - cluster: bookstore\nclusters:\n  - name: bookstore\n    endpoints: [ \"{inbound}\" ]\n    tls: {{ mesh: true, identities: [ {expect} ] }}\n",
        identity_block(side, ca)
    )
}

async fn get(proxy: &TestProxy, listener: &str, path: &str) -> (u16, String) {
    let (status, _, body) = edgeplane_tests::client::get(proxy.addr(listener), "bookstore", path).await;
    (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

struct Mesh {
    dir: tempfile::TempDir,
    ca: Ca,
    ca_file: PathBuf,
}

impl Mesh {
    fn new() -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("mesh CA");
        let ca_file = pki::write_pem(dir.path(), "mesh-ca.pem", &ca.pem());
        Mesh { dir, ca, ca_file }
    }

    fn sidecar(&self, sa: &str) -> Sidecar {
        sidecar(self.dir.path(), &self.ca.identity(sa, "default"), sa)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_talk_mtls_and_identities_decide_access() {
    guard(async {
        let mesh = Mesh::new();
        let app = HttpUpstream::start("bookstore-v1", HttpProto::Http1).await;
        let bookstore = mesh.sidecar("bookstore");
        let inbound = TestProxy::start(&inbound_config(
            &bookstore,
            &mesh.ca_file,
            app.addr(),
            "{ allow: [ bookbuyer.default ] }",
            "",
        ));
        let buyer = TestProxy::start(&outbound_config(
            &mesh.sidecar("bookbuyer"),
            &mesh.ca_file,
            inbound.addr("inbound"),
            "bookstore.default",
        ));
        let thief = TestProxy::start(&outbound_config(
            &mesh.sidecar("bookthief"),
            &mesh.ca_file,
            inbound.addr("inbound"),
            "bookstore.default",
        ));

        // The allowed identity gets through, encrypted both ways.
        let (status, body) = get(&buyer, "outbound", "/books").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"upstream\":\"bookstore-v1\""), "{body}");
        assert_eq!(inbound.metric("edgeplane_tls_handshakes_total", &[("reason", "ok")]).await, Some(1.0));
        // A mesh identity that is not on the list: 403 from the inbound side.
        let (status, body) = get(&thief, "outbound", "/books").await;
        assert_eq!((status, body.as_str()), (403, "access denied\n"));
        assert_eq!(
            inbound.metric("edgeplane_access_denied_total", &[("listener", "inbound"), ("reason", "http")]).await,
            Some(1.0)
        );
        assert_eq!(app.requests(), 1, "the denied request never reached the app");

        // The outbound side checks the inbound's identity too.
        let wrong = TestProxy::start(&outbound_config(
            &mesh.sidecar("bookbuyer2"),
            &mesh.ca_file,
            inbound.addr("inbound"),
            "bookwarehouse.default",
        ));
        assert_eq!(get(&wrong, "outbound", "/books").await.0, 502, "an upstream with another identity is refused");
        assert!(
            wrong.metric("edgeplane_tls_upstream_handshake_errors_total", &[("cluster", "bookstore")]).await
                >= Some(1.0)
        );

        // Someone with a certificate from another CA is refused in the handshake.
        let rogue_ca = Ca::new("rogue CA");
        let rogue_ca_file = pki::write_pem(mesh.dir.path(), "rogue-ca.pem", &rogue_ca.pem());
        let rogue_side = sidecar(mesh.dir.path(), &rogue_ca.identity("bookbuyer", "default"), "rogue");
        // It trusts the mesh CA (to get as far as sending its certificate).
        let rogue_config = outbound_config(&rogue_side, &mesh.ca_file, inbound.addr("inbound"), "bookstore.default");
        let rogue = TestProxy::start(&rogue_config);
        assert_eq!(get(&rogue, "outbound", "/books").await.0, 502);
        assert!(
            inbound.metric("edgeplane_tls_handshakes_total", &[("reason", "client_certificate_untrusted")]).await
                >= Some(1.0)
        );
        let _ = rogue_ca_file;

        // An expired identity (rustls client here: the proxy refuses to load one).
        let expired = mesh.ca.issue(&pki::Leaf {
            cn: "bookbuyer.default.cluster.local",
            dns: &["bookbuyer.default.cluster.local"],
            expired: true,
            ..Default::default()
        });
        let client = pki::client_config(&mesh.ca.pem(), Some(&expired), &[]);
        let result = pki::https_get(inbound.addr("inbound"), "bookstore.default.cluster.local", client, "/").await;
        assert!(result.is_err(), "an expired client certificate was accepted: {result:?}");
        eventually("expired certificate counted", Duration::from_secs(5), || async {
            inbound.metric("edgeplane_tls_handshakes_total", &[("reason", "client_certificate_expired")]).await
                >= Some(1.0)
        })
        .await;
        // No certificate at all.
        let client = pki::client_config(&mesh.ca.pem(), None, &[]);
        assert!(pki::https_get(inbound.addr("inbound"), "bookstore.default.cluster.local", client, "/").await.is_err());

        // Permissive mode: everyone with a mesh certificate passes.
        let config = inbound_config(&bookstore, &mesh.ca_file, app.addr(), "{ permissive: true }", "");
        inbound.reload(&config).await.expect("reload");
        assert_eq!(get(&thief, "outbound", "/books").await.0, 200);
        // The allowed one still works; `/certs` shows the identity served.
        assert_eq!(get(&buyer, "outbound", "/books").await.0, 200);
        let (_, certs) = inbound.admin_get("/certs").await;
        assert!(certs.contains("bookstore.default"), "{certs}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_mode_takes_plaintext_from_listed_sources_only() {
    guard(async {
        let mesh = Mesh::new();
        let app = HttpUpstream::start("app", HttpProto::Http1).await;
        let store = mesh.sidecar("bookstore");
        let config = |sources: &str, access: &str| {
            inbound_config(
                &store,
                &mesh.ca_file,
                app.addr(),
                access,
                &format!("      plaintext_sources: [ {sources} ]\n"),
            )
        };
        let inbound = TestProxy::start(&config("127.0.0.1/32", "{ permissive: true }"));
        // Plaintext from a listed range is served (without an identity)...
        let (status, _) = get(&inbound, "inbound", "/plain").await;
        assert_eq!(status, 200);
        assert_eq!(inbound.metric("edgeplane_tls_handshakes_total", &[("reason", "plaintext")]).await, Some(1.0));
        // ...and mTLS from the same range still works.
        let buyer = TestProxy::start(&outbound_config(
            &mesh.sidecar("bookbuyer"),
            &mesh.ca_file,
            inbound.addr("inbound"),
            "bookstore.default",
        ));
        assert_eq!(get(&buyer, "outbound", "/tls").await.0, 200);
        // Enforced access: a plaintext client has no identity.
        inbound.reload(&config("127.0.0.1/32", "{ allow: [ bookbuyer.default ] }")).await.expect("reload");
        assert_eq!(get(&inbound, "inbound", "/plain").await.0, 403);
        assert_eq!(get(&buyer, "outbound", "/tls").await.0, 200);
        // A range that does not contain the client: plaintext is not TLS.
        inbound.reload(&config("10.0.0.0/8", "{ permissive: true }")).await.expect("reload");
        let mut plain = tokio::net::TcpStream::connect(inbound.addr("inbound")).await.unwrap();
        plain.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
        assert!(!answer.starts_with(b"HTTP/"), "plaintext served outside plaintext_sources");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_behind_mtls_is_closed_for_identities_not_allowed() {
    guard(async {
        let mesh = Mesh::new();
        let echo = TcpEcho::start().await;
        let store = mesh.sidecar("db");
        let config = format!(
            "{}listeners:\n  - name: inbound\n    bind: 127.0.0.1:0\n    protocol: tcp\n    tls: {{ mesh: true }}\n    access: {{ allow: [ api.default ] }}\n    routes:\n      - cluster: db\nclusters:\n  - name: db\n    endpoints: [ \"{}\" ]\n",
            identity_block(&store, &mesh.ca_file),
            echo.addr()
        );
        let inbound = TestProxy::start(&config);
        for (sa, allowed) in [("api", true), ("intruder", false)] {
            let issued = mesh.ca.identity(sa, "default");
            let client = pki::client_config(&mesh.ca.pem(), Some(&issued), &[]);
            let mut tls = pki::connect(inbound.addr("inbound"), "db.default.cluster.local", client).await.unwrap();
            let _ = tls.write_all(b"ping\n").await;
            let mut reply = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let mut chunk = [0u8; 16];
                while reply.len() < 5 {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => reply.extend_from_slice(&chunk[..n]),
                    }
                }
            })
            .await;
            if allowed {
                assert_eq!(reply, b"ping\n", "{sa}");
            } else {
                assert!(reply.is_empty(), "{sa} got {reply:?}");
            }
        }
        assert_eq!(inbound.metric("edgeplane_access_denied_total", &[("reason", "tcp")]).await, Some(1.0));
        assert_eq!(echo.connections(), 1, "the refused connection never reached the upstream");
    })
    .await;
}

/// New TLS connections and requests, as fast as they go, until told to stop:
/// (requests, failures).
async fn load(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    stop: Arc<AtomicUsize>,
) -> (usize, Vec<String>) {
    let mut done = 0;
    let mut failures = Vec::new();
    while stop.load(Ordering::Relaxed) == 0 {
        match pki::https_get(addr, "a.example.com", config.clone(), "/").await {
            Ok((200, _)) => done += 1,
            Ok((status, body)) => failures.push(format!("{status}: {body}")),
            Err(error) => failures.push(error.to_string()),
        }
    }
    (done, failures)
}

async fn served_serial(proxy: &TestProxy) -> String {
    let (_, certs) = proxy.admin_get("/certs").await;
    let certs: serde_json::Value = serde_json::from_str(&certs).unwrap();
    certs["certificates"][0]["serial"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_every_second_under_load_without_a_failure() {
    guard(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("edge CA");
        let (cert, key) = ca.server(&["a.example.com"]).write(dir.path(), "a");
        let proxy = TestProxy::start(&format!(
            "listeners:\n  - name: https\n    bind: 127.0.0.1:0\n    tls:\n      certificates:\n        - cert: {{ file: {} }}\n          key: {{ file: {} }}\n    routes:\n      - direct_response: {{ status: 200, body: ok }}\n",
            path(&cert),
            path(&key)
        ));
        let addr = proxy.addr("https");
        let config = pki::client_config(&ca.pem(), None, &["http/1.1"]);
        // A keep-alive connection opened before any rotation.
        let mut kept = pki::connect(addr, "a.example.com", config.clone()).await.unwrap();
        let stop = Arc::new(AtomicUsize::new(0));
        let loaders: Vec<_> = (0..4).map(|_| tokio::spawn(load(addr, config.clone(), stop.clone()))).collect();

        let mut serial = served_serial(&proxy).await;
        for round in 0..5 {
            ca.server(&["a.example.com"]).replace(&cert, &key);
            // The watcher looks every second; the served serial changes.
            let previous = serial.clone();
            eventually(&format!("rotation {round} applied"), Duration::from_secs(5), || {
                let proxy = &proxy;
                let previous = previous.clone();
                async move { served_serial(proxy).await != previous }
            })
            .await;
            serial = served_serial(&proxy).await;
            // The connection from before keeps working.
            kept.write_all(b"GET / HTTP/1.1\r\nhost: a.example.com\r\n\r\n").await.unwrap();
            let mut response = [0u8; 256];
            let n = kept.read(&mut response).await.unwrap();
            assert!(response[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&response[..n]));
        }
        // A broken rotation (the key of another certificate) is refused and
        // the served certificate stays.
        let other = ca.server(&["a.example.com"]);
        std::fs::write(&key, &other.key_pem).unwrap();
        eventually("bad rotation refused", Duration::from_secs(5), || async {
            proxy.metric("edgeplane_tls_rotations_total", &[("result", "rejected")]).await >= Some(1.0)
        })
        .await;
        assert_eq!(served_serial(&proxy).await, serial, "the old certificate stays in service");
        std::fs::write(&cert, &other.cert_pem).unwrap();
        eventually("fixed rotation applied", Duration::from_secs(5), || {
            let proxy = &proxy;
            let serial = serial.clone();
            async move { served_serial(proxy).await != serial }
        })
        .await;

        stop.store(1, Ordering::Relaxed);
        let mut requests = 0;
        for loader in loaders {
            let (done, failures) = loader.await.unwrap();
            assert!(failures.is_empty(), "failed during rotation: {failures:?}");
            requests += done;
        }
        assert!(requests > 20, "only {requests} requests under load");
        assert!(proxy.metric("edgeplane_tls_rotations_total", &[("result", "applied")]).await >= Some(6.0));
        println!("{requests} new-connection requests across 6 rotations, none failed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_removed_by_rotation_is_refused_for_new_handshakes_only() {
    guard(async {
        let dir = tempfile::tempdir().unwrap();
        let (old_ca, new_ca) = (Ca::new("old client CA"), Ca::new("new client CA"));
        let server_ca = Ca::new("server CA");
        let (cert, key) = server_ca.server(&["a.example.com"]).write(dir.path(), "a");
        let bundle = pki::write_pem(dir.path(), "clients.pem", &format!("{}{}", old_ca.pem(), new_ca.pem()));
        let proxy = TestProxy::start(&format!(
            "listeners:\n  - name: https\n    bind: 127.0.0.1:0\n    tls:\n      certificates:\n        - cert: {{ file: {} }}\n          key: {{ file: {} }}\n      client_auth: {{ ca: {{ file: {} }} }}\n    routes:\n      - direct_response: {{ status: 200, body: ok }}\n",
            path(&cert),
            path(&key),
            path(&bundle)
        ));
        let addr = proxy.addr("https");
        let old_client = pki::client_config(&server_ca.pem(), Some(&old_ca.identity("legacy", "default")), &["http/1.1"]);
        let new_client = pki::client_config(&server_ca.pem(), Some(&new_ca.identity("current", "default")), &["http/1.1"]);
        let mut established = pki::connect(addr, "a.example.com", old_client.clone()).await.unwrap();
        assert_eq!(pki::https_get(addr, "a.example.com", old_client.clone(), "/").await.unwrap().0, 200);

        // The old CA leaves the bundle.
        std::fs::write(&bundle, new_ca.pem()).unwrap();
        eventually("CA rotation applied", Duration::from_secs(5), || async {
            proxy.metric("edgeplane_tls_rotations_total", &[("result", "applied")]).await >= Some(1.0)
        })
        .await;
        assert!(pki::https_get(addr, "a.example.com", old_client, "/").await.is_err(), "old CA still trusted");
        assert_eq!(pki::https_get(addr, "a.example.com", new_client, "/").await.unwrap().0, 200);
        // The connection made before goes on.
        established.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        let mut response = [0u8; 128];
        let n = established.read(&mut response).await.unwrap();
        assert!(response[..n].starts_with(b"HTTP/1.1 200"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_mtls_with_mosquitto_clients_and_identity_access() {
    guard(async {
        let mesh = Mesh::new();
        let broker = Mosquitto::start().await;
        // The proxy's certificate must name the address mosquitto clients dial.
        let gateway = mesh.ca.issue(&pki::Leaf {
            cn: "mqtt-gateway.default.cluster.local",
            dns: &["mqtt-gateway.default.cluster.local"],
            ips: &["127.0.0.1".parse().unwrap()],
            ..Default::default()
        });
        let side = sidecar(mesh.dir.path(), &gateway, "gateway");
        let config = format!(
            "{}listeners:\n  - name: mqtts\n    bind: 127.0.0.1:0\n    protocol: mqtt\n    tls: {{ mesh: true }}\n    access: {{ allow: [ sensor.default ] }}\n    routes:\n      - cluster: broker\nclusters:\n  - name: broker\n    endpoints: [ \"{}\" ]\n",
            identity_block(&side, &mesh.ca_file),
            broker.addr()
        );
        let proxy = TestProxy::start(&config);
        let addr = proxy.addr("mqtts");
        let ca = path(&mesh.ca_file);
        let sensor = mesh.sidecar("sensor");
        let (sensor_cert, sensor_key) = (path(&sensor.cert), path(&sensor.key));
        let intruder = mesh.sidecar("intruder");
        let (intruder_cert, intruder_key) = (path(&intruder.cert), path(&intruder.key));
        for version in MqttVersion::ALL {
            let allowed = ClientOptions::default().version(version).tls(&ca, Some((&sensor_cert, &sensor_key)));
            let subscriber = Subscriber::start(addr, &allowed.clone().id("dashboard"), "plant/#", &[]).await;
            let published = try_publish(addr, &allowed.clone().id("sensor-1"), "plant/temp", "21.5", false).await;
            assert!(published.success(), "{version:?}: {published:?}");
            let messages = subscriber.wait_messages(1, Duration::from_secs(10)).await;
            assert_eq!(messages[0].payload, "21.5", "{version:?}");

            // Another mesh identity: CONNACK "not authorized".
            let refused = ClientOptions::default().version(version).tls(&ca, Some((&intruder_cert, &intruder_key)));
            let output = try_publish(addr, &refused.id("intruder-1"), "plant/temp", "0", false).await;
            assert!(!output.success(), "{version:?}: the intruder published: {output:?}");
            // No client certificate: the handshake fails.
            let anonymous = ClientOptions::default().version(version).tls(&ca, None);
            assert!(!try_publish(addr, &anonymous.id("anon"), "plant/temp", "0", false).await.success());
        }
        assert_eq!(proxy.metric("edgeplane_access_denied_total", &[("reason", "mqtt")]).await, Some(3.0));
        assert!(
            proxy.metric("edgeplane_mqtt_rejections_total", &[("reason", "identity_denied")]).await >= Some(3.0)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_relays_megabytes_both_ways_over_mtls_on_both_sides() {
    guard(async {
        let mesh = Mesh::new();
        let echo = TcpEcho::start().await;
        let store = mesh.sidecar("db");
        let inbound = TestProxy::start(&format!(
            "{}listeners:\n  - name: inbound\n    bind: 127.0.0.1:0\n    protocol: tcp\n    tls: {{ mesh: true }}\n    access: {{ allow: [ api.default ] }}\n    routes:\n      - cluster: db\nclusters:\n  - name: db\n    endpoints: [ \"{}\" ]\n",
            identity_block(&store, &mesh.ca_file),
            echo.addr()
        ));
        let outbound = TestProxy::start(&format!(
            "{}listeners:\n  - name: outbound\n    bind: 127.0.0.1:0\n    protocol: tcp\n    routes:\n      - cluster: db\nclusters:\n  - name: db\n    endpoints: [ \"{}\" ]\n    tls: {{ mesh: true, identities: [ db.default ] }}\n",
            identity_block(&mesh.sidecar("api"), &mesh.ca_file),
            inbound.addr("inbound")
        ));
        let payload = edgeplane_tests::upstream::bytes_pattern(4_000_000);
        let stream = tokio::net::TcpStream::connect(outbound.addr("outbound")).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            write.write_all(&sent).await.unwrap();
            write.shutdown().await.unwrap();
        });
        let mut received = Vec::with_capacity(payload.len());
        read.read_to_end(&mut received).await.unwrap();
        writer.await.unwrap();
        assert_eq!(received.len(), payload.len());
        assert!(received == payload, "bytes differ after the mTLS round trip");
    })
    .await;
}
