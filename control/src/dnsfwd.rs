//! The provider's DNS forwarder on its tunnel address: consumers' queries (UDP and
//! TCP, port 53) go to the provider's own upstream resolver and the answers come back.
//!
//! Who can ask: the listening sockets are bound to the tunnel interface
//! (`SO_BINDTODEVICE`), so a packet that arrived on any other interface (a host on
//! the uplink routing to the tunnel address) never reaches them; the provider's
//! firewall admits only authorized consumers on the tunnel.
//!
//! UDP: every query goes upstream from a fresh socket (a kernel-chosen random
//! ephemeral port), connected to the upstream (the kernel drops datagrams from any
//! other address or port), with a fresh random DNS ID; an answer is taken only if
//! its ID and question match the query's ([`Pending`], the pure part) — anything
//! else is dropped and the wait goes on. At most [`MAX_IN_FLIGHT`] queries are in
//! flight, [`MAX_IN_FLIGHT_PER_CLIENT`] per client address ([`InFlight`]); more are
//! dropped (the client retries).
//!
//! TCP: each connection is relayed message by message (2-byte length framing, each
//! message at least a DNS header) to the upstream over its own TCP connection; at
//! most [`MAX_TCP`] connections at once and [`MAX_TCP_PER_CLIENT`] per client
//! address, [`MAX_TCP_QUERIES`] queries each, closed after [`TCP_IDLE`] without a
//! query or [`TCP_LIFETIME`] in all.

use anyhow::Context as _;
use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an upstream answer is awaited.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// UDP queries in flight at once.
pub const MAX_IN_FLIGHT: usize = 256;
/// UDP queries in flight at once from one client address.
pub const MAX_IN_FLIGHT_PER_CLIENT: usize = 32;
/// Concurrent TCP connections.
pub const MAX_TCP: usize = 64;
/// Concurrent TCP connections from one client address.
pub const MAX_TCP_PER_CLIENT: usize = 8;
/// Queries one TCP connection may carry.
pub const MAX_TCP_QUERIES: usize = 100;
/// A TCP connection without a query this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// A TCP connection is closed after this long in any case.
pub const TCP_LIFETIME: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_millis(200);
const HEADER: usize = 12;

/// The question section of the DNS message `msg` (one question: name, type, class),
/// or `None` if `msg` has no header, not exactly one question, or a malformed or
/// compressed name.
pub fn question(msg: &[u8]) -> Option<&[u8]> {
    let qdcount = u16::from_be_bytes([*msg.get(4)?, *msg.get(5)?]);
    if qdcount != 1 {
        return None;
    }
    let mut at = HEADER;
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // a compression pointer or a reserved label type
        }
        at += len;
        if at - HEADER > 255 {
            return None;
        }
    }
    msg.get(HEADER..at + 4)
}

/// Whether two question sections ask the same: the name compared without case (as
/// DNS names are), type and class exactly. Length bytes (0..=63) are never letters,
/// so a case-insensitive comparison of the name's bytes compares its labels.
fn same_question(a: &[u8], b: &[u8]) -> bool {
    let (Some(an), Some(bn)) = (a.len().checked_sub(4), b.len().checked_sub(4)) else {
        return false;
    };
    an == bn && a[..an].eq_ignore_ascii_case(&b[..bn]) && a[an..] == b[bn..]
}

/// One UDP query sent upstream: what its answer must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The ID the client chose (restored in the answer).
    client_id: u16,
    /// The ID sent upstream.
    id: u16,
    question: Vec<u8>,
}

impl Pending {
    /// Prepares the client's `query` for the upstream with the random ID `id`:
    /// the query as sent upstream, and what the answer must match. `None` if `query`
    /// is not a query with one well-formed question.
    pub fn new(query: &[u8], id: u16) -> Option<(Pending, Vec<u8>)> {
        let q = question(query)?.to_vec();
        if query[2] & 0x80 != 0 {
            return None; // QR set: an answer, not a query
        }
        let client_id = u16::from_be_bytes([query[0], query[1]]);
        let mut out = query.to_vec();
        out[..2].copy_from_slice(&id.to_be_bytes());
        Some((
            Pending {
                client_id,
                id,
                question: q,
            },
            out,
        ))
    }

    /// Whether `answer` (from the upstream's address and port) answers this query:
    /// an answer (QR set) with its ID and its question.
    pub fn matches(&self, answer: &[u8]) -> bool {
        answer.len() >= HEADER
            && u16::from_be_bytes([answer[0], answer[1]]) == self.id
            && answer[2] & 0x80 != 0
            && question(answer).is_some_and(|q| same_question(q, &self.question))
    }

