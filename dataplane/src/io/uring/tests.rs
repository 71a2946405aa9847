//! Tests of the io_uring reactor and the `recvmmsg` fallback, each in a fresh network
//! namespace (root only).

use super::*;
use crate::io::poll::{poll_fds, EventFd, PollFd};
use crate::io::testutil::{in_fresh_netns, ip};
use crate::io::{Tun, UdpSockets};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsFd;
use std::time::Instant;

/// An owned copy of a [`Completion`], for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Tun(Vec<u8>),
    Udp {
        family: usize,
        data: Vec<u8>,
        from: SocketAddr,
        local: SourceAddr,
        segment: Option<u16>,
    },
    Readable(usize),
    TunError(Option<i32>),
}

impl From<Completion<'_>> for Got {
    fn from(c: Completion<'_>) -> Got {
        match c {
            Completion::Tun(b) => Got::Tun(b.to_vec()),
            Completion::Udp {
                family,
                data,
                from,
                local,
                segment,
            } => Got::Udp {
                family,
                data: data.to_vec(),
                from,
                local,
                segment,
            },
            Completion::Readable(i) => Got::Readable(i),
            Completion::TunError(e) => Got::TunError(e.raw_os_error()),
        }
    }
}

/// Runs the reactor until `done` holds for everything collected, or panics after 5 s.
fn collect_until(reactor: &mut Reactor, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while !done(&got) {
        assert!(Instant::now() < deadline, "timed out; got {got:?}");
        reactor
            .run_once(Duration::from_millis(100), |c| got.push(Got::from(c)))
            .unwrap();
    }
    got
}

/// Everything completed within `time`.
fn collect_for(reactor: &mut Reactor, time: Duration) -> Vec<Got> {
    let deadline = Instant::now() + time;
    let mut got = Vec::new();
    while Instant::now() < deadline {
        reactor
            .run_once(Duration::from_millis(20), |c| got.push(Got::from(c)))
            .unwrap();
    }
    got
}

/// The UDP payloads among `got`, GRO batches split into their datagrams.
fn datagrams(got: &[Got]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for g in got {
        if let Got::Udp { data, segment, .. } = g {
            let seg = segment.map_or(data.len().max(1), usize::from);
            out.extend(data.chunks(seg).map(<[u8]>::to_vec));
        }
    }
    out
}

fn small_config() -> ReactorConfig {
    ReactorConfig {
        tun_buffer: 10 + 65_536,
        udp_buffers: 16,
        udp_payload: 65_536,
    }
}

/// A TUN with a virtio-net header, `10.78.0.1/24`, up.
fn tun_up(name: &str) -> Tun {
    let tun = Tun::create_offloaded(name).unwrap();
    ip(&["addr", "add", "10.78.0.1/24", "dev", name]);
    ip(&["link", "set", name, "up"]);
    tun
}

/// A TUN left down: it queues nothing, so only UDP and extra fds complete.
fn tun_down(name: &str) -> Tun {
    Tun::create_offloaded(name).unwrap()
}

fn udp_reactor(tun: &Tun, udp: &UdpSockets, cfg: ReactorConfig) -> Reactor {
    Reactor::new(tun.as_fd(), [udp.v4_fd(), udp.v6_fd()], &[], cfg).unwrap()
}

#[test]
fn available_on_this_kernel() {
    Reactor::probe().unwrap();
    assert!(Reactor::available());
}

