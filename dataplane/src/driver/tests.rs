//! Unit tests of the driver's batching and ordering rules, on in-memory TUN and UDP:
//! the TX batch (order, when it is flushed, what it sends as one GSO send, sealing in
//! parallel), RX groups (arrival order, a full group, a non-data message) and TUN
//! intake (malformed super-packets).

use super::rx::{RxGroup, RX_GROUP};
use super::sink::{Egress, Offload, TunWrite};
use super::tun_intake::tun_frame;
use super::tx::{TxBatch, UdpSend, GSO_MAX_BYTES, GSO_MAX_SEGMENTS};
use crate::crypto_pool::Pool;
use crate::io::SourceAddr;
use portdistrict_wg::crypto::AeadKey;
use portdistrict_wg::device::{Device, Io, SendOutcome};
use portdistrict_wg::peer::{Endpoint, LocalAddr};
use portdistrict_wg::uapi::{parse_request, Request};
use portdistrict_wg::wire::{DATA_HEADER_LEN, DATA_MIN_LEN, INITIATION_LEN};
use portdistrict_wg::PrivateKey;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One send the fake UDP sockets saw: `segment` is `Some` for a GSO send.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sent {
    to: SocketAddr,
    segment: Option<u16>,
    bytes: Vec<u8>,
    /// The TTL of a [`UdpSend::send_ttl`] send.
    ttl: Option<u8>,
}

impl Sent {
    /// The datagrams of the send, in order.
    fn datagrams(&self) -> Vec<Vec<u8>> {
        match self.segment {
            None => vec![self.bytes.clone()],
            Some(s) => self
                .bytes
                .chunks(usize::from(s))
                .map(<[u8]>::to_vec)
                .collect(),
        }
    }
}

/// In-memory UDP sockets: records every send; can refuse them all, or refuse the
/// sticky source address (clearing it, as the real sockets do).
#[derive(Default)]
struct FakeUdp {
    sent: RefCell<Vec<Sent>>,
    fail: bool,
    refuse_source: bool,
}

impl FakeUdp {
    fn record(
        &self,
        buf: &[u8],
        segment: Option<u16>,
        to: SocketAddr,
        src: &mut SourceAddr,
    ) -> std::io::Result<()> {
        self.record_ttl(buf, segment, to, src, None)
    }

    fn record_ttl(
        &self,
        buf: &[u8],
        segment: Option<u16>,
        to: SocketAddr,
        src: &mut SourceAddr,
        ttl: Option<u8>,
    ) -> std::io::Result<()> {
        if self.refuse_source {
            *src = SourceAddr::None;
        }
        if self.fail {
            return Err(std::io::Error::from_raw_os_error(libc::ENOBUFS));
        }
        self.sent.borrow_mut().push(Sent {
            to,
            segment,
            bytes: buf.to_vec(),
            ttl,
        });
        Ok(())
    }

    fn sends(&self) -> Vec<Sent> {
        self.sent.borrow().clone()
    }

    /// Every datagram sent, in order, with its destination.
    fn datagrams(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.sent
            .borrow()
            .iter()
            .flat_map(|s| s.datagrams().into_iter().map(move |d| (s.to, d)))
            .collect()
    }
}

impl UdpSend for FakeUdp {
    fn send(&self, buf: &[u8], dst: SocketAddr, src: &mut SourceAddr) -> std::io::Result<()> {
        self.record(buf, None, dst, src)
    }

    fn send_segments(
        &self,
        buf: &[u8],
        segment: u16,
        dst: SocketAddr,
        src: &mut SourceAddr,
    ) -> std::io::Result<()> {
        self.record(buf, Some(segment), dst, src)
    }

    fn send_ttl(&self, buf: &[u8], dst: SocketAddr, ttl: u8) -> std::io::Result<()> {
        self.record_ttl(buf, None, dst, &mut SourceAddr::None, Some(ttl))
    }
}

/// An in-memory TUN device: records every packet written.
#[derive(Default)]
struct FakeTun {
    written: RefCell<Vec<Vec<u8>>>,
}

impl TunWrite for FakeTun {
    fn write(&self, packet: &[u8]) -> std::io::Result<usize> {
        self.written.borrow_mut().push(packet.to_vec());
        Ok(packet.len())
    }
}

