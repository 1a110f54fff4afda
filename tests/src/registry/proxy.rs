//! A fault-injecting HTTP proxy between a registry client and a real
//! registry: it forwards requests one per connection (HTTP/1.0 upstream, so
//! bodies are plain and end at EOF) and, for requests whose path matches a
//! rule, drops the connection, waits, truncates or corrupts the body,
//! answers a status of its own, ignores `Range`, or redirects elsewhere.
//!
//! It can also stand in front of an auth-less registry as a bearer-token
//! gate with its own token endpoint (`/token`): every `/v2/` request needs a
//! token it issued and has not expired, as with a registry in `auth.token`
//! mode (which [`super::token`] drives for real), but with tokens the test
//! can expire at any moment and faults on the same requests.

use anyhow::{Context, Result};
use base64::Engine as _;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What to do to a matching request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Close the connection without answering.
    Drop,
    /// Wait this long, then forward as usual (a slow registry).
    Delay(Duration),
    /// Send the headers (with the full Content-Length) and only this many
    /// body bytes, then close.
    Truncate(usize),
    /// Flip the bits of the body byte at this offset.
    Corrupt(usize),
    /// Answer this status without asking the registry (429 with
    /// `Retry-After: 1`).
    Status(u16),
    /// Answer 401 with a challenge, as for an expired token.
    Unauthorized,
    /// Forward without the `Range` header: the registry answers 200 with the
    /// whole blob, as some registries and caches do.
    IgnoreRange,
    /// Answer 307 to this base URL plus the request's path and query.
    Redirect(String),
}

