//! A UDP "reflector": answers every datagram with the source address it saw, as text
//! (`198.51.100.10:40000`), so that a host learns its NAT mapping (reflexive address)
//! towards that server; [`reflexive`] is the client.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::LabNamespace;
use crate::Error;

/// How often the server looks at its stop flag, and the client resends.
const TICK: Duration = Duration::from_millis(50);

/// A reflector bound inside a namespace, served by a thread; stopped on drop.
#[derive(Debug)]
pub struct UdpEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    /// Binds `addr` inside `ns` and answers there until dropped.
    pub fn start(ns: &impl LabNamespace, addr: SocketAddr) -> Result<UdpEcho, Error> {
        let sock = ns.udp_bind(addr)?;
        let socket_err = |source| Error::Socket {
            action: format!("setting a read timeout on {addr} in {}", ns.name()),
            source,
        };
        sock.set_read_timeout(Some(TICK)).map_err(socket_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || serve(&sock, &flag));
        Ok(UdpEcho {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it answers on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn serve(sock: &UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(from.to_string().as_bytes(), from);
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Asks the reflector at `server` from `sock` (resending every 50 ms) and returns
/// the source address it saw, or `None` if no answer came within `limit`. Sets the
/// socket's read timeout; datagrams from other sources are skipped.
pub fn reflexive(
    sock: &UdpSocket,
    server: SocketAddr,
    limit: Duration,
) -> Result<Option<SocketAddr>, Error> {
    let socket_err = |action: &str, source| Error::Socket {
        action: format!("{action} (asking reflector {server})"),
        source,
    };
    sock.set_read_timeout(Some(TICK))
        .map_err(|e| socket_err("setting a read timeout", e))?;
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 128];
    while Instant::now() < deadline {
        sock.send_to(b"?", server)
            .map_err(|e| socket_err("sending", e))?;
        let sent = Instant::now();
        while sent.elapsed() < TICK {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == server => {
                    if let Some(seen) = parse(&buf[..n]) {
                        return Ok(Some(seen));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(None)
}

/// The address in a reflector's answer.
fn parse(answer: &[u8]) -> Option<SocketAddr> {
    std::str::from_utf8(answer).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        assert_eq!(
            parse(b"198.51.100.10:40000"),
            Some(([198, 51, 100, 10], 40000).into())
        );
        assert_eq!(parse(b"\xff"), None);
        assert_eq!(parse(b"198.51.100.10"), None);
    }
}
