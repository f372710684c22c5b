//! A TCP proxy that puts S3-like conditions on loopback: a delay before each
//! response's first byte, a bandwidth cap per connection, a reset after N
//! response bytes, and a stall after N response bytes. It also counts the
//! bytes it forwarded each way, so tests can measure read amplification
//! and what an upload sent.
//!
//! It can also cut connections that carry uploads (PUT, POST).
//!
//! Other faults apply to the response direction (server to client); each
//! connection gets its own byte budget, so "reset after 4 MiB" means every
//! connection breaks after carrying 4 MiB of responses.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the proxy does to responses; change it at any time.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Delay before the first byte of each response.
    pub first_byte_delay: Duration,
    /// Per-connection bandwidth cap in bytes per second.
    pub bytes_per_sec: Option<u64>,
    /// Reset (RST) a connection once it has carried this many response bytes.
    pub reset_after: Option<u64>,
    /// Stop forwarding (but keep the connection open) after this many bytes.
    pub stall_after: Option<u64>,
    /// Stall at most this many connections in all (unlimited when `None`).
    pub max_stalls: Option<u64>,
    /// Cut every connection that sends an upload (PUT or POST) before the
    /// request reaches the server, as a network failure would.
    pub fail_uploads: bool,
}

#[derive(Default)]
struct Shared {
    faults: Mutex<Faults>,
    response_bytes: AtomicU64,
    request_bytes: AtomicU64,
    connections: AtomicU64,
    resets: AtomicU64,
    stalls: AtomicU64,
    stop: AtomicBool,
    /// Request lines seen ("GET /bucket?list-type=2&... HTTP/1.1").
    requests: Mutex<Vec<String>>,
}

pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (host:port) on a free loopback port.
    pub fn start(upstream: &str) -> FaultProxy {
        let (addr, shared) = super::start_proxy(upstream, accept_loop);
        FaultProxy { addr, shared }
    }

    /// `http://127.0.0.1:PORT`, for --endpoint-url.
    pub fn url(&self) -> String {
        super::http_url(self.addr)
    }

    pub fn set(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap() = faults;
    }

    /// Response bytes forwarded so far (HTTP headers included).
    pub fn response_bytes(&self) -> u64 {
        self.shared.response_bytes.load(Ordering::Relaxed)
    }

    /// Request bytes forwarded so far (uploads; HTTP headers included).
    pub fn request_bytes(&self) -> u64 {
        self.shared.request_bytes.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    pub fn resets(&self) -> u64 {
        self.shared.resets.load(Ordering::Relaxed)
    }

    pub fn stalls(&self) -> u64 {
        self.shared.stalls.load(Ordering::Relaxed)
    }

    /// Request lines forwarded so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// ListObjectsV2 requests forwarded so far.
    pub fn list_requests(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.starts_with("GET ") && r.contains("list-type=2"))
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the stop flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn accept_loop(listener: TcpListener, _addr: SocketAddr, upstream: SocketAddr, s: Arc<Shared>) {
    for client in listener.incoming() {
        if s.stop.load(Ordering::Relaxed) {
            break;
        }
        let Ok(client) = client else { continue };
        let s = s.clone();
        std::thread::spawn(move || serve(client, upstream, s));
    }
}

fn serve(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // Set when the client sent a request whose response has not started yet.
    let awaiting_response = Arc::new(AtomicBool::new(false));

    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let awaiting = awaiting_response.clone();
    let requests = shared.clone();
    let upstream_writer = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match c_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    awaiting.store(true, Ordering::Relaxed);
                    record_request_lines(&buf[..n], &requests);
                    let fail = requests.faults.lock().unwrap().fail_uploads;
                    if fail && (buf[..n].starts_with(b"PUT ") || buf[..n].starts_with(b"POST ")) {
                        let _ = c_read.shutdown(Shutdown::Both);
                        let _ = s_write.shutdown(Shutdown::Both);
                        break;
                    }
                    if s_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    requests
                        .request_bytes
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
        let _ = s_write.shutdown(Shutdown::Write);
    });

    let (mut s_read, mut c_write) = (server, client);
    let mut buf = vec![0u8; 64 * 1024];
    let mut carried: u64 = 0;
    // Start of the current burst for the bandwidth cap: an idle connection
    // earns no credit, as with a real link.
    let (mut paced_since, mut paced_from) = (Instant::now(), 0u64);
    loop {
        let n = match s_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let faults = shared.faults.lock().unwrap().clone();
        if awaiting_response.swap(false, Ordering::Relaxed) && !faults.first_byte_delay.is_zero() {
            std::thread::sleep(faults.first_byte_delay);
        }
        let mut chunk = &buf[..n];
        // Forwards what fits under a byte limit; true when the limit is hit.
        let mut forward_up_to = |limit: u64, chunk: &[u8]| {
            if carried + chunk.len() as u64 >= limit {
                let allowed = limit.saturating_sub(carried) as usize;
                let _ = c_write.write_all(&chunk[..allowed]);
                shared
                    .response_bytes
                    .fetch_add(allowed as u64, Ordering::Relaxed);
                true
            } else {
                false
            }
        };
        if faults
            .reset_after
            .is_some_and(|limit| forward_up_to(limit, chunk))
        {
            shared.resets.fetch_add(1, Ordering::Relaxed);
            reset(&c_write);
            let _ = s_read.shutdown(Shutdown::Both);
            let _ = upstream_writer.join();
            return; // dropping the last descriptor sends the RST
        }
        let may_stall = faults
            .max_stalls
            .is_none_or(|max| shared.stalls.load(Ordering::Relaxed) < max);
        if may_stall
            && faults
                .stall_after
                .is_some_and(|limit| forward_up_to(limit, chunk))
        {
            shared.stalls.fetch_add(1, Ordering::Relaxed);
            // Hold the connection open, silent, until the client gives up
            // (closing it ends the request-forwarding thread).
            let give_up = Instant::now() + Duration::from_secs(120);
            while !upstream_writer.is_finished() && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = s_read.shutdown(Shutdown::Both);
            break;
        }
        if let Some(rate) = faults.bytes_per_sec.filter(|r| *r > 0) {
            let due_for = |bytes: u64| Duration::from_secs_f64(bytes as f64 / rate as f64);
            if paced_since.elapsed() > due_for(carried - paced_from) + Duration::from_millis(5) {
                (paced_since, paced_from) = (Instant::now(), carried);
            }
            let due = due_for(carried + chunk.len() as u64 - paced_from);
            let elapsed = paced_since.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
        while !chunk.is_empty() {
            match c_write.write(chunk) {
                Ok(0) | Err(_) => {
                    let _ = s_read.shutdown(Shutdown::Both);
                    let _ = upstream_writer.join();
                    return;
                }
                Ok(w) => {
                    carried += w as u64;
                    shared.response_bytes.fetch_add(w as u64, Ordering::Relaxed);
                    chunk = &chunk[w..];
                }
            }
        }
    }
    let _ = c_write.shutdown(Shutdown::Both);
    let _ = upstream_writer.join();
}

/// Notes the HTTP request lines in a chunk sent by the client. Requests of
/// the read path carry no body, so request lines start chunks or follow a
/// line break.
fn record_request_lines(chunk: &[u8], shared: &Shared) {
    let text = String::from_utf8_lossy(chunk);
    for line in text.split("\r\n") {
        let is_request = ["GET ", "HEAD ", "PUT ", "POST ", "DELETE "]
            .iter()
            .any(|m| line.starts_with(m))
            && line.ends_with(" HTTP/1.1");
        if is_request {
            shared.requests.lock().unwrap().push(line.to_owned());
        }
    }
}

/// Arms `stream` to close with a TCP RST instead of a FIN, like a peer that
/// died, and ends the thread reading requests from it; the RST goes out when
/// the last descriptor of the socket is dropped.
fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd is valid for the life of `stream`, and the option value
    // points at a properly sized, initialised `linger` struct.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    // SHUT_RD sends nothing to the peer but wakes the blocked reader thread.
    let _ = stream.shutdown(Shutdown::Read);
}