/// The loop's egress on fakes, with a crypto pool of `workers` (always used).
fn egress(udp: FakeUdp, workers: usize, vnet: bool) -> Egress<FakeTun, FakeUdp> {
    let pool = Pool::new(workers);
    pool.set_enabled(workers > 0);
    Egress {
        tun: FakeTun::default(),
        udp: Some(udp),
        tx: TxBatch::new(portdistrict_aead::available()),
        pool,
        offload: Offload::new(vnet, true),
        xdp: None,
    }
}

fn ep(last: u8) -> Endpoint {
    Endpoint {
        addr: SocketAddr::from(([192, 0, 2, last], 51820)),
        local: None,
    }
}

/// A datagram of `len` bytes that says which one it is (`id`).
fn datagram(id: u16, len: usize) -> Vec<u8> {
    let mut d = vec![0xd0; len];
    d[..2].copy_from_slice(&id.to_le_bytes());
    d
}

/// Sends `datagrams` (endpoint, bytes) through one sink, i.e. one wake-up; returns
/// what the fake sockets saw before the sink was dropped, and the egress.
fn one_wakeup(
    udp: FakeUdp,
    datagrams: &[(Endpoint, Vec<u8>)],
) -> (Vec<Sent>, Egress<FakeTun, FakeUdp>) {
    let mut eg = egress(udp, 0, false);
    let before_end;
    {
        let (mut io, _) = eg.sink();
        for (to, d) in datagrams {
            assert_eq!(io.send_udp(to, d), SendOutcome::Sent);
        }
        before_end = io.udp.map(FakeUdp::sends).unwrap_or_default();
    }
    (before_end, eg)
}

fn udp_of(eg: &Egress<FakeTun, FakeUdp>) -> &FakeUdp {
    eg.udp.as_ref().expect("fake sockets")
}

#[test]
fn datagrams_to_one_endpoint_leave_together_in_order_when_the_wakeup_ends() {
    let input: Vec<_> = (0..10).map(|i| (ep(2), datagram(i, 120))).collect();
    let (early, eg) = one_wakeup(FakeUdp::default(), &input);
    assert!(early.is_empty(), "nothing leaves before the wake-up ends");
    let sends = udp_of(&eg).sends();
    assert_eq!(sends.len(), 1, "one GSO send");
    assert_eq!(sends[0].segment, Some(120));
    assert_eq!(sends[0].to, ep(2).addr);
    let got: Vec<_> = udp_of(&eg).datagrams();
    let want: Vec<_> = input.iter().map(|(e, d)| (e.addr, d.clone())).collect();
    assert_eq!(got, want);
}

#[test]
fn a_single_datagram_is_a_plain_send() {
    let (_, eg) = one_wakeup(FakeUdp::default(), &[(ep(2), datagram(0, 80))]);
    let sends = udp_of(&eg).sends();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].segment, None);
}

#[test]
fn another_endpoint_flushes_the_batch_and_order_is_kept() {
    let input = vec![
        (ep(2), datagram(0, 100)),
        (ep(2), datagram(1, 100)),
        (ep(3), datagram(2, 100)),
        (ep(2), datagram(3, 100)),
    ];
    let (early, eg) = one_wakeup(FakeUdp::default(), &input);
    assert_eq!(
        early.len(),
        2,
        "the first two sends left when the endpoint changed"
    );
    let sends = udp_of(&eg).sends();
    let shape: Vec<_> = sends.iter().map(|s| (s.to, s.datagrams().len())).collect();
    assert_eq!(
        shape,
        vec![(ep(2).addr, 2), (ep(3).addr, 1), (ep(2).addr, 1)]
    );
    let want: Vec<_> = input.iter().map(|(e, d)| (e.addr, d.clone())).collect();
    assert_eq!(udp_of(&eg).datagrams(), want);
}

#[test]
fn a_shorter_datagram_closes_the_batch_and_a_longer_one_starts_another() {
    let input = vec![
        (ep(2), datagram(0, 100)),
        (ep(2), datagram(1, 100)),
        (ep(2), datagram(2, 60)),
        (ep(2), datagram(3, 100)),
        (ep(2), datagram(4, 140)),
    ];
    let (_, eg) = one_wakeup(FakeUdp::default(), &input);
    let sends = udp_of(&eg).sends();
    let shape: Vec<_> = sends.iter().map(|s| (s.segment, s.bytes.len())).collect();
    // 100+100+60 as one GSO send (only the last may be shorter), then the 100 alone
    // (140 does not fit its segment size), then the 140.
    assert_eq!(shape, vec![(Some(100), 260), (None, 100), (None, 140)]);
    let want: Vec<_> = input.iter().map(|(e, d)| (e.addr, d.clone())).collect();
    assert_eq!(udp_of(&eg).datagrams(), want);
}

