//! A minimal HTTP/1.1 endpoint for the metrics (`--metrics ADDR`) and the
//! client `ocidisk stats` uses to read it.
//!
//! The server is one thread multiplexing its connections with poll(2), so a
//! client that sends slowly or never reads only holds its own connection
//! until its deadline, not the next client. Requests are bounded in size and
//! time; every response closes the connection. Snapshots are read from
//! atomics, so serving never takes a lock the device holds.
//!
//! Routes: `GET /metrics` (Prometheus text), `GET /metrics.json` (the
//! [`Snapshot`](super::Snapshot) JSON), `HEAD` of either; 404 for other
//! paths, 405 for other methods, 400 for malformed requests.

use super::{prometheus, DiskMetrics};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest request head accepted (request line plus headers).
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request and read the response.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;
/// Longest the server sleeps before looking at its stop flag.
const TICK: Duration = Duration::from_millis(100);

/// Where the metrics are served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    /// A loopback TCP address.
    Tcp(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Tcp(a) => write!(f, "{a}"),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Parses `ADDR`: `unix:/path` or anything containing `/` is a unix socket
/// path; otherwise `IP:PORT` or `localhost:PORT`, which must be loopback
/// (the metrics name sockets and disks, and have no authentication).
pub fn parse_addr(addr: &str) -> io::Result<Addr> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    if let Some(path) = addr.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(bad("metrics address unix: needs a socket path".into()));
        }
        return Ok(Addr::Unix(PathBuf::from(path)));
    }
    if addr.contains('/') {
        return Ok(Addr::Unix(PathBuf::from(addr)));
    }
    let sock = match addr.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => match addr.strip_prefix("localhost:").map(str::parse::<u16>) {
            Some(Ok(port)) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            _ => {
                return Err(bad(format!(
                    "metrics address {addr:?} is neither IP:PORT, localhost:PORT nor a unix socket path"
                )))
            }
        },
    };
    if !sock.ip().is_loopback() {
        return Err(bad(format!(
            "metrics address {addr} is not a loopback address: metrics are served only on \
             127.0.0.0/8, [::1] or a unix socket path"
        )));
    }
    Ok(Addr::Tcp(sock))
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(true),
            Stream::Unix(s) => s.set_nonblocking(true),
        }
    }
    fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Listener {
    fn bind(addr: &Addr) -> io::Result<Listener> {
        let named = |e: io::Error| io::Error::new(e.kind(), format!("metrics address {addr}: {e}"));
        let l = match addr {
            Addr::Tcp(a) => Listener::Tcp(TcpListener::bind(a).map_err(named)?),
            Addr::Unix(p) => {
                remove_stale_socket(p).map_err(named)?;
                Listener::Unix(UnixListener::bind(p).map_err(named)?, p.clone())
            }
        };
        match &l {
            Listener::Tcp(t) => t.set_nonblocking(true),
            Listener::Unix(u, _) => u.set_nonblocking(true),
        }
        .map_err(named)?;
        Ok(l)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l, _) => l.as_fd(),
        }
    }

    fn accept(&self) -> io::Result<Stream> {
        Ok(match self {
            Listener::Tcp(l) => Stream::Tcp(l.accept()?.0),
            Listener::Unix(l, _) => Stream::Unix(l.accept()?.0),
        })
    }

    fn local_addr(&self) -> io::Result<Addr> {
        Ok(match self {
            Listener::Tcp(l) => Addr::Tcp(l.local_addr()?),
            Listener::Unix(_, p) => Addr::Unix(p.clone()),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Removes a socket file nobody listens on (left by a killed process);
/// refuses to touch a live socket or anything that is not a socket.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a socket",
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is listening on it",
        )),
        Err(_) => std::fs::remove_file(path),
    }
}

/// A running metrics endpoint; stops (and removes its unix socket) when
/// dropped.
pub struct MetricsServer {
    addr: Addr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// The address served (with the actual port when bound to port 0).
    pub fn local_addr(&self) -> &Addr {
        &self.addr
    }

    /// Stops serving and waits for the thread to end (within ~100 ms).
    #[cfg(test)]
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Serves `metrics` over HTTP on `addr` (see [`parse_addr`]) from a thread
/// of its own. Errors (a bad or non-loopback address, a socket in use) come
/// back before the thread starts.
pub fn serve_http(addr: &str, metrics: Arc<DiskMetrics>) -> io::Result<MetricsServer> {
    let listener = Listener::bind(&parse_addr(addr)?)?;
    let local = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("ocidisk-metrics".into())
            .spawn(move || serve_loop(listener, &metrics, &stop))?
    };
    Ok(MetricsServer {
        addr: local,
        stop,
        thread: Some(thread),
    })
}

