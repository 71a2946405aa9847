//! Steady state allocates nothing: 100k packets each way through two established
//! devices (seal, send, open, AllowedIPs check, TUN write) under a counting allocator.

use portdistrict_wg::device::{Device, Io, SendOutcome};
use portdistrict_wg::peer::Endpoint;
use portdistrict_wg::uapi::{parse_request, Request};
use portdistrict_wg::PrivateKey;
use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Counting;
thread_local! {
    /// Whether this thread's allocations are counted: only the test's own thread
    /// (the harness's threads may allocate meanwhile). A const initialiser: reading
    /// it allocates nothing.
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(std::cell::Cell::get).unwrap_or(false)
}
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Preallocated outbox: one datagram slot and one TUN slot (the test moves each
/// output on before the next input).
struct Slot {
    datagram: Vec<u8>,
    datagram_len: usize,
    tun_len: usize,
}

impl Io for Slot {
    fn send_udp(&mut self, _: &Endpoint, d: &[u8]) -> SendOutcome {
        self.datagram[..d.len()].copy_from_slice(d);
        self.datagram_len = d.len();
        SendOutcome::Sent
    }
    fn write_tun(&mut self, p: &[u8]) {
        self.tun_len = p.len();
    }
}

fn slot() -> Slot {
    Slot {
        datagram: vec![0; 70_000],
        datagram_len: 0,
        tun_len: 0,
    }
}

fn configure(
    dev: &mut Device,
    now: Instant,
    own: &PrivateKey,
    peer: &PrivateKey,
    ep: &str,
    allowed: &str,
    io: &mut Slot,
) {
    let text = format!(
        "set=1\nprivate_key={}\npublic_key={}\nendpoint={ep}\nallowed_ip={allowed}\n\n",
        own.to_hex(),
        peer.public_key().to_hex()
    );
    let Ok(Request::Set(req)) = parse_request(&text) else {
        panic!("config")
    };
    dev.apply(now, &req, io);
}

fn packet(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

#[test]
fn hundred_thousand_packets_allocate_nothing() {
    #[allow(clippy::disallowed_methods)]
    let mut now = Instant::now();
    let epoch = (now, Duration::from_secs(1_700_000_000));
    let (ka, kb) = (
        PrivateKey::from_bytes([1; 32]),
        PrivateKey::from_bytes([2; 32]),
    );
    let (mut a, mut b) = (
        Device::new([1; 32], epoch, 1420),
        Device::new([2; 32], epoch, 1420),
    );
    let (mut ia, mut ib) = (slot(), slot());
    configure(&mut a, now, &ka, &kb, "192.0.2.2:1", "10.0.0.2/32", &mut ia);
    configure(&mut b, now, &kb, &ka, "192.0.2.1:1", "10.0.0.1/32", &mut ib);
    let (from_a, from_b): (SocketAddr, SocketAddr) = (
        "192.0.2.1:1".parse().unwrap(),
        "192.0.2.2:1".parse().unwrap(),
    );
    let (pa, pb) = (
        packet([10, 0, 0, 1], [10, 0, 0, 2], 1400),
        packet([10, 0, 0, 2], [10, 0, 0, 1], 64),
    );
    let mut buf = vec![0u8; 70_000];

    // Handshake: initiation -> response -> the staged packet.
    a.handle_tun_packet(now, &pa, &mut ia);
    for _ in 0..3 {
        buf[..ia.datagram_len].copy_from_slice(&ia.datagram[..ia.datagram_len]);
        let n = ia.datagram_len;
        b.handle_datagram(now, from_a, None, &mut buf[..n], &mut ib);
        if ib.datagram_len > 0 {
            buf[..ib.datagram_len].copy_from_slice(&ib.datagram[..ib.datagram_len]);
            let n = ib.datagram_len;
            ib.datagram_len = 0;
            a.handle_datagram(now, from_b, None, &mut buf[..n], &mut ia);
        }
    }
    assert_eq!(a.stats.handshakes_completed, 1);
    b.handle_tun_packet(now, &pb, &mut ib);
    let n = ib.datagram_len;
    buf[..n].copy_from_slice(&ib.datagram[..n]);
    a.handle_datagram(now, from_b, None, &mut buf[..n], &mut ia);
    assert_eq!(b.stats.handshakes_completed, 1);

    COUNTING.set(true);
    for i in 0..100_000u32 {
        if i % 1000 == 0 {
            now += Duration::from_millis(10);
            a.handle_timeout(now, &mut ia);
            b.handle_timeout(now, &mut ib);
        }
        a.handle_tun_packet(now, &pa, &mut ia);
        let n = ia.datagram_len;
        buf[..n].copy_from_slice(&ia.datagram[..n]);
        b.handle_datagram(now, from_a, None, &mut buf[..n], &mut ib);
        assert_eq!(ib.tun_len, pa.len());
        b.handle_tun_packet(now, &pb, &mut ib);
        let n = ib.datagram_len;
        buf[..n].copy_from_slice(&ib.datagram[..n]);
        a.handle_datagram(now, from_b, None, &mut buf[..n], &mut ia);
        assert_eq!(ia.tun_len, pb.len());
    }
    COUNTING.set(false);
    assert_eq!(
        ALLOCS.load(Ordering::SeqCst),
        0,
        "allocations in steady state"
    );
    assert_eq!(
        b.peer(&ka.public_key())
            .map(|p| p.rx_bytes > 100_000 * 1400),
        Some(true)
    );
}
