//! The provider's DNS forwarder on its tunnel address: consumers' queries (UDP and
//! TCP, port 53) go to the provider's own upstream resolver and the answers come back.
//! The provider's firewall admits only authorized consumers to it.
//!
//! UDP: one socket towards the upstream; each query gets a fresh DNS ID
//! ([`IdMap`], the pure part), so answers find their client however many are in
//! flight; an answer with an ID not in flight is dropped. TCP: each connection is
//! relayed to the upstream over its own TCP connection (at most [`MAX_TCP`] at once,
//! idle ones closed after [`TCP_IDLE`]).

use anyhow::Context as _;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an upstream answer is awaited.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent TCP connections.
pub const MAX_TCP: usize = 64;
/// A TCP connection idle this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(200);

/// Queries in flight: upstream ID -> (client, client's ID, when sent).
pub struct IdMap {
    slots: Vec<Option<(SocketAddr, u16, Instant)>>,
    next: u16,
}

impl Default for IdMap {
    fn default() -> Self {
        IdMap {
            slots: vec![None; 1 << 16],
            next: 0,
        }
    }
}

impl IdMap {
    /// The upstream ID for a query from `client` with ID `id` at `now`; `None` when
    /// all 65,536 IDs are in flight (the query is dropped; the client retries).
    pub fn insert(&mut self, client: SocketAddr, id: u16, now: Instant) -> Option<u16> {
        for _ in 0..=u16::MAX {
            let candidate = self.next;
            self.next = self.next.wrapping_add(1);
            let slot = &mut self.slots[usize::from(candidate)];
            let free = match slot {
                None => true,
                Some((_, _, at)) => now.duration_since(*at) > ANSWER_TIMEOUT,
            };
            if free {
                *slot = Some((client, id, now));
                return Some(candidate);
            }
        }
        None
    }

    /// The client and original ID of the answer with upstream ID `id` (once).
    pub fn take(&mut self, id: u16, now: Instant) -> Option<(SocketAddr, u16)> {
        let (client, orig, at) = self.slots[usize::from(id)].take()?;
        (now.duration_since(at) <= ANSWER_TIMEOUT).then_some((client, orig))
    }
}

fn dns_id(msg: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.first()?, *msg.get(1)?]))
}

fn set_id(msg: &mut [u8], id: u16) {
    msg[..2].copy_from_slice(&id.to_be_bytes());
}

/// The first `nameserver` of a resolv.conf text, port 53.
pub fn upstream_from_resolv_conf(text: &str) -> Option<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            let a = rest.trim();
            // A scoped IPv6 address (fe80::1%eth0) is not usable here.
            a.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
}

/// A running forwarder; stops when `term` is set.
pub struct Forwarder {
    threads: Vec<JoinHandle<()>>,
}

impl Forwarder {
    /// Binds UDP and TCP port 53 (or `listen`'s port) on `listen` and starts
    /// forwarding to `upstream`.
    pub fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        term: Arc<AtomicBool>,
    ) -> anyhow::Result<Forwarder> {
        let udp =
            UdpSocket::bind(listen).with_context(|| format!("DNS forwarder: UDP {listen}"))?;
        let tcp =
            TcpListener::bind(listen).with_context(|| format!("DNS forwarder: TCP {listen}"))?;
        let local = if upstream.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        // Not connected: an upstream unreachable now (no route yet) costs the queries
        // of that moment, not the forwarder.
        let up = UdpSocket::bind(local).context("DNS forwarder: upstream socket")?;
        for s in [&udp, &up] {
            s.set_read_timeout(Some(TICK))?;
        }
        tcp.set_nonblocking(true)?;
        let map = Arc::new(Mutex::new(IdMap::default()));
        let udp = Arc::new(udp);
        let up = Arc::new(up);
        let mut threads = Vec::new();
        {
            let (udp, up, map, term) = (udp.clone(), up.clone(), map.clone(), term.clone());
            threads.push(std::thread::spawn(move || {
                queries(&udp, &up, upstream, &map, &term);
            }));
        }
        {
            let term = term.clone();
            threads.push(std::thread::spawn(move || {
                answers(&udp, &up, upstream, &map, &term);
            }));
        }
        threads.push(std::thread::spawn(move || tcp_loop(&tcp, upstream, &term)));
        Ok(Forwarder { threads })
    }

    /// Waits for the threads (after `term` was set).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

fn queries(
    udp: &UdpSocket,
    up: &UdpSocket,
    upstream: SocketAddr,
    map: &Mutex<IdMap>,
    term: &AtomicBool,
) {
    let mut buf = [0u8; 4096];
    while !term.load(Ordering::Relaxed) {
        let (n, from) = match udp.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if timed_out(&e) => continue,
            Err(e) => {
                eprintln!("portdistrict: DNS forwarder: {e}");
                std::thread::sleep(TICK);
                continue;
            }
        };
        let Some(id) = dns_id(&buf[..n]).filter(|_| n >= 12) else {
            continue;
        };
        let upstream_id = map
            .lock()
            .map(|mut m| m.insert(from, id, Instant::now()))
            .ok()
            .flatten();
        if let Some(uid) = upstream_id {
            set_id(&mut buf[..n], uid);
            let _ = up.send_to(&buf[..n], upstream);
        }
    }
}