#[test]
fn a_full_batch_is_flushed_by_count_and_by_bytes() {
    // By count: the kernel's 64 segments.
    let input: Vec<_> = (0..GSO_MAX_SEGMENTS as u16 + 1)
        .map(|i| (ep(2), datagram(i, 100)))
        .collect();
    let (early, eg) = one_wakeup(FakeUdp::default(), &input);
    assert_eq!(
        early.len(),
        1,
        "the full batch left before the 65th datagram"
    );
    assert_eq!(early[0].datagrams().len(), GSO_MAX_SEGMENTS);
    assert_eq!(udp_of(&eg).sends().len(), 2);
    // By bytes: 1,400-byte datagrams fill GSO_MAX_BYTES after 46.
    let per = GSO_MAX_BYTES / 1400;
    let input: Vec<_> = (0..50).map(|i| (ep(2), datagram(i, 1400))).collect();
    let (early, eg) = one_wakeup(FakeUdp::default(), &input);
    assert_eq!(early.len(), 1);
    assert_eq!(early[0].datagrams().len(), per);
    assert!(early[0].bytes.len() <= GSO_MAX_BYTES);
    let want: Vec<_> = input.iter().map(|(e, d)| (e.addr, d.clone())).collect();
    assert_eq!(udp_of(&eg).datagrams(), want);
}

#[test]
fn a_jumbo_datagram_flushes_what_waits_and_leaves_at_once() {
    let input = vec![
        (ep(2), datagram(0, 100)),
        (ep(2), datagram(1, 100)),
        (ep(2), datagram(2, GSO_MAX_BYTES / 2 + 1)),
    ];
    let (early, eg) = one_wakeup(FakeUdp::default(), &input);
    assert_eq!(early.len(), 2, "both left before the wake-up ended");
    assert_eq!(early[1].segment, None);
    let want: Vec<_> = input.iter().map(|(e, d)| (e.addr, d.clone())).collect();
    assert_eq!(udp_of(&eg).datagrams(), want);
}

#[test]
fn refused_sends_and_refused_sources_are_counted() {
    let failing = FakeUdp {
        fail: true,
        ..FakeUdp::default()
    };
    let input: Vec<_> = (0..5).map(|i| (ep(2), datagram(i, 100))).collect();
    let (_, eg) = one_wakeup(failing, &input);
    assert_eq!(eg.tx.failed, 5);

    let refusing = FakeUdp {
        refuse_source: true,
        ..FakeUdp::default()
    };
    let mut from = ep(2);
    from.local = Some(LocalAddr {
        ip: [192, 0, 2, 1].into(),
        ifindex: 3,
    });
    let (_, eg) = one_wakeup(
        refusing,
        &[(from, datagram(0, 100)), (ep(3), datagram(1, 100))],
    );
    assert_eq!(eg.tx.sources_cleared, vec![from.addr]);
}

/// A data message laid out for sealing (header with `counter`, `plain` bytes of
/// plaintext, room for the tag).
fn prepared(counter: u64, plain: usize) -> Vec<u8> {
    let mut m = vec![b'A' + (counter % 26) as u8; DATA_MIN_LEN + plain];
    m[..DATA_HEADER_LEN].fill(0);
    m[0] = 4;
    m[8..16].copy_from_slice(&counter.to_le_bytes());
    m
}

#[test]
fn data_messages_are_sealed_when_the_batch_leaves_and_keep_their_order() {
    for workers in [0, 2] {
        let key = Arc::new(AeadKey::new(&[7u8; 32]));
        let mut eg = egress(FakeUdp::default(), workers, false);
        let n = 40u64;
        {
            let (mut io, _) = eg.sink();
            for c in 0..n {
                let mut m = prepared(c, 96);
                assert_eq!(io.send_data(&ep(2), &mut m, &key), SendOutcome::Sent);
            }
            assert!(io.udp.unwrap().sends().is_empty());
        }
        let got = udp_of(&eg).datagrams();
        assert_eq!(got.len(), n as usize, "workers {workers}");
        for (i, (_, mut d)) in got.into_iter().enumerate() {
            let counter = u64::from_le_bytes(d[8..16].try_into().unwrap());
            assert_eq!(counter, i as u64, "workers {workers}: order");
            assert!(
                portdistrict_wg::session::open_with(&key, &mut d).is_ok(),
                "workers {workers}: message {i} sealed under its key"
            );
        }
        assert_eq!(eg.tx.seal_dropped, 0);
    }
}

