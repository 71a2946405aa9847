//! Socket addresses and `IP_PKTINFO` / `IPV6_PKTINFO` control messages, converted
//! between Rust types and the C structs `sendmsg(2)` / `recvmsg(2)` use.
//!
//! Everything works on stack buffers: the UDP send path must not allocate.

use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The local address (and interface index) a datagram arrived on, remembered per peer
/// so that replies leave from the address the peer reached us on ("sticky" source).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceAddr {
    /// No remembered source: the kernel's route selection picks one.
    #[default]
    None,
    /// An IPv4 local address; `ifindex` is where it arrived (not used when sending:
    /// forcing the interface would defeat policy routing).
    V4 {
        /// The local address.
        addr: Ipv4Addr,
        /// The interface the datagram arrived on.
        ifindex: u32,
    },
    /// An IPv6 local address; `ifindex` is used when sending (link-local scope needs it).
    V6 {
        /// The local address.
        addr: Ipv6Addr,
        /// The interface the datagram arrived on.
        ifindex: u32,
    },
}

impl SourceAddr {
    /// Whether this source can be used for a datagram to `dst` (same family, or none).
    pub fn fits(&self, dst: &SocketAddr) -> bool {
        matches!(
            (self, dst),
            (SourceAddr::None, _)
                | (SourceAddr::V4 { .. }, SocketAddr::V4(_))
                | (SourceAddr::V6 { .. }, SocketAddr::V6(_))
        )
    }
}

/// Room for the control messages we send or expect (one pktinfo, plus slack for
/// anything else the kernel adds), aligned for `cmsghdr`.
#[repr(C, align(8))]
pub(crate) struct CmsgBuf(pub(crate) [u8; 128]);

impl CmsgBuf {
    /// A zeroed buffer.
    pub(crate) fn new() -> CmsgBuf {
        CmsgBuf([0; 128])
    }
}