#[test]
fn tun_reads_complete_with_vnet_header_and_rearm() {
    in_fresh_netns(|| {
        let tun = tun_up("pdur0");
        let mut reactor = Reactor::new(tun.as_fd(), [None, None], &[], small_config()).unwrap();
        let sock = UdpSocket::bind("10.78.0.1:0").unwrap();
        let count = 50; // many more than the one read in flight
        for i in 0..count {
            let msg = format!("via-tun-{i}");
            sock.send_to(msg.as_bytes(), "10.78.0.2:5555").unwrap();
        }
        let is_ours = |g: &Got| matches!(g, Got::Tun(b) if b.len() > 10 + 28 && b[10] >> 4 == 4 && b[10 + 9] == 17);
        let got = collect_until(&mut reactor, |got| {
            got.iter().filter(|g| is_ours(g)).count() >= count
        });
        let packets: Vec<&Vec<u8>> = got
            .iter()
            .filter(|g| is_ours(g))
            .map(|g| match g {
                Got::Tun(b) => b,
                _ => unreachable!(),
            })
            .collect();
        for (i, pkt) in packets.iter().enumerate() {
            assert_eq!(pkt[1], 0, "vnet gso_type NONE for a small packet");
            let ip_pkt = &pkt[10..];
            let total = usize::from(u16::from_be_bytes([ip_pkt[2], ip_pkt[3]]));
            assert_eq!(
                total,
                ip_pkt.len(),
                "one whole IPv4 packet after the header"
            );
            assert_eq!(&ip_pkt[16..20], &[10, 78, 0, 2], "destination");
            assert_eq!(
                &ip_pkt[28..],
                format!("via-tun-{i}").as_bytes(),
                "payload, in order"
            );
        }
    });
}

#[test]
fn udp_datagrams_carry_sender_and_local_address() {
    in_fresh_netns(|| {
        let tun = tun_down("pdur1");
        let udp = UdpSockets::bind(0, 0).unwrap();
        let mut reactor = udp_reactor(&tun, &udp, small_config());
        for (addr, family) in [("127.0.0.1", 0), ("::1", 1)] {
            let sender = UdpSocket::bind((addr, 0)).unwrap();
            sender.send_to(b"hello", (addr, udp.port())).unwrap();
            let got = collect_until(&mut reactor, |g| !g.is_empty());
            let ip = addr.parse().unwrap();
            let local = match ip {
                std::net::IpAddr::V4(addr) => SourceAddr::V4 { addr, ifindex: 1 },
                std::net::IpAddr::V6(addr) => SourceAddr::V6 { addr, ifindex: 1 },
            };
            let expected = Got::Udp {
                family,
                data: b"hello".to_vec(),
                from: sender.local_addr().unwrap(),
                local,
                segment: None,
            };
            assert_eq!(got, vec![expected]);
        }
    });
}

#[test]
fn many_datagrams_complete_in_one_turn() {
    in_fresh_netns(|| {
        let tun = tun_down("pdur2");
        let udp = UdpSockets::bind(0, 0).unwrap();
        let cfg = ReactorConfig {
            udp_buffers: 256,
            ..small_config()
        };
        let mut reactor = udp_reactor(&tun, &udp, cfg);
        // Arm the multishot before the datagrams arrive.
        reactor.run_once(Duration::ZERO, |_| {}).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..200u32 {
            sender
                .send_to(&i.to_be_bytes(), ("127.0.0.1", udp.port()))
                .unwrap();
        }
        let mut per_turn = Vec::new();
        let mut total = 0;
        while total < 200 && per_turn.len() < 100 {
            let mut n = 0;
            reactor
                .run_once(Duration::from_millis(100), |c| {
                    n += usize::from(matches!(c, Completion::Udp { .. }))
                })
                .unwrap();
            per_turn.push(n);
            total += n;
        }
        println!("datagrams per run_once: {per_turn:?}");
        assert_eq!(total, 200);
        assert!(
            per_turn.iter().any(|n| *n >= 16),
            "no batching: {per_turn:?}"
        );
    });
}

