#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The JWKS document on the plain-HTTP admin port verifies identity's access tokens.

use crate::common;

use carehub_platform::jwt;
use common::PASSWORD;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn jwks_verifies_issued_tokens() {
    let app = common::spawn().await;
    app.register_patient("quinn@example.org", PASSWORD).await;
    let t = app.login("quinn@example.org", PASSWORD).await;

    let (head, body) = http_get(app.admin_http_addr(), "/.well-known/jwks.json").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    // The body may be chunked; the JSON object sits between the outer braces.
    let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let doc: serde_json::Value = serde_json::from_str(json).unwrap();
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    assert_eq!(k["kty"], "OKP");
    assert_eq!(k["crv"], "Ed25519");
    assert_eq!(k["alg"], "EdDSA");
    assert_eq!(k["use"], "sig");
    assert_eq!(
        k["kid"].as_str().unwrap(),
        jwt::key_id(&t.access_token).unwrap()
    );
    let key = jwt::key_from_jwk_x(k["x"].as_str().unwrap()).unwrap();
    let state = app.state();
    let claims = jwt::verify(
        &t.access_token,
        &key,
        &state.auth.issuer,
        &state.auth.audience,
        chrono::Utc::now().timestamp(),
    )
    .unwrap();
    assert_eq!(claims.sid, t.session_id);
    // No private material is published.
    assert!(!json.contains("\"d\""));
    app.shutdown().await;
}