struct Conn {
    stream: Stream,
    request: Vec<u8>,
    response: Vec<u8>,
    written: usize,
    /// The response is out; reading (and discarding) until the client
    /// closes, so that unread request bytes do not turn our close into a
    /// reset that destroys the response in flight.
    draining: bool,
    deadline: Instant,
}

enum Progress {
    Open,
    Done,
}

impl Conn {
    fn on_readable(&mut self, metrics: &DiskMetrics) -> Progress {
        let mut buf = [0u8; 2048];
        if self.draining {
            return self.drain(&mut buf);
        }
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Progress::Done, // closed before a full request
                Ok(n) => {
                    let room = MAX_REQUEST + 4 - self.request.len();
                    self.request.extend_from_slice(&buf[..n.min(room)]);
                    if let Some(end) = find_head_end(&self.request) {
                        self.respond(respond(&self.request[..end], metrics));
                        return self.on_writable();
                    }
                    if self.request.len() > MAX_REQUEST {
                        self.respond(simple(
                            431,
                            "Request Header Fields Too Large",
                            "request too large\n",
                        ));
                        return self.on_writable();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Progress::Done,
            }
        }
    }

    fn drain(&mut self, buf: &mut [u8]) -> Progress {
        loop {
            match self.stream.read(buf) {
                Ok(0) => return Progress::Done,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Progress::Done,
            }
        }
    }

    fn respond(&mut self, response: Vec<u8>) {
        self.response = response;
        self.written = 0;
    }

    fn writing(&self) -> bool {
        !self.response.is_empty() && !self.draining
    }

    fn on_writable(&mut self) -> Progress {
        while self.written < self.response.len() {
            match self.stream.write(&self.response[self.written..]) {
                Ok(0) => return Progress::Done,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Progress::Done,
            }
        }
        self.stream.shutdown_write();
        self.draining = true;
        self.response = Vec::new();
        Progress::Open
    }
}

/// End of the request head (after the blank line), accepting bare LF too.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn response(
    code: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
    extra: &str,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

fn simple(code: u16, reason: &str, body: &str) -> Vec<u8> {
    response(
        code,
        reason,
        "text/plain; charset=utf-8",
        body.as_bytes(),
        false,
        "",
    )
}

/// The response to a complete request head.
fn respond(head: &[u8], metrics: &DiskMetrics) -> Vec<u8> {
    let Ok(head) = std::str::from_utf8(head) else {
        return simple(400, "Bad Request", "request is not UTF-8\n");
    };
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or("");
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return simple(400, "Bad Request", "malformed request line\n");
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(method) || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return simple(400, "Bad Request", "malformed request line\n");
    }
    // Header lines must at least look like headers.
    if lines
        .take_while(|l| !l.is_empty())
        .any(|l| !l.contains(':'))
    {
        return simple(400, "Bad Request", "malformed header line\n");
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let body = b"only GET and HEAD\n";
            return response(
                405,
                "Method Not Allowed",
                "text/plain; charset=utf-8",
                body,
                false,
                "Allow: GET, HEAD\r\n",
            );
        }
    };
    let path = target.split(['?', '#']).next().unwrap_or(target);
    match path {
        "/metrics" => {
            let text = prometheus::render(&metrics.snapshot());
            response(
                200,
                "OK",
                prometheus::CONTENT_TYPE,
                text.as_bytes(),
                head_only,
                "",
            )
        }
        "/metrics.json" => match serde_json::to_vec(&metrics.snapshot()) {
            Ok(json) => response(200, "OK", "application/json", &json, head_only, ""),
            Err(_) => simple(500, "Internal Server Error", "cannot encode snapshot\n"),
        },
        _ => simple(404, "Not Found", "try /metrics or /metrics.json\n"),
    }
}