    /// Puts the client's ID back into a matching `answer`.
    pub fn restore(&self, answer: &mut [u8]) {
        if let Some(id) = answer.get_mut(..2) {
            id.copy_from_slice(&self.client_id.to_be_bytes());
        }
    }
}

/// Counts of what is in flight, total and per client address (bounded: a client
/// has an entry only while it has something in flight).
#[derive(Debug, Default)]
pub struct InFlight {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

impl InFlight {
    /// Takes a slot for `client` if below `max` in all and `per_client` for it.
    pub fn acquire(&mut self, client: IpAddr, max: usize, per_client: usize) -> bool {
        let mine = self.per_client.get(&client).copied().unwrap_or(0);
        if self.total >= max || mine >= per_client {
            return false;
        }
        self.total += 1;
        self.per_client.insert(client, mine + 1);
        true
    }

    /// Gives a slot of `client` back.
    pub fn release(&mut self, client: IpAddr) {
        if let Some(n) = self.per_client.get_mut(&client) {
            *n -= 1;
            self.total -= 1;
            if *n == 0 {
                self.per_client.remove(&client);
            }
        }
    }
}

/// A slot in an [`InFlight`], given back on drop.
struct Slot {
    counts: Arc<Mutex<InFlight>>,
    client: IpAddr,
}

impl Slot {
    fn take(
        counts: &Arc<Mutex<InFlight>>,
        client: IpAddr,
        max: usize,
        per_client: usize,
    ) -> Option<Slot> {
        let ok = counts
            .lock()
            .is_ok_and(|mut c| c.acquire(client, max, per_client));
        ok.then(|| Slot {
            counts: counts.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut c) = self.counts.lock() {
            c.release(self.client);
        }
    }
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

/// A UDP socket bound to `addr` that receives only what arrived on interface
/// `device` (when given).
pub fn udp_on(addr: SocketAddr, device: Option<&str>) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if let Some(d) = device {
        s.bind_device(Some(d.as_bytes()))?;
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A TCP listener on `addr` that accepts only connections that arrive on interface
/// `device` (when given).
fn tcp_on(addr: SocketAddr, device: Option<&str>) -> std::io::Result<TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    if let Some(d) = device {
        s.bind_device(Some(d.as_bytes()))?;
    }
    s.bind(&addr.into())?;
    s.listen(128)?;
    Ok(s.into())
}

fn random_id() -> Option<u16> {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 2];
    ring::rand::SystemRandom::new().fill(&mut b).ok()?;
    Some(u16::from_be_bytes(b))
}

/// A running forwarder; stops when `term` is set.
pub struct Forwarder {
    threads: Vec<JoinHandle<()>>,
}

impl Forwarder {
    /// Binds UDP and TCP `listen` (receiving only from interface `device` when
    /// given) and starts forwarding to `upstream`.
    pub fn start(
        listen: SocketAddr,
        device: Option<&str>,
        upstream: SocketAddr,
        term: Arc<AtomicBool>,
    ) -> anyhow::Result<Forwarder> {
        let udp = udp_on(listen, device).with_context(|| format!("DNS forwarder: UDP {listen}"))?;
        let tcp = tcp_on(listen, device).with_context(|| format!("DNS forwarder: TCP {listen}"))?;
        udp.set_read_timeout(Some(TICK))?;
        tcp.set_nonblocking(true)?;
        let udp = Arc::new(udp);
        let mut threads = Vec::new();
        {
            let term = term.clone();
            threads.push(std::thread::spawn(move || udp_loop(&udp, upstream, &term)));
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
    crate::nothing_arrived(e)
}

fn udp_loop(udp: &Arc<UdpSocket>, upstream: SocketAddr, term: &Arc<AtomicBool>) {
    let counts = Arc::new(Mutex::new(InFlight::default()));
    let mut buf = vec![0u8; 4096];
    while !term.load(Ordering::Relaxed) {
        let (n, from) = match udp.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if timed_out(&e) => continue,
            Err(e) => {
                tracing::warn!("DNS forwarder: {e}");
                std::thread::sleep(TICK);
                continue;
            }
        };
        let Some(id) = random_id() else {
            continue;
        };
        let Some((pending, query)) = Pending::new(&buf[..n], id) else {
            continue;
        };
        let Some(slot) = Slot::take(&counts, from.ip(), MAX_IN_FLIGHT, MAX_IN_FLIGHT_PER_CLIENT)
        else {
            continue;
        };
        let (udp, term) = (udp.clone(), term.clone());
        let spawned = std::thread::Builder::new()
            .name("pd-dns-query".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let _slot = slot;
                if let Some(mut answer) = ask(upstream, &pending, &query, &term) {
                    pending.restore(&mut answer);
                    let _ = udp.send_to(&answer, from);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("DNS forwarder: {e}");
        }
    }
}

/// Sends `query` to `upstream` from a fresh socket and waits for the answer that
/// matches `pending` (others are dropped).
fn ask(
    upstream: SocketAddr,
    pending: &Pending,
    query: &[u8],
    term: &AtomicBool,
) -> Option<Vec<u8>> {
    let local = if upstream.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = UdpSocket::bind(local).ok()?;
    sock.connect(upstream).ok()?;
    sock.set_read_timeout(Some(TICK)).ok()?;
    sock.send(query).ok()?;
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let mut buf = vec![0u8; 65535];
    while Instant::now() < deadline && !term.load(Ordering::Relaxed) {
        match sock.recv(&mut buf) {
            Ok(n) if pending.matches(&buf[..n]) => {
                buf.truncate(n);
                return Some(buf);
            }
            Ok(_) => {}
            Err(e) if timed_out(&e) => {}
            // ICMP unreachable from the upstream: no answer is coming.
            Err(_) => return None,
        }
    }
    None
}

fn tcp_loop(listener: &TcpListener, upstream: SocketAddr, term: &Arc<AtomicBool>) {
    let counts = Arc::new(Mutex::new(InFlight::default()));
    while !term.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, from)) => {
                // Dropped (closed) when over the limits.
                let Some(slot) = Slot::take(&counts, from.ip(), MAX_TCP, MAX_TCP_PER_CLIENT) else {
                    continue;
                };
                let term = term.clone();
                let _ = std::thread::Builder::new()
                    .name("pd-dns-tcp".into())
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        let _slot = slot;
                        let _ = relay(client, upstream, &term);
                    });
            }
            Err(_) => std::thread::sleep(TICK),
        }
    }
}