fn answers(
    udp: &UdpSocket,
    up: &UdpSocket,
    upstream: SocketAddr,
    map: &Mutex<IdMap>,
    term: &AtomicBool,
) {
    let mut buf = [0u8; 65535];
    while !term.load(Ordering::Relaxed) {
        let n = match up.recv_from(&mut buf) {
            Ok((n, from)) if from == upstream => n,
            Ok(_) => continue,
            Err(e) if timed_out(&e) => continue,
            Err(_) => {
                // ICMP port unreachable from the upstream comes back here; retry.
                std::thread::sleep(TICK);
                continue;
            }
        };
        let Some(uid) = dns_id(&buf[..n]).filter(|_| n >= 12) else {
            continue;
        };
        let client = map
            .lock()
            .map(|mut m| m.take(uid, Instant::now()))
            .ok()
            .flatten();
        if let Some((client, id)) = client {
            set_id(&mut buf[..n], id);
            let _ = udp.send_to(&buf[..n], client);
        }
    }
}

fn tcp_loop(listener: &TcpListener, upstream: SocketAddr, term: &Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    while !term.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                if active.load(Ordering::Relaxed) >= MAX_TCP {
                    continue; // dropped: closes the connection
                }
                active.fetch_add(1, Ordering::Relaxed);
                let (active, term) = (active.clone(), term.clone());
                std::thread::spawn(move || {
                    let _ = relay(client, upstream, &term);
                    active.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) if timed_out(&e) => std::thread::sleep(TICK),
            Err(_) => std::thread::sleep(TICK),
        }
    }
}

/// Copies both ways between `client` and a new connection to `upstream` until either
/// side closes, nothing moves for [`TCP_IDLE`], or `term`.
fn relay(client: TcpStream, upstream: SocketAddr, term: &AtomicBool) -> std::io::Result<()> {
    let server = TcpStream::connect_timeout(&upstream, ANSWER_TIMEOUT)?;
    for s in [&client, &server] {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(TICK))?;
    }
    let mut pairs = [(client.try_clone()?, server.try_clone()?), (server, client)];
    let mut last = Instant::now();
    let mut buf = [0u8; 4096];
    let mut open = [true, true];
    while open.iter().any(|o| *o) && !term.load(Ordering::Relaxed) && last.elapsed() < TCP_IDLE {
        for (i, (from, to)) in pairs.iter_mut().enumerate() {
            if !open[i] {
                continue;
            }
            match from.read(&mut buf) {
                Ok(0) => {
                    open[i] = false;
                    let _ = to.shutdown(std::net::Shutdown::Write);
                }
                Ok(n) => {
                    to.write_all(&buf[..n])?;
                    last = Instant::now();
                }
                Err(e) if timed_out(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_back_once_and_expire() {
        let mut m = IdMap::default();
        let t0 = Instant::now();
        let a: SocketAddr = "100.64.0.2:5000".parse().unwrap();
        let b: SocketAddr = "100.64.0.3:5000".parse().unwrap();
        // The same client ID from two clients gets two upstream IDs.
        let ua = m.insert(a, 7, t0).unwrap();
        let ub = m.insert(b, 7, t0).unwrap();
        assert_ne!(ua, ub);
        assert_eq!(m.take(ub, t0), Some((b, 7)));
        assert_eq!(m.take(ub, t0), None, "an answer is delivered once");
        // Too late: dropped.
        assert_eq!(m.take(ua, t0 + ANSWER_TIMEOUT * 2), None);
    }

    #[test]
    fn a_full_map_refuses_until_entries_expire() {
        let mut m = IdMap::default();
        let t0 = Instant::now();
        let c: SocketAddr = "100.64.0.2:1".parse().unwrap();
        for i in 0..=u16::MAX {
            assert!(m.insert(c, i, t0).is_some());
        }
        assert_eq!(m.insert(c, 1, t0), None);
        assert!(m.insert(c, 1, t0 + ANSWER_TIMEOUT * 2).is_some());
    }

    #[test]
    fn upstream_from_resolv_conf_takes_the_first_usable_nameserver() {
        let text = "# comment\nsearch example\nnameserver fe80::1%eth0\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n";
        assert_eq!(
            upstream_from_resolv_conf(text),
            Some("192.0.2.53:53".parse().unwrap())
        );
        assert_eq!(upstream_from_resolv_conf("search x\n"), None);
    }

    #[test]
    fn forwards_udp_and_tcp_to_an_upstream_and_back() {
        // A toy upstream on loopback that answers with the question's ID and "ok".
        let up_udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = up_udp.local_addr().unwrap().port();
        let up_tcp = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let upstream = up_udp.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            for _ in 0..2 {
                let (n, from) = up_udp.recv_from(&mut buf).unwrap();
                let mut answer = buf[..n].to_vec();
                answer.extend_from_slice(b"ok");
                up_udp.send_to(&answer, from).unwrap();
            }
        });
        std::thread::spawn(move || {
            let (mut s, _) = up_tcp.accept().unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap();
            s.write_all(&buf[..n]).unwrap();
            s.write_all(b"ok").unwrap();
        });
        let term = Arc::new(AtomicBool::new(false));
        let listen = {
            let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let f = Forwarder::start(listen, upstream, term.clone()).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut q = vec![0xab, 0xcd];
        q.extend_from_slice(&[0; 10]);
        client.send_to(&q, listen).unwrap();
        let mut buf = [0u8; 64];
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..2], &[0xab, 0xcd], "the client's ID is restored");
        assert_eq!(&buf[n - 2..n], b"ok");
        // Too short to be DNS: dropped, the forwarder keeps working.
        client.send_to(&[1, 2, 3], listen).unwrap();
        client.send_to(&q, listen).unwrap();
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[n - 2..n], b"ok");
        let mut t = TcpStream::connect(listen).unwrap();
        t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        t.write_all(b"\x00\x0cquestion").unwrap();
        let mut got = Vec::new();
        let _ = t.read_to_end(&mut got);
        assert_eq!(got, b"\x00\x0cquestionok");
        term.store(true, Ordering::Relaxed);
        f.join();
    }
}