fn serve_loop(listener: Listener, metrics: &DiskMetrics, stop: &AtomicBool) {
    let mut conns: Vec<Conn> = Vec::new();
    // What poll said of the listener (first) and of each connection.
    let mut revents: Vec<PollFlags> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        conns.retain(|c| c.deadline > now);
        let accepting = conns.len() < MAX_CONNECTIONS;
        let listen = if accepting {
            PollFlags::IN
        } else {
            PollFlags::empty()
        };
        let mut fds = Vec::with_capacity(conns.len() + 1);
        fds.push(PollFd::from_borrowed_fd(listener.fd(), listen));
        for c in &conns {
            let events = if c.writing() {
                PollFlags::OUT
            } else {
                PollFlags::IN
            };
            fds.push(PollFd::from_borrowed_fd(c.stream.fd(), events));
        }
        let wait = conns
            .iter()
            .map(|c| c.deadline.saturating_duration_since(now))
            .fold(TICK, Duration::min);
        // A millisecond more, so that a deadline has passed when it wakes.
        let timeout = Timespec::try_from(wait + Duration::from_millis(1)).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        if poll(&mut fds, Some(&timeout)).is_err() {
            // EINTR, or a resource shortage worth a pause rather than a spin.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        revents.clear();
        revents.extend(fds.iter().map(PollFd::revents));
        drop(fds);
        // Service existing connections first (revents[1..] match conns by
        // index).
        let mut done = vec![false; conns.len()];
        for (i, c) in conns.iter_mut().enumerate() {
            let revents = revents[i + 1];
            if revents.is_empty() {
                continue;
            }
            let progress = if c.writing() {
                c.on_writable()
            } else if revents.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                c.on_readable(metrics)
            } else {
                Progress::Open
            };
            done[i] = matches!(progress, Progress::Done);
        }
        let mut i = 0;
        conns.retain(|_| {
            i += 1;
            !done[i - 1]
        });
        if accepting && !revents[0].is_empty() {
            while conns.len() < MAX_CONNECTIONS {
                match listener.accept() {
                    Ok(stream) => {
                        if stream.set_nonblocking().is_ok() {
                            conns.push(Conn {
                                stream,
                                request: Vec::new(),
                                response: Vec::new(),
                                written: 0,
                                draining: false,
                                deadline: Instant::now() + CONNECTION_DEADLINE,
                            });
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        // Out of descriptors or similar: let it pass.
                        std::thread::sleep(Duration::from_millis(10));
                        break;
                    }
                }
            }
        }
    }
}

/// A response as the client sees it.
#[derive(Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// Largest response body the client accepts.
const MAX_RESPONSE: usize = 256 * 1024 * 1024;

/// GETs `path` from the server at `addr` (TCP of any address, or a unix
/// socket path), waiting at most `timeout` for each step.
pub fn get(addr: &str, path: &str, timeout: Duration) -> io::Result<HttpResponse> {
    let target = if let Some(p) = addr.strip_prefix("unix:") {
        Addr::Unix(PathBuf::from(p))
    } else if addr.contains('/') {
        Addr::Unix(PathBuf::from(addr))
    } else {
        match parse_addr(addr) {
            Ok(a) => a,
            // The client may read a server elsewhere (through a tunnel...).
            Err(_) => Addr::Tcp(addr.parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("address {addr:?} is neither IP:PORT nor a socket path"),
                )
            })?),
        }
    };
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{target}: {e}"));
    let mut stream = match &target {
        Addr::Tcp(a) => {
            let s = TcpStream::connect_timeout(a, timeout).map_err(named)?;
            s.set_read_timeout(Some(timeout)).map_err(named)?;
            s.set_write_timeout(Some(timeout)).map_err(named)?;
            Stream::Tcp(s)
        }
        Addr::Unix(p) => {
            let s = UnixStream::connect(p).map_err(named)?;
            s.set_read_timeout(Some(timeout)).map_err(named)?;
            s.set_write_timeout(Some(timeout)).map_err(named)?;
            Stream::Unix(s)
        }
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: ocidisk\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(named)?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(named)?;
    if raw.len() > MAX_RESPONSE {
        return Err(named(io::Error::new(
            io::ErrorKind::InvalidData,
            "response too large",
        )));
    }
    parse_response(&raw).map_err(|why| named(io::Error::new(io::ErrorKind::InvalidData, why)))
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let end = find_head_end(raw).ok_or("response has no complete header")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "response header is not UTF-8")?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| format!("bad status line {status_line:?}"))?;
    let mut body = raw[end..].to_vec();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                let len: usize = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?;
                if body.len() < len {
                    return Err(format!(
                        "response body cut short: {} of {len} bytes",
                        body.len()
                    ));
                }
                body.truncate(len);
            }
        }
    }
    Ok(HttpResponse { status, body })
}

#[cfg(test)]
mod tests {
    use super::super::{Labels, Snapshot};
    use super::*;

    fn metrics() -> Arc<DiskMetrics> {
        DiskMetrics::new(
            1,
            Labels {
                serial: "sn".into(),
                socket: "/s".into(),
            },
        )
    }

