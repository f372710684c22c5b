//! An HTTP-aware fault proxy: it reads each HTTP/1.1 request, knows what S3
//! operation it is (object GET, listing, PUT, multipart part, copy, ...), and
//! answers a chosen share of them with what S3 does under load instead of
//! forwarding them: 503 SlowDown (with or without Retry-After), 500
//! InternalError, 429, 403 AccessDenied, a body cut short of its Content-Length, a body that
//! stalls, or a malformed listing page. It can also play "server down": the
//! port refuses connections for a while and open connections are cut.
//!
//! The TCP proxy (`proxy.rs`) works below HTTP (delays, bandwidth, resets);
//! this one works on requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The S3 operation a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// GetObject (whole or ranged).
    Get,
    /// ListObjectsV2.
    List,
    Head,
    /// PutObject (one-request upload).
    Put,
    /// UploadPart (not a copy).
    Part,
    /// CopyObject or UploadPartCopy.
    Copy,
    /// CreateMultipartUpload and CompleteMultipartUpload.
    Post,
    Delete,
    Other,
}

/// What to do to a request instead of (or while) forwarding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 503 SlowDown; `retry_after` in seconds when set.
    SlowDown { retry_after: Option<u32> },
    /// 500 InternalError.
    Internal,
    /// 429 Too Many Requests.
    TooMany,
    /// 403 AccessDenied (a permanent error: not to be retried).
    Denied,
    /// Forward the response but close the connection halfway through its body.
    CutBody,
    /// Forward the response head and half the body, then send nothing more
    /// (the connection stays open until the client gives up).
    StallBody,
    /// Replace a listing page's XML with a truncated document.
    MalformedListing,
    /// Forward the request and let S3 act on it, then close the connection
    /// without a word of the answer: the client cannot know it happened.
    LoseAnswer,
}

/// Inject `fault` into a share `rate` (0.0 to 1.0) of the requests of the
/// given kinds (all kinds when empty), or into every `every`-th one.
#[derive(Debug)]
pub struct Rule {
    pub kinds: Vec<Kind>,
    /// Only requests carrying a write condition (If-Match, If-None-Match).
    pub conditional_only: bool,
    pub rate: f64,
    pub every: Option<u64>,
    pub fault: Fault,
    matched: AtomicU64,
}

impl Rule {
    /// At random, a share `rate` of the matching requests.
    pub fn new(fault: Fault, rate: f64, kinds: &[Kind]) -> Rule {
        Rule {
            kinds: kinds.to_vec(),
            conditional_only: false,
            rate,
            every: None,
            fault,
            matched: AtomicU64::new(0),
        }
    }

    /// Exactly every `n`-th matching request (the first one included).
    pub fn every(fault: Fault, n: u64, kinds: &[Kind]) -> Rule {
        Rule {
            every: Some(n.max(1)),
            ..Rule::new(fault, 0.0, kinds)
        }
    }

    /// Exactly every `n`-th request that carries a write condition.
    pub fn conditional_every(fault: Fault, n: u64) -> Rule {
        Rule {
            conditional_only: true,
            ..Rule::every(fault, n, &[Kind::Put, Kind::Copy, Kind::Post, Kind::Delete])
        }
    }

    fn fires(&self) -> bool {
        match self.every {
            Some(n) => self
                .matched
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(n),
            None => fastrand::f64() < self.rate,
        }
    }
}

#[derive(Default)]
struct Shared {
    rules: Mutex<Vec<Rule>>,
    /// Requests seen, by kind, and faults injected, by kind.
    seen: Mutex<std::collections::HashMap<Kind, u64>>,
    injected: Mutex<std::collections::HashMap<Kind, u64>>,
    /// While set (and in the future), the server is "down".
    down_until: Mutex<Option<Instant>>,
    /// Clones of the open client connections, to cut them when going down.
    open: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

pub struct HttpFaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl HttpFaultProxy {
    /// Starts a proxy to `upstream` (host:port) on a free loopback port.
    pub fn start(upstream: &str) -> HttpFaultProxy {
        let (addr, shared) = super::start_proxy(upstream, accept_loop);
        HttpFaultProxy { addr, shared }
    }

    /// `http://127.0.0.1:PORT`, for --endpoint-url.
    pub fn url(&self) -> String {
        super::http_url(self.addr)
    }

    pub fn set_rules(&self, rules: Vec<Rule>) {
        *self.shared.rules.lock().unwrap() = rules;
    }

    pub fn clear(&self) {
        self.set_rules(Vec::new());
    }