/// Fills `buf` from `s` before `deadline` (false on end of stream, timeout, `term`).
fn read_full(
    s: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
    term: &AtomicBool,
) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        if Instant::now() >= deadline || term.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match s.read(&mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(e) if timed_out(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads one length-framed DNS message (at least a header) before `deadline`.
fn read_message(
    s: &mut TcpStream,
    deadline: Instant,
    term: &AtomicBool,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    if !read_full(s, &mut len, deadline, term)? {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes(len));
    if len < HEADER {
        return Ok(None);
    }
    let mut msg = vec![0u8; len];
    Ok(read_full(s, &mut msg, deadline, term)?.then_some(msg))
}

fn write_message(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::ErrorKind::InvalidData)?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    s.write_all(&out)
}

/// Relays length-framed queries from `client` to a connection to `upstream` and
/// their answers back, within the limits above.
fn relay(mut client: TcpStream, upstream: SocketAddr, term: &AtomicBool) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(TICK))?;
    client.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    let end = Instant::now() + TCP_LIFETIME;
    let mut server: Option<TcpStream> = None;
    for _ in 0..MAX_TCP_QUERIES {
        let Some(query) = read_message(&mut client, end.min(Instant::now() + TCP_IDLE), term)?
        else {
            return Ok(());
        };
        if question(&query).is_none() {
            return Ok(());
        }
        if server.is_none() {
            let s = TcpStream::connect_timeout(&upstream, ANSWER_TIMEOUT)?;
            s.set_read_timeout(Some(TICK))?;
            s.set_write_timeout(Some(ANSWER_TIMEOUT))?;
            server = Some(s);
        }
        let Some(s) = server.as_mut() else {
            return Ok(());
        };
        write_message(s, &query)?;
        let Some(answer) = read_message(s, end.min(Instant::now() + ANSWER_TIMEOUT), term)? else {
            return Ok(());
        };
        if answer[..2] != query[..2] {
            return Ok(());
        }
        write_message(&mut client, &answer)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` (type A, class IN) with ID `id`.
    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            q.push(u8::try_from(label.len()).unwrap());
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    /// The upstream's answer to `q`: QR set, and some bytes standing for records.
    fn answer_to(q: &[u8]) -> Vec<u8> {
        let mut a = q.to_vec();
        a[2] |= 0x80;
        a.extend_from_slice(b"ok");
        a
    }

    #[test]
    fn answers_match_on_id_and_question_only() {
        let q = query(0x1234, "example.org");
        let (p, up) = Pending::new(&q, 0xbeef).unwrap();
        assert_eq!(&up[..2], &[0xbe, 0xef], "the upstream sees the random ID");
        assert_eq!(up[2..], q[2..]);
        let good = answer_to(&up);
        assert!(p.matches(&good));
        // Case of the name may differ (0x20 encoding); nothing else may.
        let mut upper = good.clone();
        upper[13] = b'E';
        assert!(p.matches(&upper));
        let mut wrong_id = good.clone();
        wrong_id[1] ^= 1;
        assert!(!p.matches(&wrong_id));
        let other = answer_to(
            &Pending::new(&query(0x1234, "example.com"), 0xbeef)
                .unwrap()
                .1,
        );
        assert!(!p.matches(&other), "another question");
        let mut other_type = good.clone();
        other_type[up.len() - 3] = 28; // AAAA
        assert!(!p.matches(&other_type));
        assert!(!p.matches(&up), "a query is no answer");
        assert!(!p.matches(&good[..good.len() - 5]), "cut short");
        let mut back = good.clone();
        p.restore(&mut back);
        assert_eq!(&back[..2], &[0x12, 0x34], "the client's ID is restored");
    }

    #[test]
    fn only_well_formed_single_questions_are_forwarded() {
        assert!(Pending::new(&[0; 11], 1).is_none());
        let mut two = query(1, "a.b");
        two[5] = 2;
        assert!(Pending::new(&two, 1).is_none());
        let mut pointer = query(1, "a.b");
        pointer[12] = 0xc0;
        assert!(Pending::new(&pointer, 1).is_none());
        let q = query(1, "a.b");
        assert!(Pending::new(&q[..q.len() - 1], 1).is_none());
        assert!(Pending::new(&answer_to(&q), 1).is_none(), "QR set");
        let long = query(1, &vec!["x".repeat(63); 5].join("."));
        assert!(Pending::new(&long, 1).is_none(), "name over 255 bytes");
    }

    #[test]
    fn in_flight_is_bounded_in_all_and_per_client() {
        let mut f = InFlight::default();
        let (a, b): (IpAddr, IpAddr) =
            ("100.64.0.2".parse().unwrap(), "100.64.0.3".parse().unwrap());
        assert!(f.acquire(a, 3, 2));
        assert!(f.acquire(a, 3, 2));
        assert!(!f.acquire(a, 3, 2), "per client");
        assert!(f.acquire(b, 3, 2));
        assert!(!f.acquire(b, 3, 2), "in all");
        f.release(a);
        f.release(a);
        assert!(f.per_client.len() == 1, "released clients leave no state");
        assert!(f.acquire(b, 3, 2));
        f.release(a); // unknown: ignored
        assert_eq!(f.total, 2);
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
        // A toy upstream on loopback: each UDP query first gets a spoof (right ID,
        // another question), then its answer; it records the source ports and IDs.
        let up_udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = up_udp.local_addr().unwrap().port();
        let up_tcp = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let upstream = up_udp.local_addr().unwrap();
        let seen = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let mut seen = Vec::new();
            for _ in 0..3 {
                let (n, from) = up_udp.recv_from(&mut buf).unwrap();
                seen.push((from.port(), u16::from_be_bytes([buf[0], buf[1]])));
                let mut spoof = answer_to(&buf[..n]);
                spoof[13] ^= 0x01; // another name
                up_udp.send_to(&spoof, from).unwrap();
                up_udp.send_to(&answer_to(&buf[..n]), from).unwrap();
            }
            seen
        });
        std::thread::spawn(move || {
            let (mut s, _) = up_tcp.accept().unwrap();
            let mut len = [0u8; 2];
            s.read_exact(&mut len).unwrap();
            let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut q).unwrap();
            write_message(&mut s, &answer_to(&q)).unwrap();
        });
        let term = Arc::new(AtomicBool::new(false));
        let listen = {
            let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let f = Forwarder::start(listen, None, upstream, term.clone()).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let q = query(0xabcd, "example.org");
        let mut buf = [0u8; 512];
        for i in 0..3 {
            if i == 1 {
                // Not DNS: dropped, the forwarder keeps working.
                client.send_to(&[1, 2, 3], listen).unwrap();
            }
            client.send_to(&q, listen).unwrap();
            let n = client.recv(&mut buf).unwrap();
            let mut want = answer_to(&q);
            want[..2].copy_from_slice(&[0xab, 0xcd]);
            assert_eq!(&buf[..n], &want[..], "the answer, not the spoof");
        }
        let seen = seen.join().unwrap();
        let ports: std::collections::BTreeSet<_> = seen.iter().map(|s| s.0).collect();
        assert_eq!(ports.len(), 3, "a fresh source port per query: {seen:?}");
        let tq = query(7, "example.net");
        let mut t = TcpStream::connect(listen).unwrap();
        t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write_message(&mut t, &tq).unwrap();
        let mut len = [0u8; 2];
        t.read_exact(&mut len).unwrap();
        let mut got = vec![0u8; usize::from(u16::from_be_bytes(len))];
        t.read_exact(&mut got).unwrap();
        assert_eq!(got, answer_to(&tq));
        term.store(true, Ordering::Relaxed);
        f.join();
    }
}