    /// Sends raw bytes and reads the whole answer.
    fn raw_tcp(addr: &Addr, bytes: &[u8]) -> String {
        let Addr::Tcp(a) = addr else { panic!("tcp") };
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bytes).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn addresses_are_parsed_and_non_loopback_refused() {
        assert_eq!(
            parse_addr("127.0.0.1:9100").unwrap(),
            Addr::Tcp("127.0.0.1:9100".parse().unwrap())
        );
        assert_eq!(
            parse_addr("[::1]:9100").unwrap(),
            Addr::Tcp("[::1]:9100".parse().unwrap())
        );
        assert_eq!(
            parse_addr("localhost:80").unwrap(),
            Addr::Tcp("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            parse_addr("unix:m.sock").unwrap(),
            Addr::Unix("m.sock".into())
        );
        assert_eq!(
            parse_addr("/run/m.sock").unwrap(),
            Addr::Unix("/run/m.sock".into())
        );
        for bad in ["0.0.0.0:9100", "10.1.2.3:80", "[::]:9100", "example.com:80"] {
            let err = parse_addr(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
        assert!(parse_addr("0.0.0.0:9100")
            .unwrap_err()
            .to_string()
            .contains("not a loopback"));
        for bad in ["", "9100", "localhost", "localhost:99999", "unix:"] {
            assert!(parse_addr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serves_metrics_json_and_404_over_tcp() {
        let server = serve_http("127.0.0.1:0", metrics()).unwrap();
        let addr = server.local_addr().to_string();
        let r = get(&addr, "/metrics", Duration::from_secs(5)).unwrap();
        assert_eq!(r.status, 200);
        assert!(String::from_utf8(r.body)
            .unwrap()
            .contains("# TYPE ocidisk_requests_total counter"));
        let r = get(&addr, "/metrics.json", Duration::from_secs(5)).unwrap();
        assert_eq!(r.status, 200);
        let snap: Snapshot = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(snap.serial, "sn");
        assert_eq!(
            get(&addr, "/nope", Duration::from_secs(5)).unwrap().status,
            404
        );
        assert_eq!(
            get(&addr, "/metrics?x=1", Duration::from_secs(5))
                .unwrap()
                .status,
            200
        );
        server.shutdown();
        assert!(
            get(&addr, "/metrics", Duration::from_secs(1)).is_err(),
            "stopped"
        );
    }

    #[test]
    fn malformed_requests_get_400_405_431() {
        let server = serve_http("127.0.0.1:0", metrics()).unwrap();
        let a = server.local_addr().clone();
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics FTP/1.0\r\n\r\n",
            b"G(T /metrics HTTP/1.1\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET /\xff\xfe HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
        ] {
            let out = raw_tcp(&a, bad);
            assert!(
                out.starts_with("HTTP/1.1 400 "),
                "{:?} -> {out:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(raw_tcp(&a, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST * 2)
        );
        assert!(raw_tcp(&a, huge.as_bytes()).starts_with("HTTP/1.1 431 "));
        let head = raw_tcp(&a, b"HEAD /metrics HTTP/1.1\n\n");
        assert!(
            head.starts_with("HTTP/1.1 200 ") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        // Still serving after all that.
        assert_eq!(
            get(&a.to_string(), "/metrics.json", Duration::from_secs(5))
                .unwrap()
                .status,
            200
        );
    }

    #[test]
    fn slow_clients_do_not_block_others() {
        let server = serve_http("127.0.0.1:0", metrics()).unwrap();
        let Addr::Tcp(a) = server.local_addr().clone() else {
            panic!()
        };
        // Clients that connect and send half a request, then stall.
        let mut stalled: Vec<TcpStream> = (0..5)
            .map(|_| {
                let mut s = TcpStream::connect(a).unwrap();
                s.write_all(b"GET /metr").unwrap();
                s
            })
            .collect();
        let t = Instant::now();
        let r = get(&a.to_string(), "/metrics", Duration::from_secs(5)).unwrap();
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
        // A stalled client is cut off at its deadline.
        let s = &mut stalled[0];
        s.set_read_timeout(Some(CONNECTION_DEADLINE * 3)).unwrap();
        let mut out = Vec::new();
        let t = Instant::now();
        let _ = s.read_to_end(&mut out);
        assert!(out.is_empty());
        assert!(
            t.elapsed() < CONNECTION_DEADLINE * 2,
            "closed after {:?}",
            t.elapsed()
        );
    }

    #[test]
    fn serves_over_a_unix_socket_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        let addr = format!("unix:{}", path.display());
        let server = serve_http(&addr, metrics()).unwrap();
        let r = get(
            path.to_str().unwrap(),
            "/metrics.json",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(r.status, 200);
        // A second server on a live socket is refused.
        let err = serve_http(&addr, metrics()).err().unwrap().to_string();
        assert!(err.contains("listening"), "{err}");
        server.shutdown();
        assert!(!path.exists(), "socket removed at shutdown");
        // A stale socket (nobody listening) is replaced; a regular file is not.
        drop(UnixListener::bind(&path).unwrap());
        let server = serve_http(&addr, metrics()).unwrap();
        drop(server);
        std::fs::write(&path, "x").unwrap();
        let err = serve_http(&addr, metrics()).err().unwrap().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
    }

    #[test]
    fn client_rejects_broken_responses() {
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabcd").unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"ab"[..]));
    }
}