/// `addr` as a `sockaddr_storage` and its length.
pub(crate) fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: `sockaddr_storage` is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sockaddr_storage` is larger than and aligned for `sockaddr_in`.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: `sockaddr_storage` is larger than and aligned for `sockaddr_in6`.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The address in `storage` (first `len` bytes valid), if it is IPv4 or IPv6.
pub(crate) fn from_sockaddr(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a `sockaddr_in`, `len` says it
            // is complete, and `sockaddr_storage` is aligned for it.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for `sockaddr_in6`.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes the pktinfo control message selecting `src` into `buf`; returns the number
/// of control bytes to pass as `msg_controllen` (0 for [`SourceAddr::None`]).
///
/// IPv4 sets `ipi_spec_dst = addr` and `ipi_ifindex = 0` (route lookup picks the
/// interface, as wireguard-go does); IPv6 sets `ipi6_addr` and `ipi6_ifindex`.
pub(crate) fn write_pktinfo(buf: &mut CmsgBuf, src: SourceAddr) -> usize {
    match src {
        SourceAddr::None => 0,
        SourceAddr::V4 { addr, .. } => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(addr.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            write_cmsg(buf, libc::IPPROTO_IP, libc::IP_PKTINFO, info)
        }
        SourceAddr::V6 { addr, ifindex } => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: addr.octets(),
                },
                ipi6_ifindex: ifindex,
            };
            write_cmsg(buf, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, info)
        }
    }
}

/// Writes one control message carrying `data` at the start of `buf`.
fn write_cmsg<T: Copy>(buf: &mut CmsgBuf, level: libc::c_int, ty: libc::c_int, data: T) -> usize {
    write_cmsg_at(buf, 0, level, ty, data)
}

/// Writes one control message carrying `data` at `offset` (a multiple of the cmsg
/// alignment) in `buf`; returns the space it took.
fn write_cmsg_at<T: Copy>(
    buf: &mut CmsgBuf,
    offset: usize,
    level: libc::c_int,
    ty: libc::c_int,
    data: T,
) -> usize {
    let data_len = mem::size_of::<T>() as libc::c_uint;
    // SAFETY: CMSG_SPACE and CMSG_LEN only compute sizes.
    let (space, len) = unsafe { (libc::CMSG_SPACE(data_len), libc::CMSG_LEN(data_len)) };
    let space = space as usize;
    assert!(
        offset.is_multiple_of(8) && offset + space <= buf.0.len(),
        "control buffer too small for the control messages"
    );
    let hdr = libc::cmsghdr {
        cmsg_len: len as _,
        cmsg_level: level,
        cmsg_type: ty,
    };
    // SAFETY: `offset + space <= buf.0.len()` (asserted), so the pointer stays in bounds.
    let base = unsafe { buf.0.as_mut_ptr().add(offset) };
    // SAFETY: `buf` holds at least CMSG_SPACE(size_of::<T>()) bytes after `offset`
    // (checked above) and is 8-byte aligned, so the header fits at `base` and the data
    // at the offset CMSG_DATA uses (the aligned header size); writes are unaligned-safe.
    unsafe {
        std::ptr::write_unaligned(base.cast::<libc::cmsghdr>(), hdr);
        let data_ptr = base.add(cmsg_header_len());
        std::ptr::write_unaligned(data_ptr.cast::<T>(), data);
    }
    space
}

/// The aligned size of a `cmsghdr`: where a control message's data starts.
fn cmsg_header_len() -> usize {
    // SAFETY: CMSG_LEN only computes a size.
    unsafe { libc::CMSG_LEN(0) as usize }
}

/// Finds an `IP_PKTINFO` or `IPV6_PKTINFO` message among the first `len` bytes of
/// `buf` (as filled by `recvmsg`); malformed or unknown messages are skipped.
pub(crate) fn read_pktinfo(buf: &[u8], len: usize) -> SourceAddr {
    find_cmsg(buf, len, pktinfo_from).unwrap_or(SourceAddr::None)
}

/// `SOL_UDP` options for segmentation offload (linux/udp.h).
pub(crate) const UDP_SEGMENT: libc::c_int = 103;
/// `SOL_UDP` option for receive coalescing (linux/udp.h).
pub(crate) const UDP_GRO: libc::c_int = 104;

/// The segment size of a `UDP_GRO` message: the datagram read holds several
/// datagrams of this size coalesced by the kernel (the last may be shorter).
pub(crate) fn read_gro(buf: &[u8], len: usize) -> Option<u16> {
    find_cmsg(buf, len, |level, ty, data| {
        (level == libc::SOL_UDP && ty == UDP_GRO && data.len() >= 4).then(|| {
            let v = i32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
            u16::try_from(v).unwrap_or(0)
        })
    })
    .filter(|s| *s > 0)
}

/// Appends a `UDP_SEGMENT` message (GSO segment size) at `offset` in `buf`; returns
/// the new control length.
pub(crate) fn write_segment_size(buf: &mut CmsgBuf, offset: usize, size: u16) -> usize {
    offset + write_cmsg_at(buf, offset, libc::SOL_UDP, UDP_SEGMENT, size)
}

/// Appends an `IP_TTL` (IPv4) or `IPV6_HOPLIMIT` (IPv6) message at `offset` in
/// `buf`: the TTL or hop limit of this one datagram. Returns the new control length.
pub(crate) fn write_ttl(buf: &mut CmsgBuf, offset: usize, v6: bool, ttl: u8) -> usize {
    let (level, ty) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT)
    } else {
        (libc::IPPROTO_IP, libc::IP_TTL)
    };
    offset + write_cmsg_at(buf, offset, level, ty, libc::c_int::from(ttl))
}

/// Walks the control messages in the first `len` bytes of `buf` and returns the first
/// `f` accepts; malformed messages end the walk.
fn find_cmsg<T>(
    buf: &[u8],
    len: usize,
    f: impl Fn(libc::c_int, libc::c_int, &[u8]) -> Option<T>,
) -> Option<T> {
    let buf = &buf[..len.min(buf.len())];
    let header = cmsg_header_len();
    let mut offset = 0;
    while offset + header <= buf.len() {
        let hdr = read_cmsghdr(&buf[offset..]);
        // `cmsg_len` is a `size_t` on glibc but a `socklen_t` on musl.
        #[allow(clippy::unnecessary_cast)]
        let cmsg_len = hdr.cmsg_len as usize;
        if cmsg_len < header || cmsg_len > buf.len() - offset {
            break;
        }
        let data = &buf[offset + header..offset + cmsg_len];
        if let Some(v) = f(hdr.cmsg_level, hdr.cmsg_type, data) {
            return Some(v);
        }
        offset += align_cmsg(cmsg_len);
    }
    None
}

fn read_cmsghdr(bytes: &[u8]) -> libc::cmsghdr {
    assert!(bytes.len() >= mem::size_of::<libc::cmsghdr>());
    // SAFETY: `bytes` holds at least a `cmsghdr` (asserted; callers check first), which
    // is plain old data, and the read is unaligned-safe.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<libc::cmsghdr>()) }
}

/// Rounds a control-message length up to the alignment of the next header.
fn align_cmsg(len: usize) -> usize {
    let align = mem::size_of::<libc::size_t>();
    (len + align - 1) & !(align - 1)
}

fn pktinfo_from(level: libc::c_int, ty: libc::c_int, data: &[u8]) -> Option<SourceAddr> {
    match (level, ty) {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
            if data.len() >= mem::size_of::<libc::in_pktinfo>() =>
        {
            // SAFETY: `data` holds a whole `in_pktinfo` (plain old data); unaligned read.
            let info: libc::in_pktinfo = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
            Some(SourceAddr::V4 {
                addr: Ipv4Addr::from(info.ipi_spec_dst.s_addr.to_ne_bytes()),
                ifindex: info.ipi_ifindex as u32,
            })
        }
        (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO)
            if data.len() >= mem::size_of::<libc::in6_pktinfo>() =>
        {
            // SAFETY: `data` holds a whole `in6_pktinfo` (plain old data); unaligned read.
            let info: libc::in6_pktinfo = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
            Some(SourceAddr::V6 {
                addr: Ipv6Addr::from(info.ipi6_addr.s6_addr),
                ifindex: info.ipi6_ifindex,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trips_both_families() {
        let addrs: [SocketAddr; 3] = [
            "192.0.2.7:51820".parse().unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 7, 0x12345, 3)),
        ];
        for addr in addrs {
            let (storage, len) = to_sockaddr(&addr);
            assert_eq!(from_sockaddr(&storage, len), Some(addr));
        }
    }

    #[test]
    fn sockaddr_port_is_network_order() {
        let (storage, _) = to_sockaddr(&"10.0.0.1:258".parse().unwrap());
        // SAFETY: `storage` was filled as a `sockaddr_in` by `to_sockaddr`.
        let sin =
            unsafe { &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
        assert_eq!(sin.sin_port.to_ne_bytes(), [1, 2]);
        assert_eq!(sin.sin_addr.s_addr.to_ne_bytes(), [10, 0, 0, 1]);
    }

    #[test]
    fn short_or_unknown_sockaddr_is_none() {
        let (storage, _) = to_sockaddr(&"[::1]:1".parse().unwrap());
        assert_eq!(from_sockaddr(&storage, 8), None);
        // SAFETY: all-zero `sockaddr_storage` is valid (family AF_UNSPEC).
        let zero: libc::sockaddr_storage = unsafe { mem::zeroed() };
        assert_eq!(from_sockaddr(&zero, 128), None);
    }

    #[test]
    fn pktinfo_round_trips() {
        let sources = [
            SourceAddr::V4 {
                addr: Ipv4Addr::new(198, 51, 100, 9),
                ifindex: 0,
            },
            SourceAddr::V6 {
                addr: "fe80::9".parse().unwrap(),
                ifindex: 4,
            },
        ];
        for src in sources {
            let mut buf = CmsgBuf::new();
            let len = write_pktinfo(&mut buf, src);
            assert!(len > 0);
            assert_eq!(read_pktinfo(&buf.0, len), src);
        }
        let mut buf = CmsgBuf::new();
        assert_eq!(write_pktinfo(&mut buf, SourceAddr::None), 0);
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn ttl_messages_golden_layout() {
        let mut buf = CmsgBuf::new();
        let len = write_ttl(&mut buf, 0, false, 1);
        assert_eq!(len, 24, "CMSG_SPACE(4) on 64-bit");
        let hdr = read_cmsghdr(&buf.0);
        assert_eq!(
            (hdr.cmsg_len, hdr.cmsg_level, hdr.cmsg_type),
            (20, libc::IPPROTO_IP, libc::IP_TTL)
        );
        assert_eq!(buf.0[16..20], 1i32.to_ne_bytes());
        let len = write_ttl(&mut buf, len, true, 200);
        assert_eq!(len, 48);
        let hdr = read_cmsghdr(&buf.0[24..]);
        assert_eq!(
            (hdr.cmsg_level, hdr.cmsg_type),
            (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT)
        );
        assert_eq!(buf.0[40..44], 200i32.to_ne_bytes());
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn v4_pktinfo_golden_layout() {
        let mut buf = CmsgBuf::new();
        let src = SourceAddr::V4 {
            addr: Ipv4Addr::new(1, 2, 3, 4),
            ifindex: 9,
        };
        let len = write_pktinfo(&mut buf, src);
        assert_eq!(len, 32, "CMSG_SPACE(12) on 64-bit Linux");
        let mut golden = [0u8; 32];
        golden[..8].copy_from_slice(&28u64.to_ne_bytes()); // cmsg_len = CMSG_LEN(12)
        golden[8..12].copy_from_slice(&libc::IPPROTO_IP.to_ne_bytes());
        golden[12..16].copy_from_slice(&libc::IP_PKTINFO.to_ne_bytes());
        // ipi_ifindex 0 (never forced for IPv4), ipi_spec_dst, ipi_addr 0.
        golden[20..24].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(&buf.0[..32], &golden);
    }

    #[test]
    fn read_pktinfo_skips_garbage_and_other_messages() {
        let mut buf = CmsgBuf::new();
        let other = write_cmsg(&mut buf, libc::SOL_SOCKET, libc::SO_MARK, 7u32);
        let mut tail = CmsgBuf::new();
        let src = SourceAddr::V6 {
            addr: "2001:db8::5".parse().unwrap(),
            ifindex: 2,
        };
        let info_len = write_pktinfo(&mut tail, src);
        buf.0[other..other + info_len].copy_from_slice(&tail.0[..info_len]);
        assert_eq!(read_pktinfo(&buf.0, other + info_len), src);
        // Truncated before the pktinfo ends, a huge length, a zero length: no panic.
        let info_end = other + cmsg_header_len() + mem::size_of::<libc::in6_pktinfo>();
        assert_eq!(read_pktinfo(&buf.0, info_end), src);
        assert_eq!(read_pktinfo(&buf.0, info_end - 1), SourceAddr::None);
        let mut bad = CmsgBuf::new();
        bad.0[..8].copy_from_slice(&u64::MAX.to_ne_bytes());
        assert_eq!(read_pktinfo(&bad.0, 128), SourceAddr::None);
        assert_eq!(read_pktinfo(&CmsgBuf::new().0, 128), SourceAddr::None);
        assert_eq!(read_pktinfo(&buf.0, 3), SourceAddr::None);
    }
}