#[test]
fn a_message_that_cannot_be_sealed_is_taken_out_and_the_rest_keep_order() {
    let key = Arc::new(AeadKey::new(&[7u8; 32]));
    let mut eg = egress(FakeUdp::default(), 0, false);
    {
        let (mut io, _) = eg.sink();
        for c in 0..6u64 {
            let mut m = prepared(c, 64);
            if c == 3 {
                m[0] = 1; // not a prepared data message: refused by the sealer
            }
            io.send_data(&ep(2), &mut m, &key);
        }
    }
    let counters: Vec<u64> = udp_of(&eg)
        .datagrams()
        .iter()
        .map(|(_, d)| u64::from_le_bytes(d[8..16].try_into().unwrap()))
        .collect();
    assert_eq!(counters, vec![0, 1, 2, 4, 5]);
    assert_eq!(eg.tx.seal_dropped, 1);
}

/// The protocol's outputs of the sending side, captured.
#[derive(Default)]
struct Capture {
    sent: Vec<Vec<u8>>,
}

impl Io for Capture {
    fn send_udp(&mut self, _to: &Endpoint, datagram: &[u8]) -> SendOutcome {
        self.sent.push(datagram.to_vec());
        SendOutcome::Sent
    }
    fn write_tun(&mut self, _packet: &[u8]) {}
}

const A_ADDR: &str = "192.0.2.1:51820";
const B_ADDR: &str = "192.0.2.2:51820";

/// An IPv4 packet from 10.0.0.1 to 10.0.0.2 of `len` bytes that says which one it
/// is (`id`).
fn ipv4(id: u16, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    p
}

fn configure(dev: &mut Device, now: Instant, text: &str) {
    let Ok(Request::Set(req)) = parse_request(text) else {
        panic!("bad test config {text}")
    };
    dev.apply(now, &req, &mut Capture::default());
}

/// Two devices with a confirmed session: A sends to B.
fn session() -> (Device, Device, Instant) {
    let now = Instant::now();
    let epoch = (now, Duration::from_secs(1_700_000_000));
    let mut a = Device::new([1; 32], epoch, 1420);
    let mut b = Device::new([2; 32], epoch, 1420);
    let (ka, kb) = (
        PrivateKey::from_bytes([1; 32]),
        PrivateKey::from_bytes([2; 32]),
    );
    configure(
        &mut a,
        now,
        &format!(
            "set=1\nprivate_key={}\npublic_key={}\nendpoint={B_ADDR}\nallowed_ip=10.0.0.2/32\n\n",
            ka.to_hex(),
            kb.public_key().to_hex()
        ),
    );
    configure(
        &mut b,
        now,
        &format!(
            "set=1\nprivate_key={}\npublic_key={}\nallowed_ip=10.0.0.1/32\n\n",
            kb.to_hex(),
            ka.public_key().to_hex()
        ),
    );
    let (mut wa, mut wb) = (Capture::default(), Capture::default());
    a.handle_tun_packet(now, &ipv4(0, 60), &mut wa);
    let mut init = wa.sent.pop().expect("an initiation");
    b.handle_datagram(now, A_ADDR.parse().unwrap(), None, &mut init, &mut wb);
    let mut resp = wb.sent.pop().expect("a response");
    a.handle_datagram(now, B_ADDR.parse().unwrap(), None, &mut resp, &mut wa);
    // The staged packet confirms the session at B.
    let mut first = wa.sent.pop().expect("the staged packet");
    b.handle_datagram(now, A_ADDR.parse().unwrap(), None, &mut first, &mut wb);
    (a, b, now)
}

/// `n` data messages from A, packets numbered from 1.
fn data_from_a(a: &mut Device, now: Instant, n: u16) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut wa = Capture::default();
    let packets: Vec<_> = (1..=n).map(|i| ipv4(i, 100 + usize::from(i % 7))).collect();
    for p in &packets {
        a.handle_tun_packet(now, p, &mut wa);
    }
    assert_eq!(wa.sent.len(), usize::from(n));
    (packets, wa.sent)
}

#[test]
fn received_data_reaches_the_tun_in_arrival_order() {
    for workers in [0, 2] {
        let (mut a, mut b, now) = session();
        let (packets, mut datagrams) = data_from_a(&mut a, now, 150);
        let mut eg = egress(FakeUdp::default(), workers, false);
        {
            let (mut io, _) = eg.sink();
            let pool = io.pool;
            let mut rx = RxGroup::new();
            for d in datagrams.iter_mut() {
                rx.datagram(&mut b, pool, now, A_ADDR.parse().unwrap(), None, d, &mut io);
            }
            rx.finish(&mut b, pool, now, &mut io);
        }
        assert_eq!(*eg.tun.written.borrow(), packets, "workers {workers}");
    }
}