/// A fault for requests whose path contains `path_contains`, `times` times
/// (`None`: every time).
#[derive(Debug, Clone)]
pub struct Rule {
    /// A substring of the request target.
    pub path_contains: String,
    /// What to do.
    pub fault: Fault,
    /// How many more times.
    pub times: Option<usize>,
}

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET`, …
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    /// The Authorization header, if sent.
    pub authorization: Option<String>,
    /// The Range header, if sent.
    pub range: Option<String>,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
}

#[derive(Debug, Default)]
struct Bearer {
    /// `user:password` the token endpoint wants; `None`: anonymous tokens.
    creds: Option<String>,
    valid: HashSet<String>,
}

#[derive(Debug)]
struct Shared {
    upstream: String,
    addr: String,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    bearer: Option<Mutex<Bearer>>,
    tokens_issued: AtomicU64,
    /// Body bytes sent back for requests with a Range header (layer
    /// chunks) and without one (manifests, configs, whole blobs).
    ranged_bytes: AtomicU64,
    whole_bytes: AtomicU64,
    stop: AtomicBool,
}

/// A running proxy; stops accepting on drop.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Proxy {
    /// A proxy to `upstream` (`host:port`, plain HTTP).
    pub fn start(upstream: &str) -> Result<Proxy> {
        Proxy::spawn("127.0.0.1", upstream, None)
    }

    /// A proxy to `upstream` listening on another local address (e.g.
    /// 127.0.0.2, which a client does not count as "localhost").
    pub fn start_on(ip: &str, upstream: &str) -> Result<Proxy> {
        Proxy::spawn(ip, upstream, None)
    }

    /// A bearer-token gate to `upstream`: tokens from `/token` for
    /// `creds` (`user:password`, checked as Basic auth) or for anyone.
    pub fn start_bearer(upstream: &str, creds: Option<&str>) -> Result<Proxy> {
        Proxy::spawn(
            "127.0.0.1",
            upstream,
            Some(Bearer {
                creds: creds.map(str::to_owned),
                valid: HashSet::new(),
            }),
        )
    }

    fn spawn(ip: &str, upstream: &str, bearer: Option<Bearer>) -> Result<Proxy> {
        let listener = TcpListener::bind((ip, 0))?;
        let addr = listener.local_addr()?.to_string();
        let shared = Arc::new(Shared {
            upstream: upstream.to_owned(),
            addr: addr.clone(),
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            bearer: bearer.map(Mutex::new),
            tokens_issued: AtomicU64::new(0),
            ranged_bytes: AtomicU64::new(0),
            whole_bytes: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    // A client that went away mid-answer is part of the game.
                    let _ = handle(&s, conn);
                });
            }
        });
        Ok(Proxy { shared, addr })
    }

    /// Adds a rule (rules are tried in the order added).
    pub fn add(&self, path_contains: &str, fault: Fault, times: Option<usize>) {
        lock(&self.shared.rules).push(Rule {
            path_contains: path_contains.to_owned(),
            fault,
            times,
        });
    }

    /// Removes every rule.
    pub fn clear(&self) {
        lock(&self.shared.rules).clear();
    }

    /// The requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.shared.seen).clone()
    }

    /// Forgets the requests seen so far (and the bytes counted).
    pub fn forget(&self) {
        lock(&self.shared.seen).clear();
        self.shared.ranged_bytes.store(0, Ordering::Relaxed);
        self.shared.whole_bytes.store(0, Ordering::Relaxed);
    }

    /// Response body bytes forwarded since the start (or the last
    /// [`forget`](Self::forget)): `(with a Range header, without)`, i.e.
    /// layer chunks, and manifests and configs (and whole blobs).
    pub fn body_bytes(&self) -> (u64, u64) {
        (
            self.shared.ranged_bytes.load(Ordering::Relaxed),
            self.shared.whole_bytes.load(Ordering::Relaxed),
        )
    }

    /// Invalidates every token issued (they "expire").
    pub fn expire_tokens(&self) {
        if let Some(b) = &self.shared.bearer {
            lock(b).valid.clear();
        }
    }

    /// Tokens issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.shared.tokens_issued.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

pub(super) struct Request {
    pub(super) method: String,
    pub(super) target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub(super) fn read_request(conn: &TcpStream) -> Result<Request> {
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().context("empty request")?.to_owned();
    let target = parts.next().context("no request target")?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Ok(Request {
        method,
        target,
        headers,
    })
}

pub(super) fn respond(
    conn: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += &format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn challenge(s: &Shared, req: &Request) -> String {
    // The scope a registry would ask for: pull on the repository in the path.
    let scope = req
        .target
        .strip_prefix("/v2/")
        .and_then(|p| {
            ["/manifests/", "/blobs/"]
                .iter()
                .find_map(|m| p.find(m).map(|i| &p[..i]))
        })
        .map(|repo| format!(",scope=\"repository:{repo}:pull\""))
        .unwrap_or_default();
    format!(
        "Bearer realm=\"http://{}/token\",service=\"ocidisk-test\"{scope}",
        s.addr
    )
}

fn handle(s: &Shared, mut conn: TcpStream) -> Result<()> {
    let req = read_request(&conn)?;
    let fault = {
        let mut rules = lock(&s.rules);
        let hit = rules
            .iter_mut()
            .find(|r| req.target.contains(&r.path_contains) && r.times != Some(0));
        hit.map(|r| {
            if let Some(t) = &mut r.times {
                *t -= 1;
            }
            r.fault.clone()
        })
    };
    lock(&s.seen).push(Seen {
        method: req.method.clone(),
        target: req.target.clone(),
        authorization: req.header("authorization").map(str::to_owned),
        range: req.header("range").map(str::to_owned),
        fault: fault.clone(),
    });

    if let Some(bearer) = &s.bearer {
        if req.target.starts_with("/token") {
            let mut b = lock(bearer);
            let ok = match &b.creds {
                None => true,
                Some(c) => {
                    let want = format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(c)
                    );
                    req.header("authorization") == Some(want.as_str())
                }
            };
            if !ok {
                drop(b);
                return respond(&mut conn, 401, &[], br#"{"details":"bad credentials"}"#);
            }
            let n = s.tokens_issued.fetch_add(1, Ordering::Relaxed);
            let token = format!("test-token-{n}");
            b.valid.insert(token.clone());
            drop(b);
            let body = format!(r#"{{"token":"{token}","expires_in":300}}"#);
            return respond(
                &mut conn,
                200,
                &[("Content-Type", "application/json".into())],
                body.as_bytes(),
            );
        }
        let authorized = req
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| lock(bearer).valid.contains(t));
        if !authorized && fault != Some(Fault::Unauthorized) {
            return respond(
                &mut conn,
                401,
                &[("WWW-Authenticate", challenge(s, &req))],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            );
        }
    }

    let mut strip_range = false;
    match &fault {
        Some(Fault::Drop) => {
            let _ = conn.shutdown(Shutdown::Both);
            return Ok(());
        }
        Some(Fault::Status(code)) => {
            let body = format!(
                r#"{{"errors":[{{"code":"INJECTED","message":"fault proxy answered {code}"}}]}}"#
            );
            // A rate limit says when to come back, as registries do.
            let headers = if *code == 429 {
                vec![("Retry-After", "1".to_owned())]
            } else {
                Vec::new()
            };
            return respond(&mut conn, *code, &headers, body.as_bytes());
        }
        Some(Fault::Unauthorized) => {
            let header = if s.bearer.is_some() {
                challenge(s, &req)
            } else {
                "Basic realm=\"ocidisk-test\"".to_owned()
            };
            return respond(&mut conn, 401, &[("WWW-Authenticate", header)], b"{}");
        }
        Some(Fault::Redirect(base)) => {
            return respond(
                &mut conn,
                307,
                &[("Location", format!("{base}{}", req.target))],
                b"",
            );
        }
        Some(Fault::Delay(d)) => std::thread::sleep(*d),
        Some(Fault::IgnoreRange) => strip_range = true,
        _ => {}
    }

    // Forward, one request per upstream connection.
    let mut up = TcpStream::connect(&s.upstream)?;
    let mut head = format!(
        "{} {} HTTP/1.0\r\nHost: {}\r\n",
        req.method, req.target, s.upstream
    );
    for (k, v) in &req.headers {
        let k_l = k.to_ascii_lowercase();
        let skip = matches!(k_l.as_str(), "host" | "connection" | "keep-alive")
            || (k_l == "range" && strip_range)
            || (k_l == "authorization" && s.bearer.is_some());
        if !skip {
            head += &format!("{k}: {v}\r\n");
        }
    }
    head += "\r\n";
    up.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    up.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("upstream answer without a header end")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().context("empty upstream answer")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("upstream status")?;
    let headers: Vec<(&str, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| {
            !matches!(
                k.trim().to_ascii_lowercase().as_str(),
                "connection" | "content-length" | "transfer-encoding" | "keep-alive"
            )
        })
        .map(|(k, v)| (k.trim(), v.trim().to_owned()))
        .collect();
    if let Some(Fault::Corrupt(at)) = fault {
        if let Some(b) = body.get_mut(at) {
            *b ^= 0xff;
        }
    }
    let sent = match fault {
        Some(Fault::Truncate(n)) => n.min(body.len()),
        _ => body.len(),
    } as u64;
    let counter = if req.header("range").is_some() && !strip_range {
        &s.ranged_bytes
    } else {
        &s.whole_bytes
    };
    counter.fetch_add(sent, Ordering::Relaxed);
    if let Some(Fault::Truncate(n)) = fault {
        let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (k, v) in &headers {
            out += &format!("{k}: {v}\r\n");
        }
        out += &format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        conn.write_all(out.as_bytes())?;
        conn.write_all(&body[..n.min(body.len())])?;
        conn.flush()?;
        let _ = conn.shutdown(Shutdown::Both);
        return Ok(());
    }
    respond(&mut conn, status, &headers, &body)
}
