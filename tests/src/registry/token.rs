//! A tiny token server for `docker-registry`'s `auth.token` mode: it checks
//! Basic credentials and issues JWTs (RS256, the signing certificate in the
//! `x5c` header) granting the scopes asked for, signed with a key whose
//! self-signed certificate is the registry's `rootcertbundle`. Keys and
//! signatures are made by the openssl CLI.
//!
//! [`TokenServer::rotate`] replaces the signing key: once the registry is
//! restarted with the new bundle, tokens issued before are refused, which
//! is how a test makes a token "expire" while a client is using it (the
//! registry allows a minute of clock skew past `exp`, too long to wait for).

use super::proxy::{read_request, respond};
use super::{openssl, path_str};
use anyhow::{ensure, Context, Result};
use base64::Engine as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// The issuer the registry is configured to trust.
pub const ISSUER: &str = "ocidisk-test-issuer";
/// The service (token audience) the registry names in its challenges.
pub const SERVICE: &str = "ocidisk-test-registry";

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    /// `user:password`, or `None` for anonymous tokens.
    creds: Option<String>,
    /// The signing certificate (DER, base64) for the `x5c` header.
    x5c: Mutex<String>,
    generation: AtomicU64,
    issued: AtomicU64,
    stop: AtomicBool,
}

/// A running token server; stops accepting on drop.
#[derive(Debug)]
pub struct TokenServer {
    shared: Arc<Shared>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

impl TokenServer {
    /// Makes a signing key in `dir` and starts serving `/token`.
    pub fn start(dir: &Path, creds: Option<&str>) -> Result<TokenServer> {
        std::fs::create_dir_all(dir)?;
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            creds: creds.map(str::to_owned),
            x5c: Mutex::new(String::new()),
            generation: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        new_key(&shared)?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(&s, conn);
                });
            }
        });
        Ok(TokenServer { shared, addr })
    }

    /// The certificate bundle the registry must trust (`rootcertbundle`).
    pub fn bundle(&self) -> PathBuf {
        self.shared.dir.join("bundle.pem")
    }

    /// The realm URL for the registry's config.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> u64 {
        self.shared.issued.load(Ordering::Relaxed)
    }

    /// Signs with a new key from now on and rewrites the bundle (the
    /// registry reads it when it starts).
    pub fn rotate(&self) -> Result<()> {
        new_key(&self.shared)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(&self.addr);
    }
}

fn key_path(s: &Shared) -> PathBuf {
    s.dir.join(format!(
        "signer-{}.key",
        s.generation.load(Ordering::Relaxed)
    ))
}

fn new_key(s: &Shared) -> Result<()> {
    let g = s.generation.fetch_add(1, Ordering::Relaxed) + 1;
    let key = s.dir.join(format!("signer-{g}.key"));
    let cert = s.dir.join(format!("signer-{g}.crt"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN=ocidisk test token signer {g}"),
        "-keyout",
        path_str(&key)?,
        "-out",
        path_str(&cert)?,
    ])?;
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in", path_str(&cert)?])
        .output()
        .context("running openssl")?;
    ensure!(der.status.success(), "openssl x509 -outform DER failed");
    *s.x5c.lock().unwrap_or_else(|p| p.into_inner()) =
        base64::engine::general_purpose::STANDARD.encode(&der.stdout);
    std::fs::copy(&cert, s.dir.join("bundle.pem"))?;
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve(s: &Shared, mut conn: std::net::TcpStream) -> Result<()> {
    let req = read_request(&conn)?;
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    if path != "/token" {
        return respond(&mut conn, 404, &[], b"");
    }
    let user = match &s.creds {
        None => String::new(),
        Some(c) => {
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(c)
            );
            if req.header("authorization") != Some(want.as_str()) {
                return respond(&mut conn, 401, &[], br#"{"details":"bad credentials"}"#);
            }
            c.split_once(':').map_or(c.as_str(), |(u, _)| u).to_owned()
        }
    };
    let mut access = Vec::new();
    let mut service = String::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "service" => service = v,
            "scope" => {
                // repository:NAME:ACTIONS (NAME may hold a port's colon only
                // for registry scopes, which are not asked for here).
                let mut parts = v.splitn(2, ':');
                let typ = parts.next().unwrap_or_default();
                let rest = parts.next().unwrap_or_default();
                if let Some((name, actions)) = rest.rsplit_once(':') {
                    access.push(serde_json::json!({
                        "type": typ,
                        "name": name,
                        "actions": actions.split(',').collect::<Vec<_>>(),
                    }));
                }
            }
            _ => {}
        }
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let n = s.issued.fetch_add(1, Ordering::Relaxed);
    let x5c = s.x5c.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": user,
        "aud": service,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("token-{n}"),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(&serde_json::to_vec(&header)?),
        b64url(&serde_json::to_vec(&claims)?)
    );
    let input = s.dir.join(format!("input-{n}"));
    std::fs::write(&input, &signing_input)?;
    let sig = Command::new("openssl")
        .args(["dgst", "-sha256", "-binary", "-sign"])
        .arg(key_path(s))
        .arg(&input)
        .output()
        .context("running openssl dgst")?;
    ensure!(sig.status.success(), "openssl dgst -sign failed");
    let token = format!("{signing_input}.{}", b64url(&sig.stdout));
    // No issued_at: clients parse it as an RFC 3339 date, and it is optional.
    let body = serde_json::json!({"token": token, "expires_in": 300});
    respond(
        &mut conn,
        200,
        &[("Content-Type", "application/json".into())],
        body.to_string().as_bytes(),
    )
}
