//! The metrics endpoint: plain HTTP/1.1, `GET /metrics` only, on blocking sockets.
//!
//! One thread accepts; each connection is served on a thread of its own, at most
//! [`Limits::connections`] at once (a connection beyond them is answered 503 and
//! closed). A request head is read up to [`Limits::head_max`] bytes (431 beyond),
//! within [`Limits::timeout`] in all (then the connection is closed); the body of a
//! request is never read. `GET /metrics` (a query string is ignored) is answered 200
//! with what the process's render function returns (503 when it fails); another
//! path is 404, another method on `/metrics` 405. Every answer closes the
//! connection (`Connection: close`). Nothing here knows what the metrics are.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the endpoint allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub connections: usize,
    /// Largest request head (request line and header fields), in bytes.
    pub head_max: usize,
    /// Time for the request head to arrive, and for the answer to be written.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: 8,
            head_max: 8 * 1024,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Renders one scrape: the text exposition, or why there is none now.
pub type Render = dyn Fn() -> Result<String, String> + Send + Sync;

/// Binds the endpoint's listener on `addr` (before the process detaches or starts
/// threads, so that an address in use fails the start).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serves `GET /metrics` on `listener` from a thread named `metrics`, with the
/// default [`Limits`].
pub fn spawn(listener: TcpListener, render: Arc<Render>) -> io::Result<()> {
    spawn_with(listener, render, Limits::default())
}

/// [`spawn`] with `limits`.
pub fn spawn_with(listener: TcpListener, render: Arc<Render>, limits: Limits) -> io::Result<()> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || accept_loop(&listener, &render, limits))?;
    Ok(())
}

fn accept_loop(listener: &TcpListener, render: &Arc<Render>, limits: Limits) {
    let live = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of descriptors, say: rest a moment rather than spin.
                tracing::warn!("metrics endpoint: accepting: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if live.load(Ordering::Acquire) >= limits.connections {
            let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = answer(&stream, &Response::busy());
            continue;
        }
        live.fetch_add(1, Ordering::AcqRel);
        let (live2, render) = (Arc::clone(&live), Arc::clone(render));
        let spawned = std::thread::Builder::new()
            .name("metrics-conn".into())
            .spawn(move || {
                serve(stream, &*render, limits);
                live2.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            live.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("metrics endpoint: no thread for a connection: {e}");
        }
    }
}

/// One connection: its request head, the answer, closed.
fn serve(mut stream: TcpStream, render: &Render, limits: Limits) {
    let deadline = Instant::now() + limits.timeout;
    let response = match read_head(&mut stream, limits.head_max, deadline) {
        Ok(head) => respond(&head, render),
        Err(Head::TooLarge) => Response::status(431, "Request Header Fields Too Large"),
        Err(Head::Closed) => return,
    };
    let _ = stream.set_write_timeout(Some(limits.timeout));
    let _ = answer(&stream, &response);
}

/// Why no request head was read.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// More than the limit, without the blank line.
    TooLarge,
    /// The client closed, failed or ran out of time first.
    Closed,
}

/// Reads up to the end of the head (`\r\n\r\n`, or `\n\n`).
fn read_head(stream: &mut TcpStream, max: usize, deadline: Instant) -> Result<Vec<u8>, Head> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(Head::Closed);
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(Head::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(Head::Closed),
        };
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = end_of_head(&head[from..]) {
            head.truncate(from + end);
            return Ok(head);
        }
        if head.len() > max {
            return Err(Head::TooLarge);
        }
    }
}

/// Where the head ends in `bytes` (after its blank line), if it does.
fn end_of_head(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    /// `Allow: GET` (with 405).
    allow: bool,
    body: String,
}

impl Response {
    fn status(status: u16, reason: &'static str) -> Self {
        Self {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            allow: false,
            body: format!("{status} {reason}\n"),
        }
    }

    fn busy() -> Self {
        Self::status(503, "Service Unavailable")
    }
}

/// The answer to the request `head`.
fn respond(head: &[u8], render: &Render) -> Response {
    let Some(line) = head
        .split(|b| *b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
    else {
        return Response::status(400, "Bad Request");
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::status(400, "Bad Request");
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Response::status(505, "HTTP Version Not Supported");
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path != "/metrics" {
        return Response::status(404, "Not Found");
    }
    if method != "GET" {
        return Response {
            allow: true,
            ..Response::status(405, "Method Not Allowed")
        };
    }
    match render() {
        Ok(body) => Response {
            status: 200,
            reason: "OK",
            content_type: crate::CONTENT_TYPE,
            allow: false,
            body,
        },
        Err(why) => {
            tracing::warn!("metrics endpoint: {why}");
            Response {
                body: format!("503 Service Unavailable: {why}\n"),
                ..Response::busy()
            }
        }
    }
}

/// Writes `r` whole.
fn answer(mut stream: &TcpStream, r: &Response) -> io::Result<()> {
    let allow = if r.allow { "Allow: GET\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        r.status,
        r.reason,
        r.content_type,
        r.body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(r.body.as_bytes())?;
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Drain what the client still sends (a body we never read) for a moment, so
    // that it reads the answer rather than a reset.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut sink = [0u8; 1024];
    for _ in 0..16 {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
