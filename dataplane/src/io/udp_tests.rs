//! Tests of the UDP sockets, each in a fresh network namespace (root only).

use super::*;
use crate::io::testutil::{in_fresh_netns, ip};
use std::time::{Duration, Instant};

fn local(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Waits for one datagram on `sockets`' socket of `family` and returns it with its bytes.
fn recv_wait(sockets: &UdpSockets, v6: bool) -> (Received, Vec<u8>) {
    let fd = if v6 { sockets.v6_fd() } else { sockets.v4_fd() }.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Some(r) = sockets.recv(fd, &mut buf).unwrap() {
            return (r, buf[..r.len].to_vec());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("no datagram within 5 s");
}

#[test]
fn port_zero_binds_both_families_to_one_port() {
    in_fresh_netns(|| {
        let s = UdpSockets::bind(0, 0).unwrap();
        assert_ne!(s.port(), 0);
        assert_eq!(local_port(s.v4_fd().unwrap()).unwrap(), s.port());
        assert_eq!(local_port(s.v6_fd().unwrap()).unwrap(), s.port());
        assert_eq!(s.fds().count(), 2);
        let v6only = get_int(s.v6_fd().unwrap(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY);
        assert_eq!(v6only.unwrap(), 1);
    });
}

#[test]
fn explicit_port_is_used() {
    in_fresh_netns(|| {
        let s = UdpSockets::bind(51999, 0).unwrap();
        assert_eq!(s.port(), 51999);
        assert_eq!(local_port(s.v6_fd().unwrap()).unwrap(), 51999);
    });
}

#[test]
fn port_in_use_is_a_clear_error() {
    in_fresh_netns(|| {
        let first = UdpSockets::bind(0, 0).unwrap();
        let err = UdpSockets::bind(first.port(), 0).unwrap_err();
        assert!(
            matches!(err, IoError::PortInUse { port, family: "IPv4" } if port == first.port()),
            "{err:?}"
        );
        assert!(err.to_string().contains("already in use"), "{err}");
    });
}

#[test]
fn send_and_recv_report_sender_and_local_address() {
    in_fresh_netns(|| {
        let a = UdpSockets::bind(0, 0).unwrap();
        let b = UdpSockets::bind(0, 0).unwrap();
        for (addr, v6) in [("127.0.0.1", false), ("::1", true)] {
            let mut src = SourceAddr::None;
            a.send(b"hello", local(addr, b.port()), &mut src).unwrap();
            let (got, bytes) = recv_wait(&b, v6);
            assert_eq!(bytes, b"hello");
            assert_eq!(got.from, local(addr, a.port()));
            let expected = match got.from.ip() {
                std::net::IpAddr::V4(ip) => SourceAddr::V4 {
                    addr: ip,
                    ifindex: 1,
                },
                std::net::IpAddr::V6(ip) => SourceAddr::V6 {
                    addr: ip,
                    ifindex: 1,
                },
            };
            assert_eq!(got.local, expected, "arrived on lo (ifindex 1)");
            // Reply from the address it arrived on.
            let mut sticky = got.local;
            b.send(b"reply", got.from, &mut sticky).unwrap();
            assert_eq!(sticky, got.local, "a working source stays");
            let (back, bytes) = recv_wait(&a, v6);
            assert_eq!(bytes, b"reply");
            assert_eq!(back.from, local(addr, b.port()));
        }
    });
}

#[test]
fn sticky_source_selects_the_sending_address() {
    in_fresh_netns(|| {
        ip(&["addr", "add", "10.55.0.1/32", "dev", "lo"]);
        ip(&["addr", "add", "fd00:55::1/128", "dev", "lo", "nodad"]);
        let a = UdpSockets::bind(0, 0).unwrap();
        let b = UdpSockets::bind(0, 0).unwrap();
        let cases = [
            (
                "127.0.0.1",
                SourceAddr::V4 {
                    addr: "10.55.0.1".parse().unwrap(),
                    ifindex: 1,
                },
            ),
            (
                "::1",
                SourceAddr::V6 {
                    addr: "fd00:55::1".parse().unwrap(),
                    ifindex: 1,
                },
            ),
        ];
        for (dst, mut src) in cases {
            let chosen = src;
            a.send(b"x", local(dst, b.port()), &mut src).unwrap();
            assert_eq!(src, chosen);
            let (got, _) = recv_wait(&b, dst.contains(':'));
            let from_ip = match chosen {
                SourceAddr::V4 { addr, .. } => std::net::IpAddr::V4(addr),
                SourceAddr::V6 { addr, .. } => std::net::IpAddr::V6(addr),
                SourceAddr::None => unreachable!(),
            };
            assert_eq!(got.from, SocketAddr::new(from_ip, a.port()));
        }
    });
}

#[test]
fn vanished_source_falls_back_to_route_selection() {
    in_fresh_netns(|| {
        let a = UdpSockets::bind(0, 0).unwrap();
        let b = UdpSockets::bind(0, 0).unwrap();
        let cases = [
            (
                "127.0.0.1",
                SourceAddr::V4 {
                    addr: "192.0.2.77".parse().unwrap(),
                    ifindex: 0,
                },
            ),
            (
                "::1",
                SourceAddr::V6 {
                    addr: "2001:db8::77".parse().unwrap(),
                    ifindex: 1,
                },
            ),
        ];
        for (dst, mut src) in cases {
            a.send(b"fallback", local(dst, b.port()), &mut src).unwrap();
            assert_eq!(src, SourceAddr::None, "the rejected source is forgotten");
            let (got, bytes) = recv_wait(&b, dst.contains(':'));
            assert_eq!(bytes, b"fallback");
            assert_eq!(got.from, local(dst, a.port()));
        }
    });
}

#[test]
fn source_of_the_other_family_is_cleared() {
    in_fresh_netns(|| {
        let a = UdpSockets::bind(0, 0).unwrap();
        let b = UdpSockets::bind(0, 0).unwrap();
        let mut src = SourceAddr::V6 {
            addr: "::1".parse().unwrap(),
            ifindex: 1,
        };
        a.send(b"x", local("127.0.0.1", b.port()), &mut src)
            .unwrap();
        assert_eq!(src, SourceAddr::None);
        recv_wait(&b, false);
    });
}

#[test]
fn v4_mapped_destination_goes_out_as_ipv4() {
    in_fresh_netns(|| {
        let a = UdpSockets::bind(0, 0).unwrap();
        let b = UdpSockets::bind(0, 0).unwrap();
        let mut src = SourceAddr::None;
        a.send(b"m", local("::ffff:127.0.0.1", b.port()), &mut src)
            .unwrap();
        let (got, _) = recv_wait(&b, false);
        assert_eq!(got.from, local("127.0.0.1", a.port()));
    });
}

#[test]
fn empty_socket_is_none_and_oversized_datagram_is_counted() {
    in_fresh_netns(|| {
        let a = UdpSockets::bind(0, 0).unwrap();
        let b = UdpSockets::bind(0, 0).unwrap();
        let fd = b.v4_fd().unwrap();
        assert_eq!(b.recv(fd, &mut [0u8; 64]).unwrap(), None);
        let mut src = SourceAddr::None;
        a.send(&[7u8; 100], local("127.0.0.1", b.port()), &mut src)
            .unwrap();
        a.send(&[8u8; 10], local("127.0.0.1", b.port()), &mut src)
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut small = [0u8; 50];
        let got = b
            .recv(fd, &mut small)
            .unwrap()
            .expect("the 10-byte datagram");
        assert_eq!(got.len, 10);
        assert_eq!(&small[..10], &[8u8; 10]);
        assert_eq!(b.truncated(), 1);
    });
}

#[test]
fn fwmark_is_set_and_cleared() {
    in_fresh_netns(|| {
        let s = UdpSockets::bind(0, 0x51820).unwrap();
        for fd in s.fds() {
            assert_eq!(
                get_int(fd, libc::SOL_SOCKET, libc::SO_MARK).unwrap(),
                0x51820
            );
        }
        s.set_fwmark(0x99).unwrap();
        for fd in s.fds() {
            assert_eq!(get_int(fd, libc::SOL_SOCKET, libc::SO_MARK).unwrap(), 0x99);
        }
        s.set_fwmark(0).unwrap();
        for fd in s.fds() {
            assert_eq!(get_int(fd, libc::SOL_SOCKET, libc::SO_MARK).unwrap(), 0);
        }
    });
}

#[test]
fn large_buffers_are_requested() {
    in_fresh_netns(|| {
        let s = UdpSockets::bind(0, 0).unwrap();
        for fd in s.fds() {
            // The kernel doubles the value it stores; root may exceed rmem_max.
            let rcv = get_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap();
            assert!(rcv >= SOCKET_BUFFER_SIZE, "SO_RCVBUF {rcv}");
        }
    });
}

/// Receives one datagram on `fd` (blocking, with IP_RECVTTL / IPV6_RECVHOPLIMIT on)
/// and returns its bytes, its source and the TTL or hop limit it arrived with.
fn recv_with_ttl(fd: BorrowedFd<'_>) -> (Vec<u8>, SocketAddr, i32) {
    let mut buf = [0u8; 256];
    // SAFETY: `sockaddr_storage` is plain old data; all-zero is a valid value.
    let mut name: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut control = CmsgBuf::new();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `msghdr` is plain old data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    // SAFETY: every pointer in `msg` refers to a live local with its size.
    let n = cvt(unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) }).unwrap() as usize;
    let mut ttl = -1;
    // SAFETY: walking the control messages the kernel wrote into `control`, as
    // described by `msg`; each data pointer is read unaligned within its message.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let (level, ty) = ((*c).cmsg_level, (*c).cmsg_type);
            if (level, ty) == (libc::IPPROTO_IP, libc::IP_TTL)
                || (level, ty) == (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT)
            {
                ttl = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>());
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let from = from_sockaddr(&name, msg.msg_namelen).unwrap();
    (buf[..n].to_vec(), from, ttl)
}

#[test]
fn send_ttl_sets_the_ttl_of_one_datagram_from_the_bound_port() {
    in_fresh_netns(|| {
        let sender = UdpSockets::bind(0, 0).unwrap();
        let receiver = UdpSockets::bind(0, 0).unwrap();
        let r4 = receiver.v4_fd().unwrap();
        let r6 = receiver.v6_fd().unwrap();
        set_int(r4, libc::IPPROTO_IP, libc::IP_RECVTTL, 1).unwrap();
        set_int(r6, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1).unwrap();
        for (fd, dst) in [
            (r4, local("127.0.0.1", receiver.port())),
            (r6, local("::1", receiver.port())),
        ] {
            // Loopback queues the datagram before send returns: no wait needed.
            for ttl in [1u8, 7, 200] {
                sender.send_ttl(b"primer", dst, ttl).unwrap();
                let (bytes, from, got) = recv_with_ttl(fd);
                assert_eq!(
                    (bytes.as_slice(), from.port()),
                    (&b"primer"[..], sender.port())
                );
                assert_eq!(got, i32::from(ttl), "{dst}");
            }
            // TTL 0: the socket's default (64 on loopback), and the socket's own
            // setting is untouched by the sends before.
            sender.send_ttl(b"x", dst, 0).unwrap();
            assert_eq!(recv_with_ttl(fd).2, 64, "{dst}");
            let mut src = SourceAddr::None;
            sender.send(b"y", dst, &mut src).unwrap();
            assert_eq!(recv_with_ttl(fd).2, 64, "{dst}");
        }
    });
}