#[test]
fn provided_buffers_are_recycled() {
    in_fresh_netns(|| {
        let tun = tun_down("pdur3");
        let udp = UdpSockets::bind(0, 0).unwrap();
        let cfg = ReactorConfig {
            udp_buffers: 8,
            ..small_config()
        };
        let mut reactor = udp_reactor(&tun, &udp, cfg);
        let sender = UdpSocket::bind("::1:0").unwrap();
        let count = 80u32; // ten times the ring
        for i in 0..count {
            sender
                .send_to(&i.to_be_bytes(), ("::1", udp.port()))
                .unwrap();
        }
        let got = collect_until(&mut reactor, |g| datagrams(g).len() >= count as usize);
        let mut seen: Vec<u32> = datagrams(&got)
            .iter()
            .map(|d| u32::from_be_bytes(d[..4].try_into().unwrap()))
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..count).collect::<Vec<_>>());
        assert!(got.iter().all(|g| matches!(g, Got::Udp { family: 1, .. })));
        assert_eq!(reactor.truncated(), 0);
    });
}

#[test]
fn gso_send_arrives_as_one_gro_message() {
    in_fresh_netns(|| {
        let tun = tun_down("pdur4");
        let a = UdpSockets::bind(0, 0).unwrap();
        let b = UdpSockets::bind(0, 0).unwrap();
        let mut reactor = udp_reactor(&tun, &b, small_config());
        let buf: Vec<u8> = (0..350u32).map(|i| i as u8).collect();
        let dst = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), b.port());
        a.send_segments(&buf, 100, dst, &mut SourceAddr::None)
            .unwrap();
        let got = collect_until(&mut reactor, |g| datagrams(g).concat().len() >= 350);
        assert_eq!(datagrams(&got).concat(), buf);
        match got.as_slice() {
            [Got::Udp { segment, data, .. }] => {
                assert_eq!(*segment, Some(100));
                assert_eq!(data.len(), 350);
            }
            other => panic!("expected one coalesced message, got {other:?}"),
        }
    });
}

#[test]
fn oversized_datagram_is_dropped_and_counted() {
    in_fresh_netns(|| {
        let tun = tun_down("pdur5");
        let udp = UdpSockets::bind(0, 0).unwrap();
        let cfg = ReactorConfig {
            udp_payload: 100,
            ..small_config()
        };
        let mut reactor = udp_reactor(&tun, &udp, cfg);
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender
            .send_to(&[7; 300], ("127.0.0.1", udp.port()))
            .unwrap();
        sender.send_to(b"fits", ("127.0.0.1", udp.port())).unwrap();
        let got = collect_until(&mut reactor, |g| !g.is_empty());
        assert_eq!(datagrams(&got), vec![b"fits".to_vec()]);
        assert_eq!(reactor.truncated(), 1);
    });
}

#[test]
fn deleted_interface_is_reported_once_as_ebadfd() {
    in_fresh_netns(|| {
        let tun = tun_up("pdur6");
        let mut reactor = Reactor::new(tun.as_fd(), [None, None], &[], small_config()).unwrap();
        reactor.run_once(Duration::ZERO, |_| {}).unwrap();
        ip(&["link", "del", "pdur6"]);
        let got = collect_until(&mut reactor, |g| {
            g.iter().any(|g| matches!(g, Got::TunError(_)))
        });
        let errors: Vec<&Got> = got
            .iter()
            .filter(|g| matches!(g, Got::TunError(_)))
            .collect();
        assert_eq!(errors, vec![&Got::TunError(Some(libc::EBADFD))]);
        let later = collect_for(&mut reactor, Duration::from_millis(200));
        assert!(later.is_empty(), "{later:?}");
    });
}

#[test]
fn extra_fd_readiness_is_level_triggered() {
    in_fresh_netns(|| {
        let tun = tun_down("pdur7");
        let other = EventFd::new().unwrap();
        let efd = EventFd::new().unwrap();
        let extra = [other.fd(), efd.fd()];
        let mut reactor = Reactor::new(tun.as_fd(), [None, None], &extra, small_config()).unwrap();
        assert!(collect_for(&mut reactor, Duration::from_millis(50)).is_empty());
        efd.signal().unwrap();
        let got = collect_until(&mut reactor, |g| !g.is_empty());
        assert_eq!(got, vec![Got::Readable(1)]);
        // Not read yet: reported again.
        let got = collect_until(&mut reactor, |g| !g.is_empty());
        assert_eq!(got, vec![Got::Readable(1)]);
        assert_eq!(efd.drain().unwrap(), 1);
        let got = collect_for(&mut reactor, Duration::from_millis(200));
        assert!(got.is_empty(), "read empty, yet {got:?}");
    });
}