#[test]
fn a_group_is_opened_when_full_and_not_before() {
    let (mut a, mut b, now) = session();
    let (packets, mut datagrams) = data_from_a(&mut a, now, RX_GROUP as u16 + 1);
    let mut eg = egress(FakeUdp::default(), 0, false);
    let (mut io, _) = eg.sink();
    let pool = io.pool;
    let tun = io.tun;
    let mut rx = RxGroup::new();
    let from = A_ADDR.parse().unwrap();
    for (i, d) in datagrams.iter_mut().enumerate() {
        rx.datagram(&mut b, pool, now, from, None, d, &mut io);
        let written = tun.written.borrow().len();
        if i + 1 < RX_GROUP {
            assert_eq!(written, 0, "after {} messages", i + 1);
        } else {
            assert_eq!(written, RX_GROUP, "after {} messages", i + 1);
        }
    }
    rx.finish(&mut b, pool, now, &mut io);
    assert_eq!(*tun.written.borrow(), packets);
}

#[test]
fn a_message_that_is_not_data_first_finishes_the_group() {
    let (mut a, mut b, now) = session();
    let (packets, mut datagrams) = data_from_a(&mut a, now, 5);
    let mut eg = egress(FakeUdp::default(), 0, false);
    let (mut io, _) = eg.sink();
    let pool = io.pool;
    let tun = io.tun;
    let from = A_ADDR.parse().unwrap();
    let mut rx = RxGroup::new();
    let (before, after) = datagrams.split_at_mut(3);
    for d in before.iter_mut() {
        rx.datagram(&mut b, pool, now, from, None, d, &mut io);
    }
    assert!(tun.written.borrow().is_empty(), "the group waits");
    // An initiation (not a valid one: the device drops it) ends the group first.
    let mut junk = vec![0u8; INITIATION_LEN];
    junk[0] = 1;
    rx.datagram(&mut b, pool, now, from, None, &mut junk, &mut io);
    assert_eq!(*tun.written.borrow(), packets[..3]);
    for d in after.iter_mut() {
        rx.datagram(&mut b, pool, now, from, None, d, &mut io);
    }
    rx.finish(&mut b, pool, now, &mut io);
    assert_eq!(*tun.written.borrow(), packets);
}

#[test]
fn a_malformed_super_packet_is_counted_and_goes_nowhere() {
    let (_, mut b, now) = session();
    let mut eg = egress(FakeUdp::default(), 0, true);
    {
        let (mut io, mut split) = eg.sink();
        // Shorter than a virtio-net header.
        tun_frame(&mut b, &mut split, now, &[0u8; 4], &mut io);
    }
    assert_eq!(eg.offload.malformed, 1);
    assert!(udp_of(&eg).sends().is_empty());
}

#[test]
fn a_probe_leaves_after_the_batch_on_its_own_send_with_its_ttl() {
    let mut eg = egress(FakeUdp::default(), 0, false);
    let probe_to = SocketAddr::from(([198, 51, 100, 7], 40000));
    {
        let (mut io, _) = eg.sink();
        for i in 0..3 {
            assert_eq!(io.send_udp(&ep(2), &datagram(i, 100)), SendOutcome::Sent);
        }
        assert_eq!(
            io.send_udp_ttl(probe_to, &datagram(9, INITIATION_LEN), 1),
            SendOutcome::Sent
        );
        assert_eq!(io.send_udp(&ep(2), &datagram(4, 100)), SendOutcome::Sent);
    }
    let sends = udp_of(&eg).sends();
    let shape: Vec<_> = sends
        .iter()
        .map(|s| (s.to, s.segment, s.ttl, s.bytes.len()))
        .collect();
    assert_eq!(
        shape,
        [
            (ep(2).addr, Some(100), None, 300),
            (probe_to, None, Some(1), INITIATION_LEN),
            (ep(2).addr, None, None, 100),
        ],
        "the batch before the probe left first; the probe alone, with TTL 1"
    );
    let failing = FakeUdp {
        fail: true,
        ..FakeUdp::default()
    };
    let mut eg = egress(failing, 0, false);
    let (mut io, _) = eg.sink();
    assert_eq!(
        io.send_udp_ttl(probe_to, &datagram(0, 64), 0),
        SendOutcome::Failed
    );
}