    /// The server goes down now for `duration`: open connections are cut
    /// and new ones refused.
    pub fn down_for(&self, duration: Duration) {
        *self.shared.down_until.lock().unwrap() = Some(Instant::now() + duration);
        for conn in self.shared.open.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    pub fn is_down(&self) -> bool {
        is_down(&self.shared)
    }

    /// Requests of `kind` that reached the proxy.
    pub fn seen(&self, kind: Kind) -> u64 {
        *self.shared.seen.lock().unwrap().get(&kind).unwrap_or(&0)
    }

    /// Faults injected into requests of `kind`.
    pub fn injected(&self, kind: Kind) -> u64 {
        *self
            .shared
            .injected
            .lock()
            .unwrap()
            .get(&kind)
            .unwrap_or(&0)
    }

    pub fn injected_total(&self) -> u64 {
        self.shared.injected.lock().unwrap().values().sum()
    }
}

impl Drop for HttpFaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for conn in self.shared.open.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

fn is_down(shared: &Shared) -> bool {
    shared
        .down_until
        .lock()
        .unwrap()
        .is_some_and(|t| Instant::now() < t)
}

/// Accepts connections while up; while down, the listening socket is closed
/// so connections are refused, as with a stopped server.
fn accept_loop(listener: TcpListener, addr: SocketAddr, upstream: SocketAddr, shared: Arc<Shared>) {
    listener.set_nonblocking(true).unwrap();
    let mut listener = Some(listener);
    while !shared.stop.load(Ordering::Relaxed) {
        if is_down(&shared) {
            // Closed: connections are refused until it is back.
            drop(listener.take());
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let Some(l) = &listener else {
            // Back up: listen on the same port again (std sets SO_REUSEADDR).
            match TcpListener::bind(addr) {
                Ok(l) => {
                    l.set_nonblocking(true).unwrap();
                    listener = Some(l);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
            continue;
        };
        match l.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                let _ = client.set_nodelay(true);
                if let Ok(clone) = client.try_clone() {
                    let mut open = shared.open.lock().unwrap();
                    // Forget connections that have ended, so the list stays small.
                    open.retain(|c| c.peer_addr().is_ok());
                    open.push(clone);
                }
                let s = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(client, upstream, &s);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// One parsed HTTP message head.
struct Head {
    /// The request or status line.
    first: String,
    headers: Vec<(String, String)>,
    raw: Vec<u8>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }
}

/// Reads a message head; `None` when the connection ended first.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut raw = Vec::new();
    loop {
        let before = raw.len();
        let n = r.read_until(b'\n', &mut raw)?;
        if n == 0 {
            return Ok(None);
        }
        if raw[before..] == *b"\r\n" || raw[before..] == *b"\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Some(Head {
        first,
        headers,
        raw,
    }))
}

fn kind_of(head: &Head) -> Kind {
    let mut parts = head.first.split(' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let has = |p: &str| {
        query
            .split('&')
            .any(|kv| kv == p || kv.starts_with(&format!("{p}=")))
    };
    match method {
        "GET" if has("list-type") => Kind::List,
        "GET" => Kind::Get,
        "HEAD" => Kind::Head,
        "PUT" if head.header("x-amz-copy-source").is_some() => Kind::Copy,
        "PUT" if has("partNumber") => Kind::Part,
        "PUT" => Kind::Put,
        "POST" => Kind::Post,
        "DELETE" => Kind::Delete,
        _ => Kind::Other,
    }
}

/// Serves one client connection, request by request.
fn serve(client: TcpStream, upstream: SocketAddr, shared: &Shared) -> std::io::Result<()> {
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let mut server: Option<(BufReader<TcpStream>, TcpStream)> = None;
    loop {
        let Some(request) = read_head(&mut from_client)? else {
            return Ok(());
        };
        let body = read_body(&mut from_client, &request)?;
        if is_down(shared) || shared.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let kind = kind_of(&request);
        *shared.seen.lock().unwrap().entry(kind).or_default() += 1;
        let conditional =
            request.header("if-match").is_some() || request.header("if-none-match").is_some();
        let fault = pick_fault(shared, kind, conditional);
        if let Some(f) = fault {
            *shared.injected.lock().unwrap().entry(kind).or_default() += 1;
            if let Some(reply) = error_reply(f) {
                to_client.write_all(&reply)?;
                continue;
            }
        }
        if server.is_none() {
            let s = TcpStream::connect(upstream)?;
            let _ = s.set_nodelay(true);
            server = Some((BufReader::new(s.try_clone()?), s));
        }
        let (from_server, to_server) = server.as_mut().unwrap();
        to_server.write_all(&request.raw)?;
        to_server.write_all(&body)?;
        let Some(response) = read_head(from_server)? else {
            return Ok(());
        };
        let bodyless = request.first.starts_with("HEAD ")
            || ["204", "304"].contains(&response.first.split(' ').nth(1).unwrap_or(""));
        match fault {
            Some(Fault::LoseAnswer) => {
                if !bodyless {
                    let _ = read_body(from_server, &response)?;
                }
                let _ = to_client.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(Fault::MalformedListing) if !bodyless => {
                let _ = read_body(from_server, &response)?;
                let garbage = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>b</Name><Contents><Key>oops</Ke";
                let mut head = Vec::new();
                head.extend_from_slice(response.first.as_bytes());
                head.extend_from_slice(b"\r\n");
                for (k, v) in &response.headers {
                    if !k.eq_ignore_ascii_case("content-length")
                        && !k.eq_ignore_ascii_case("transfer-encoding")
                    {
                        head.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
                    }
                }
                head.extend_from_slice(
                    format!("content-length: {}\r\n\r\n", garbage.len()).as_bytes(),
                );
                to_client.write_all(&head)?;
                to_client.write_all(garbage)?;
            }
            Some(Fault::CutBody | Fault::StallBody) if !bodyless => {
                let body = read_body(from_server, &response)?;
                to_client.write_all(&response.raw)?;
                to_client.write_all(&body[..body.len() / 2])?;
                to_client.flush()?;
                if fault == Some(Fault::StallBody) {
                    // Silent until the client gives up on it (or two minutes).
                    let _ = to_client.set_read_timeout(Some(Duration::from_millis(100)));
                    let give_up = Instant::now() + Duration::from_secs(120);
                    let mut probe = [0u8; 1];
                    while Instant::now() < give_up && !shared.stop.load(Ordering::Relaxed) {
                        match from_client.get_mut().read(&mut probe) {
                            Ok(0) => break,
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut => {}
                            _ => break,
                        }
                    }
                }
                let _ = to_client.shutdown(Shutdown::Both);
                return Ok(());
            }
            _ => {
                to_client.write_all(&response.raw)?;
                if !bodyless {
                    copy_body(from_server, &response, &mut to_client)?;
                }
            }
        }
    }
}

fn pick_fault(shared: &Shared, kind: Kind, conditional: bool) -> Option<Fault> {
    let rules = shared.rules.lock().unwrap();
    rules
        .iter()
        .filter(|r| r.kinds.is_empty() || r.kinds.contains(&kind))
        .filter(|r| conditional || !r.conditional_only)
        .filter(|r| r.fault != Fault::MalformedListing || kind == Kind::List)
        .find(|r| r.fires())
        .map(|r| r.fault)
}

/// The whole reply for a fault that answers instead of S3.
fn error_reply(fault: Fault) -> Option<Vec<u8>> {
    let (status, code, extra) = match fault {
        Fault::SlowDown { retry_after } => (
            "503 Slow Down",
            "SlowDown",
            retry_after.map_or(String::new(), |s| format!("retry-after: {s}\r\n")),
        ),
        Fault::Internal => ("500 Internal Server Error", "InternalError", String::new()),
        Fault::TooMany => ("429 Too Many Requests", "TooManyRequests", String::new()),
        Fault::Denied => ("403 Forbidden", "AccessDenied", String::new()),
        _ => return None,
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
    );
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\n{extra}content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// Reads a message body as framed by its head (raw chunked framing kept).
fn read_body(r: &mut impl BufRead, head: &Head) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    copy_body(r, head, &mut out)?;
    Ok(out)
}

/// Copies a message body as framed by its head: Content-Length bytes, or
/// chunks through the last one (raw, framing included). A request with
/// neither has no body.
fn copy_body(r: &mut impl BufRead, head: &Head, w: &mut impl Write) -> std::io::Result<()> {
    if head.chunked() {
        loop {
            let mut size_line = Vec::new();
            r.read_until(b'\n', &mut size_line)?;
            w.write_all(&size_line)?;
            let text = String::from_utf8_lossy(&size_line);
            let size = u64::from_str_radix(text.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let mut line = Vec::new();
                    if r.read_until(b'\n', &mut line)? == 0 {
                        return Ok(());
                    }
                    w.write_all(&line)?;
                    if line == b"\r\n" || line == b"\n" {
                        return Ok(());
                    }
                }
            }
            std::io::copy(&mut r.by_ref().take(size + 2), w)?;
        }
    }
    let len = head.content_length().unwrap_or(0);
    let copied = std::io::copy(&mut r.by_ref().take(len), w)?;
    if copied < len {
        return Err(std::io::Error::other("body ended early"));
    }
    Ok(())
}