#[test]
fn set_udp_moves_receiving_to_the_new_sockets() {
    in_fresh_netns(|| {
        let tun = tun_down("pdur8");
        let old = UdpSockets::bind(0, 0).unwrap();
        let mut reactor = udp_reactor(&tun, &old, small_config());
        reactor.run_once(Duration::ZERO, |_| {}).unwrap();
        let new = UdpSockets::bind(0, 0).unwrap();
        reactor.set_udp([new.v4_fd(), new.v6_fd()]).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(b"old", ("127.0.0.1", old.port())).unwrap();
        sender.send_to(b"new", ("127.0.0.1", new.port())).unwrap();
        let got = collect_for(&mut reactor, Duration::from_millis(300));
        assert_eq!(datagrams(&got), vec![b"new".to_vec()]);
        drop(old);
        sender
            .send_to(b"again", ("::ffff:127.0.0.1", new.port()))
            .ok();
        sender.send_to(b"again", ("127.0.0.1", new.port())).unwrap();
        let got = collect_until(&mut reactor, |g| !g.is_empty());
        assert_eq!(datagrams(&got), vec![b"again".to_vec()]);
    });
}

/// Waits until `fd` is readable (at most 5 s).
fn wait_readable(fd: BorrowedFd<'_>) {
    let mut set = [PollFd::readable(fd)];
    poll_fds(&mut set, Some(Duration::from_secs(5))).unwrap();
    assert!(set[0].revents().is_readable(), "socket not readable");
}

#[test]
fn recvmmsg_batch_reads_many_with_addresses() {
    in_fresh_netns(|| {
        let udp = UdpSockets::bind(0, 0).unwrap();
        let fd = udp.v4_fd().unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..20u8 {
            sender.send_to(&[i; 10], ("127.0.0.1", udp.port())).unwrap();
        }
        let mut batch = RecvBatch::new(8, 2048);
        let mut seen = Vec::new();
        while seen.len() < 20 {
            wait_readable(fd);
            let n = recvmmsg_batch(fd, &mut batch).unwrap();
            assert!(n <= 8 && n == batch.len());
            for i in 0..batch.len() {
                let (r, data) = batch.get(i).unwrap();
                assert_eq!(r.from, sender.local_addr().unwrap());
                let expected = SourceAddr::V4 {
                    addr: Ipv4Addr::LOCALHOST,
                    ifindex: 1,
                };
                assert_eq!(r.local, expected);
                assert_eq!(data.len(), 10);
                seen.push(data[0]);
            }
        }
        assert_eq!(seen, (0..20).collect::<Vec<u8>>());
        assert_eq!(recvmmsg_batch(fd, &mut batch).unwrap(), 0);
        assert!(batch.is_empty());
    });
}

#[test]
fn recvmmsg_batch_drops_and_counts_oversized() {
    in_fresh_netns(|| {
        let udp = UdpSockets::bind(0, 0).unwrap();
        let fd = udp.v6_fd().unwrap();
        let sender = UdpSocket::bind("::1:0").unwrap();
        sender.send_to(&[1; 100], ("::1", udp.port())).unwrap();
        sender.send_to(&[2; 16], ("::1", udp.port())).unwrap();
        let mut batch = RecvBatch::new(4, 16);
        let mut read = 0;
        while read < 2 {
            wait_readable(fd);
            read += recvmmsg_batch(fd, &mut batch).unwrap();
        }
        assert_eq!(batch.truncated(), 1);
        let (r, data) = batch.get(batch.len() - 1).unwrap();
        assert_eq!((r.len, &*data), (16, &[2u8; 16][..]));
    });
}

#[path = "bench_tests.rs"]
mod bench;
