//! JWT verification end to end: tokens minted by the `jsonwebtoken` crate
//! (ES256 from an rcgen key, HS256), sent by curl and a plain client through
//! the proxy to a real upstream; refusals answer 401 with `WWW-Authenticate`.

use std::time::{SystemTime, UNIX_EPOCH};

use edgeplane_tests::harness::{cluster, guard, TestProxy};
use edgeplane_tests::tools::{args, run, stdout};
use edgeplane_tests::upstream::{HttpProto, HttpUpstream};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-shared";

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

struct Keys {
    ec: EncodingKey,
    hmac: EncodingKey,
    jwks: String,
}

fn keys() -> Keys {
    let pair = rcgen::KeyPair::generate().unwrap();
    let point = pair.public_key_raw();
    assert_eq!(point.len(), 65, "uncompressed P-256 point");
    let jwks = json!({ "keys": [
        { "kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256", "use": "sig",
          "x": b64url(&point[1..33]), "y": b64url(&point[33..]) },
        { "kty": "oct", "kid": "hmac-1", "alg": "HS256", "k": b64url(SECRET) },
    ]});
    Keys {
        ec: EncodingKey::from_ec_der(&pair.serialize_der()),
        hmac: EncodingKey::from_secret(SECRET).unwrap(),
        jwks: jwks.to_string(),
    }
}

fn token(key: &EncodingKey, alg: Algorithm, kid: &str, claims: serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    encode(&header, &claims, key).unwrap()
}

async fn curl_get(addr: std::net::SocketAddr, headers: &[String]) -> (u16, String, String) {
    let mut list = args(&["-sS", "--max-time", "20", "-D", "-"]);
    for header in headers {
        list.push("-H".into());
        list.push(header.clone());
    }
    list.push(format!("http://{addr}/api/books"));
    let output = run("curl", &list, "apt-get install -y curl").await;
    let text = stdout(&output);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_verified_and_claims_forwarded() {
    guard(async {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys();
        let jwks_file = dir.path().join("jwks.json");
        std::fs::write(&jwks_file, &keys.jwks).unwrap();
        let upstream = HttpUpstream::start("api", HttpProto::Http1).await;
        let proxy = TestProxy::start(&format!(
            "listeners:\n  - name: edge\n    bind: 127.0.0.1:0\n    routes:\n      - match: {{ path: {{ prefix: /api/ }} }}\n        cluster: api\n        jwt:\n          issuer: https://issuer.example\n          audiences: [ books ]\n          algorithms: [ ES256, HS256 ]\n          keys: {{ jwks_file: {} }}\n          from: [ {{ header: authorization, prefix: \"Bearer \" }}, {{ cookie: session }} ]\n          forward_claims: {{ sub: x-jwt-sub, tier: x-jwt-tier }}\n          forward_token: false\nclusters:\n{}",
            jwks_file.display(),
            cluster("api", &[upstream.addr()])
        ));
        let addr = proxy.addr("edge");
        let claims = |exp: i64, aud: &str| json!({ "iss": "https://issuer.example", "aud": aud, "sub": "alice", "exp": exp, "tier": 3 });
        let bearer = |token: String| format!("authorization: Bearer {token}");

        // Valid ES256 and HS256 tokens: 200; claims forwarded, the token not.
        for token in [
            token(&keys.ec, Algorithm::ES256, "ec-1", claims(now() + 300, "books")),
            token(&keys.hmac, Algorithm::HS256, "hmac-1", claims(now() + 300, "books")),
        ] {
            let (status, _, body) = curl_get(addr, &[bearer(token), "x-jwt-tier: spoofed".into()]).await;
            assert_eq!(status, 200, "{body}");
            let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(seen["headers"]["x-jwt-sub"], "alice", "{seen}");
            assert_eq!(seen["headers"]["x-jwt-tier"], "3", "the client's own claim header is replaced: {seen}");
            assert!(seen["headers"].get("authorization").is_none(), "token forwarded: {seen}");
        }
        // From the cookie.
        let cookie = format!("cookie: theme=dark; session={}", token(&keys.ec, Algorithm::ES256, "ec-1", claims(now() + 300, "books")));
        assert_eq!(curl_get(addr, &[cookie]).await.0, 200);

        // Refusals: 401 with a WWW-Authenticate saying why, never upstream.
        let served = upstream.requests();
        let mut tampered = token(&keys.ec, Algorithm::ES256, "ec-1", claims(now() + 300, "books"));
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        let cases = [
            (vec![], "bearer realm=\"edgeplane\""),
            (vec![bearer(token(&keys.ec, Algorithm::ES256, "ec-1", claims(now() - 3600, "books")))], "error=\"invalid_token\""),
            (vec![bearer(token(&keys.ec, Algorithm::ES256, "ec-1", claims(now() + 300, "other")))], "error=\"invalid_token\""),
            (vec![bearer(tampered)], "error=\"invalid_token\""),
            (vec![bearer(token(&keys.ec, Algorithm::ES256, "no-such-key", claims(now() + 300, "books")))], "error=\"invalid_token\""),
            (vec![bearer("not.a.jwt".into())], "error=\"invalid_token\""),
        ];
        for (headers, expected) in cases {
            let (status, head, body) = curl_get(addr, &headers).await;
            assert_eq!(status, 401, "{headers:?}: {body}");
            let www = head.lines().find(|line| line.starts_with("www-authenticate:")).unwrap_or_default();
            assert!(www.contains(expected), "{headers:?}: {www}");
        }
        assert_eq!(upstream.requests(), served, "a refused request reached the upstream");
        assert!(proxy.metric("edgeplane_http_local_replies_total", &[("reason", "unauthorized")]).await >= Some(6.0));
    })
    .await;
}
