//! TLS end to end: termination with SNI and ALPN (curl, openssl s_client,
//! rustls), versions and cipher suites, resumption, passthrough by SNI,
//! origination to HTTPS upstreams, bad input on TLS ports. Certificates are
//! made at test time (rcgen).

use std::path::Path;
use std::time::Duration;

use edgeplane_tests::harness::{cluster, guard, TestProxy};
use edgeplane_tests::pki::{self, Ca};
use edgeplane_tests::tools::{args, run, stderr, stdout};
use edgeplane_tests::upstream::{HttpProto, HttpUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const INSTALL: &str = "apt-get install -y curl openssl";

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A `certificates` entry for `name.crt` / `name.key` in `dir`.
fn cert_entry(dir: &Path, name: &str, extra: &str) -> String {
    format!(
        "        - cert: {{ file: {} }}\n          key: {{ file: {} }}\n{extra}",
        path(&dir.join(format!("{name}.crt"))),
        path(&dir.join(format!("{name}.key")))
    )
}

fn hello_listener(tls: &str) -> String {
    format!(
        "listeners:\n  - name: https\n    bind: 127.0.0.1:0\n    tls:\n{tls}    routes:\n      - direct_response: {{ status: 200, body: \"hello over tls\\n\" }}\n"
    )
}

async fn curl(extra: &[String]) -> std::process::Output {
    let mut list = args(&["-sS", "--max-time", "20", "-w", "\n%{http_code} %{http_version}"]);
    list.extend(extra.iter().cloned());
    run("curl", &list, INSTALL).await
}

fn resolve(name: &str, port: u16) -> Vec<String> {
    vec!["--resolve".into(), format!("{name}:{port}:127.0.0.1"), format!("https://{name}:{port}/")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_the_certificate_and_unknown_names_are_refused() {
    guard(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("edge test CA");
        let ca_file = pki::write_pem(dir.path(), "ca.pem", &ca.pem());
        ca.server(&["a.example.com"]).write(dir.path(), "a");
        ca.server(&["b.example.com", "*.b.example.com"]).write(dir.path(), "b");
        let tls =
            format!("      certificates:\n{}{}", cert_entry(dir.path(), "a", ""), cert_entry(dir.path(), "b", ""));
        let proxy = TestProxy::start(&hello_listener(&tls));
        let port = proxy.addr("https").port();
        let cafile = vec!["--cacert".to_string(), path(&ca_file)];

        // Each name is served the certificate that names it: curl verifies.
        for name in ["a.example.com", "b.example.com", "x.b.example.com"] {
            let output = curl(&[cafile.clone(), resolve(name, port)].concat()).await;
            assert!(output.status.success(), "{name}: {}", stderr(&output));
            assert!(stdout(&output).starts_with("hello over tls\n\n200 2"), "{name}: {}", stdout(&output));
        }
        // No certificate for this name and no default: the handshake fails.
        let output = curl(&[vec!["-k".to_string()], resolve("c.example.com", port)].concat()).await;
        assert!(!output.status.success(), "unknown SNI was served: {}", stdout(&output));
        let refused = proxy.metric("edgeplane_tls_handshakes_total", &[("listener", "https")]).await;
        assert!(refused.is_some());
        assert!(
            proxy.metric("edgeplane_tls_handshakes_total", &[("reason", "ok")]).await.unwrap_or(0.0) >= 3.0,
            "successful handshakes counted"
        );
        let failed = proxy.metric("edgeplane_tls_handshakes_total", &[("reason", "unknown_server_name")]).await;
        let generic = proxy.metric("edgeplane_tls_handshakes_total", &[("reason", "handshake_error")]).await;
        assert!(failed.unwrap_or(0.0) + generic.unwrap_or(0.0) >= 1.0, "refused handshake counted");

        // With a default, unknown names (and clients without SNI) get it.
        let tls = format!(
            "      certificates:\n{}{}",
            cert_entry(dir.path(), "a", "          default: true\n"),
            cert_entry(dir.path(), "b", "")
        );
        proxy.reload(&hello_listener(&tls)).await.expect("reload");
        let output = curl(&[vec!["-k".to_string()], resolve("c.example.com", port)].concat()).await;
        assert!(output.status.success(), "default certificate: {}", stderr(&output));
        // ...and it is a's certificate, which curl refuses for that name.
        let output = curl(&[cafile.clone(), resolve("c.example.com", port)].concat()).await;
        assert!(!output.status.success(), "a's certificate accepted for c.example.com");
        let (status, body) =
            pki::https_get(proxy.addr("https"), "a.example.com", pki::client_config(&ca.pem(), None, &[]), "/")
                .await
                .expect("rustls client");
        assert_eq!((status, body.as_str()), (200, "hello over tls\n"));

        // `/certs` lists both with their names and expiry.
        let (_, certs) = proxy.admin_get("/certs").await;
        let certs: serde_json::Value = serde_json::from_str(&certs).unwrap();
        let list = certs["certificates"].as_array().unwrap();
        assert_eq!(list.len(), 2, "{certs}");
        assert_eq!(list[0]["names"][0], "a.example.com");
        assert!(list[0]["seconds_left"].as_i64().unwrap() > 86_400);
        assert!(proxy
            .metric("edgeplane_tls_certificate_expiry_timestamp_seconds", &[("used_by", "listener https")])
            .await
            .is_some());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_chooses_http2_or_http1_in_front_of_an_upstream() {
    guard(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("edge test CA");
        let ca_file = pki::write_pem(dir.path(), "ca.pem", &ca.pem());
        ca.server(&["app.example.com"]).write(dir.path(), "app");
        let upstream = HttpUpstream::start("app", HttpProto::Http1).await;
        let proxy = TestProxy::start(&format!(
            "listeners:\n  - name: https\n    bind: 127.0.0.1:0\n    tls:\n      certificates:\n{}    routes:\n      - cluster: app\nclusters:\n{}",
            cert_entry(dir.path(), "app", ""),
            cluster("app", &[upstream.addr()])
        ));
        let port = proxy.addr("https").port();
        for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
            let output =
                curl(&[vec![flag.to_string(), "--cacert".into(), path(&ca_file)], resolve("app.example.com", port)].concat())
                    .await;
            assert!(output.status.success(), "{flag}: {}", stderr(&output));
            let text = stdout(&output);
            let (body, trailer) = text.rsplit_once('\n').unwrap();
            assert_eq!(trailer, format!("200 {version}"), "{flag}");
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(json["upstream"], "app");
            assert_eq!(json["headers"]["x-forwarded-proto"], "https", "{json}");
        }
        assert_eq!(proxy.metric("edgeplane_downstream_connections_total", &[("protocol", "http2")]).await, Some(1.0));
        assert_eq!(proxy.metric("edgeplane_downstream_connections_total", &[("protocol", "http1")]).await, Some(1.0));
        // A TLS client without ALPN goes through detection (HTTP/1 here).
        let (status, body) = pki::https_get(
            proxy.addr("https"),
            "app.example.com",
            pki::client_config(&ca.pem(), None, &[]),
            "/plain",
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"/plain\""), "{body}");
    })
    .await;
}

async fn s_client(port: u16, extra: &[&str], ca_file: &Path) -> (bool, String) {
    let mut list = args(&["s_client", "-connect"]);
    list.push(format!("127.0.0.1:{port}"));
    list.extend(args(&["-servername", "a.example.com", "-brief", "-verify_return_error", "-CAfile"]));
    list.push(path(ca_file));
    list.extend(args(extra));
    let output = run("openssl", &list, INSTALL).await;
    (output.status.success(), format!("{}{}", stdout(&output), stderr(&output)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_sees_the_configured_versions_and_suites() {
    guard(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("edge test CA");
        let ca_file = pki::write_pem(dir.path(), "ca.pem", &ca.pem());
        ca.server(&["a.example.com"]).write(dir.path(), "a");
        let entry = cert_entry(dir.path(), "a", "");
        let proxy = TestProxy::start(&format!(
            "listeners:\n  - name: only13\n    bind: 127.0.0.1:0\n    tls:\n      min_version: \"1.3\"\n      certificates:\n{entry}    routes:\n      - direct_response: {{ status: 200 }}\n  - name: suites\n    bind: 127.0.0.1:0\n    tls:\n      cipher_suites: [TLS13_CHACHA20_POLY1305_SHA256, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n      certificates:\n{entry}    routes:\n      - direct_response: {{ status: 200 }}\n"
        ));
        let only13 = proxy.addr("only13").port();
        let (ok, text) = s_client(only13, &["-tls1_3"], &ca_file).await;
        assert!(ok && text.contains("Protocol version: TLSv1.3"), "{text}");
        let (ok, text) = s_client(only13, &["-tls1_2"], &ca_file).await;
        assert!(!ok, "TLS 1.2 accepted by a 1.3-only listener: {text}");
        assert!(
            proxy.metric("edgeplane_tls_handshakes_total", &[("listener", "only13"), ("reason", "incompatible")]).await
                >= Some(1.0),
            "refused version counted"
        );

        let suites = proxy.addr("suites").port();
        let (ok, text) = s_client(suites, &["-tls1_3"], &ca_file).await;
        assert!(ok && text.contains("TLS_CHACHA20_POLY1305_SHA256"), "{text}");
        let (ok, text) = s_client(suites, &["-tls1_2"], &ca_file).await;
        assert!(ok && text.contains("ECDHE-ECDSA-AES256-GCM-SHA384"), "{text}");
        let (ok, text) = s_client(suites, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"], &ca_file).await;
        assert!(!ok, "a suite outside the list was negotiated: {text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_unless_turned_off() {
    guard(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("edge test CA");
        ca.server(&["a.example.com"]).write(dir.path(), "a");
        let entry = cert_entry(dir.path(), "a", "");
        let proxy = TestProxy::start(&format!(
            "listeners:\n  - name: on\n    bind: 127.0.0.1:0\n    tls:\n      certificates:\n{entry}    routes:\n      - direct_response: {{ status: 200 }}\n  - name: off\n    bind: 127.0.0.1:0\n    tls:\n      session_resumption: false\n      certificates:\n{entry}    routes:\n      - direct_response: {{ status: 200 }}\n"
        ));
        for (listener, resumes) in [("on", true), ("off", false)] {
            // One client config: its session store carries tickets over.
            let config = pki::client_config(&ca.pem(), None, &["http/1.1"]);
            let (status, _) = pki::https_get(proxy.addr(listener), "a.example.com", config.clone(), "/").await.unwrap();
            assert_eq!(status, 200);
            let second = pki::connect(proxy.addr(listener), "a.example.com", config).await.unwrap();
            let kind = second.get_ref().1.handshake_kind();
            assert_eq!(kind == Some(rustls::HandshakeKind::Resumed), resumes, "{listener}: {kind:?}");
        }
    })
    .await;
}

/// Reads until the peer closes (or 5 s pass): what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await;
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_a_tls_port_is_refused_and_counted() {
    guard(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("edge test CA");
        ca.server(&["a.example.com"]).write(dir.path(), "a");
        let tls = format!("      handshake_timeout: 300ms\n      certificates:\n{}", cert_entry(dir.path(), "a", ""));
        let proxy = TestProxy::start(&hello_listener(&tls));
        let addr = proxy.addr("https");

        // Plain HTTP: no HTTP answer, the connection ends.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        let answer = read_until_closed(&mut plain).await;
        assert!(!answer.starts_with(b"HTTP/"), "plain HTTP answered: {:?}", String::from_utf8_lossy(&answer));
        // Garbage.
        let mut garbage = TcpStream::connect(addr).await.unwrap();
        garbage.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x02, 0x03]).await.unwrap();
        garbage.write_all(&[0xab; 300]).await.unwrap();
        read_until_closed(&mut garbage).await;
        // A truncated ClientHello, then the client half-closes.
        let mut truncated = TcpStream::connect(addr).await.unwrap();
        truncated.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]).await.unwrap();
        truncated.shutdown().await.unwrap();
        read_until_closed(&mut truncated).await;
        // A client that never speaks: cut at the handshake timeout.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        read_until_closed(&mut silent).await;

        // Others are served all along.
        let (status, body) =
            pki::https_get(addr, "a.example.com", pki::client_config(&ca.pem(), None, &[]), "/").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "hello over tls\n"));

        let count = |reason: &'static str| {
            let proxy = &proxy;
            async move { proxy.metric("edgeplane_tls_handshakes_total", &[("reason", reason)]).await.unwrap_or(0.0) }
        };
        assert!(count("not_tls").await >= 2.0, "plain HTTP and garbage are not TLS");
        assert!(count("closed").await >= 1.0, "the truncated hello ended in EOF");
        assert!(count("timeout").await >= 1.0, "the silent client timed out");
        assert_eq!(count("ok").await, 1.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_routes_by_sni_without_decrypting() {
    guard(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("edge test CA");
        let ca_file = pki::write_pem(dir.path(), "ca.pem", &ca.pem());
        let a = HttpUpstream::start_tls("A", HttpProto::Http1, pki::server_config(&ca.server(&["a.example.com"]), None, &[]))
            .await;
        let b = HttpUpstream::start_tls(
            "B",
            HttpProto::Http1,
            pki::server_config(&ca.server(&["b.example.com", "*.c.example.com"]), None, &[]),
        )
        .await;
        let proxy = TestProxy::start(&format!(
            "listeners:\n  - name: edge\n    bind: 127.0.0.1:0\n    protocol: tcp\n    tls: {{ mode: passthrough }}\n    routes:\n      - match: {{ sni: a.example.com }}\n        cluster: a\n      - match: {{ sni: b.example.com }}\n        cluster: b\n      - match: {{ sni: \"*.c.example.com\" }}\n        cluster: b\nclusters:\n{}{}",
            cluster("a", &[a.addr()]),
            cluster("b", &[b.addr()])
        ));
        let port = proxy.addr("edge").port();
        for (name, upstream) in [("a.example.com", "A"), ("b.example.com", "B"), ("x.c.example.com", "B")] {
            // curl verifies the upstream's own certificate: nothing in between decrypted.
            let output = curl(&[vec!["--cacert".into(), path(&ca_file)], resolve(name, port)].concat()).await;
            assert!(output.status.success(), "{name}: {}", stderr(&output));
            let text = stdout(&output);
            let json: serde_json::Value = serde_json::from_str(text.rsplit_once('\n').unwrap().0).unwrap();
            assert_eq!(json["upstream"], upstream, "{name}");
        }
        // No route for the name: closed.
        let output = curl(&[vec!["-k".into()], resolve("d.example.com", port)].concat()).await;
        assert!(!output.status.success());
        // Not TLS: closed without a byte.
        let mut plain = TcpStream::connect(proxy.addr("edge")).await.unwrap();
        plain.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        assert!(read_until_closed(&mut plain).await.is_empty());
        assert!(proxy.metric("edgeplane_tls_handshakes_total", &[("reason", "not_tls")]).await >= Some(1.0));
        assert_eq!(a.requests() + b.requests(), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origination_verifies_the_upstream_and_presents_a_client_certificate() {
    guard(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("upstream CA");
        let other = Ca::new("someone else's CA");
        let ca_file = pki::write_pem(dir.path(), "ca.pem", &ca.pem());
        let other_file = pki::write_pem(dir.path(), "other.pem", &other.pem());
        let server = ca.server(&["api.internal"]);
        let plain_tls =
            HttpUpstream::start_tls("api", HttpProto::Auto, pki::server_config(&server, None, &["h2", "http/1.1"]))
                .await;
        let mtls =
            HttpUpstream::start_tls("mtls-api", HttpProto::Http1, pki::server_config(&server, Some(&ca.pem()), &[]))
                .await;
        let client = ca.issue(&pki::Leaf { cn: "edge-gateway", dns: &["edge-gateway"], ..Default::default() });
        let (client_cert, client_key) = client.write(dir.path(), "client");
        let tls = |extra: &str| {
            format!("    tls: {{ ca: {{ file: {} }}, server_name: api.internal{extra} }}\n", path(&ca_file))
        };
        let routes = ["h1", "h2", "wrong-ca", "wrong-name", "mtls", "mtls-no-cert"]
            .map(|name| format!("      - match: {{ path: {{ prefix: /{name}/ }} }}\n        cluster: {name}\n"))
            .concat();
        let config = format!(
            "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    routes:\n{routes}clusters:\n{}{}{}{}{}{}",
            cluster("h1", &[plain_tls.addr()]) + &tls(""),
            cluster("h2", &[plain_tls.addr()]) + "    protocol: http2\n" + &tls(""),
            cluster("wrong-ca", &[plain_tls.addr()])
                + &format!("    tls: {{ ca: {{ file: {} }}, server_name: api.internal }}\n", path(&other_file)),
            cluster("wrong-name", &[plain_tls.addr()])
                + &format!("    tls: {{ ca: {{ file: {} }}, server_name: db.internal }}\n", path(&ca_file)),
            cluster("mtls", &[mtls.addr()])
                + &tls(&format!(", cert: {{ file: {} }}, key: {{ file: {} }}", path(&client_cert), path(&client_key))),
            cluster("mtls-no-cert", &[mtls.addr()]) + &tls(""),
        );
        let proxy = TestProxy::start(&config);
        let web = proxy.addr("web");
        let get = |path: &'static str| async move {
            let (status, _, body) = edgeplane_tests::client::get(web, "gateway", path).await;
            (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
        };
        let (status, body) = get("/h1/x").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"version\":\"HTTP/1.1\""), "{body}");
        let (status, body) = get("/h2/x").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"version\":\"HTTP/2.0\""), "ALPN h2 to the upstream: {body}");
        assert_eq!(get("/wrong-ca/x").await.0, 502, "an upstream of an unknown CA is refused");
        assert_eq!(get("/wrong-name/x").await.0, 502, "an upstream with another name is refused");
        let (status, body) = get("/mtls/x").await;
        assert_eq!(status, 200, "client certificate presented: {body}");
        assert_eq!(get("/mtls-no-cert/x").await.0, 502, "the upstream wants a client certificate");
        assert!(
            proxy
                .metric("edgeplane_upstream_connect_errors_total", &[("cluster", "wrong-ca"), ("reason", "tls")])
                .await
                >= Some(1.0)
        );
        assert!(
            proxy.metric("edgeplane_tls_upstream_handshake_errors_total", &[("cluster", "wrong-name")]).await
                >= Some(1.0)
        );
        // Pooled TLS connections are reused.
        let before = plain_tls.connections();
        for _ in 0..5 {
            assert_eq!(get("/h1/again").await.0, 200);
        }
        assert!(plain_tls.connections() <= before + 1, "{} new connections", plain_tls.connections() - before);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_certificates_are_refused_at_load_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("edge test CA");
    ca.server(&["a.example.com"]).write(dir.path(), "a");
    let expired = ca.issue(&pki::Leaf { cn: "old", dns: &["old.example.com"], expired: true, ..Default::default() });
    expired.write(dir.path(), "old");
    let other = ca.server(&["b.example.com"]);
    std::fs::write(dir.path().join("mismatch.crt"), &other.cert_pem).unwrap();
    std::fs::write(dir.path().join("mismatch.key"), ca.server(&["c"]).key_pem).unwrap();
    std::fs::write(dir.path().join("empty.crt"), "not a certificate\n").unwrap();
    std::fs::write(dir.path().join("empty.key"), &other.key_pem).unwrap();
    for (name, expected) in [
        ("old", "certificate expired at 2020-01-01T00:00:00Z"),
        ("mismatch", "the private key does not belong to the certificate"),
        ("empty", "no certificate found"),
        ("missing", "No such file"),
    ] {
        let tls = format!("      certificates:\n{}", cert_entry(dir.path(), name, ""));
        let error = match TestProxy::try_start(&hello_listener(&tls), 1) {
            Ok(_) => panic!("{name}: started"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("listeners[0].tls.certificates[0]"), "{name}: {error}");
        assert!(error.contains(expected), "{name}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_to_https() {
    guard(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("edge test CA");
        let ca_file = pki::write_pem(dir.path(), "ca.pem", &ca.pem());
        ca.server(&["a.example.com"]).write(dir.path(), "a");
        let config = |port: u16| {
            format!(
                "listeners:\n  - name: plain\n    bind: 127.0.0.1:0\n    http: {{ redirect_https: {{ port: {port}, status: 308 }} }}\n    routes: [ {{ direct_response: {{ status: 200, body: plain }} }} ]\n  - name: https\n    bind: 127.0.0.1:0\n    tls:\n      certificates:\n{}    routes:\n      - direct_response: {{ status: 200, body: \"hello over tls\\n\" }}\n",
                cert_entry(dir.path(), "a", "")
            )
        };
        let proxy = TestProxy::start(&config(8443));
        let https_port = proxy.addr("https").port();
        proxy.reload(&config(https_port)).await.expect("reload");
        let plain_port = proxy.addr("plain").port();
        let url = format!("http://a.example.com:{plain_port}/x?y=1");
        let output = curl(&[
            "-D".into(), "-".into(), "--resolve".into(), format!("a.example.com:{plain_port}:127.0.0.1"), url.clone(),
        ])
        .await;
        let text = stdout(&output);
        assert!(text.starts_with("HTTP/1.1 308"), "{text}");
        assert!(text.contains(&format!("location: https://a.example.com:{https_port}/x?y=1")), "{text}");
        // curl follows it to the TLS listener.
        let output = curl(&[
            "-L".into(),
            "--cacert".into(),
            path(&ca_file),
            "--resolve".into(),
            format!("a.example.com:{plain_port}:127.0.0.1"),
            "--resolve".into(),
            format!("a.example.com:{https_port}:127.0.0.1"),
            url,
        ])
        .await;
        assert!(stdout(&output).starts_with("hello over tls\n"), "{}", stdout(&output));
        assert_eq!(proxy.metric("edgeplane_http_local_replies_total", &[("listener", "plain"), ("reason", "https_redirect")]).await, Some(2.0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_cross_tls_on_both_sides() {
    guard(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("edge test CA");
        let ca_file = pki::write_pem(dir.path(), "ca.pem", &ca.pem());
        ca.server(&["app.example.com"]).write(dir.path(), "app");
        let server = ca.server(&["api.internal"]);
        let upstream = HttpUpstream::start_tls("api", HttpProto::Http1, pki::server_config(&server, None, &[])).await;
        let proxy = TestProxy::start(&format!(
            "listeners:\n  - name: https\n    bind: 127.0.0.1:0\n    tls:\n      certificates:\n{}    routes:\n      - cluster: api\nclusters:\n{}    tls: {{ ca: {{ file: {} }}, server_name: api.internal }}\n",
            cert_entry(dir.path(), "app", ""),
            cluster("api", &[upstream.addr()]),
            path(&ca_file)
        ));
        let port = proxy.addr("https").port();
        let body = dir.path().join("body.bin");
        std::fs::write(&body, edgeplane_tests::upstream::bytes_pattern(3_000_000)).unwrap();
        let echoed = dir.path().join("echoed.bin");
        for version in ["--http1.1", "--http2"] {
            // Downstream TLS, upstream TLS, 8 MB down.
            let mut list = vec![version.to_string(), "--cacert".into(), path(&ca_file), "-o".into(), "/dev/null".into()];
            list.extend(["-w".into(), "%{size_download}".into(), "--resolve".into(), format!("app.example.com:{port}:127.0.0.1")]);
            list.push(format!("https://app.example.com:{port}/bytes/8000000"));
            let output = run("curl", &[args(&["-sS", "--max-time", "60"]), list].concat(), INSTALL).await;
            assert!(output.status.success(), "{version}: {}", stderr(&output));
            assert_eq!(stdout(&output), "8000000", "{version}");
            // And 3 MB up, echoed back.
            let mut list = vec![version.to_string(), "--cacert".into(), path(&ca_file), "--data-binary".into()];
            list.push(format!("@{}", path(&body)));
            list.extend(["-o".into(), path(&echoed), "--resolve".into(), format!("app.example.com:{port}:127.0.0.1")]);
            list.push(format!("https://app.example.com:{port}/echo"));
            let output = run("curl", &[args(&["-sS", "--max-time", "60"]), list].concat(), INSTALL).await;
            assert!(output.status.success(), "{version}: {}", stderr(&output));
            assert!(std::fs::read(&echoed).unwrap() == std::fs::read(&body).unwrap(), "{version}: echo differs");
        }
    })
    .await;
}
