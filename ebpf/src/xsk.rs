//! AF_XDP sockets in copy mode that receive the data messages the program steers
//! (`--xdp steer`): one per receive queue of each attached interface, each with its
//! own UMEM of fixed-size frames. Only the receive side is used (answers leave
//! through the UDP socket); a frame belongs to the kernel while it is on the fill
//! ring and to us from the moment the RX ring hands it over until it is put back,
//! which [`XskSocket::receive`] does after its caller is done with the batch.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

/// Bytes per UMEM frame (one page: the largest frame copy mode can fill).
pub const FRAME_SIZE: u32 = 4096;
/// Most frames one [`XskSocket::receive`] takes.
pub const BATCH: usize = 64;
/// Bytes the kernel leaves free before each packet in copy mode.
const HEADROOM: u32 = 0;
/// The longest UDP payload a frame holds after Ethernet (with two VLAN tags), IPv6
/// with room for extension headers, and UDP headers.
pub const MAX_PAYLOAD: u32 = FRAME_SIZE - 256;

#[repr(C)]
#[derive(Default)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    tx_metadata_len: u32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct RingOffset {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct MmapOffsets {
    rx: RingOffset,
    tx: RingOffset,
    fr: RingOffset,
    cr: RingOffset,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    options: u32,
}

#[repr(C)]
struct SockaddrXdp {
    family: u16,
    flags: u16,
    ifindex: u32,
    queue_id: u32,
    shared_umem_fd: u32,
}

/// One mmapped ring: producer and consumer indices and `size` entries of `T`.
struct Ring<T> {
    map: *mut libc::c_void,
    map_len: usize,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    entries: *mut T,
    mask: u32,
}

impl<T> Ring<T> {
    /// Maps the ring of `size` entries at page offset `pgoff` of `fd`.
    fn map(fd: BorrowedFd<'_>, off: &RingOffset, size: u32, pgoff: u64) -> io::Result<Self> {
        let map_len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        // SAFETY: a shared read/write mapping of the socket's ring as the kernel
        // describes it (offsets from XDP_MMAP_OFFSETS, size as configured); the
        // result is checked before use and unmapped in Drop.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                pgoff as libc::off_t,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = map.cast::<u8>();
        // SAFETY: the offsets lie inside the mapping (the kernel's layout), and the
        // producer/consumer words are 4-byte aligned u32s shared with the kernel,
        // accessed only atomically.
        unsafe {
            Ok(Ring {
                map,
                map_len,
                producer: base.add(off.producer as usize).cast(),
                consumer: base.add(off.consumer as usize).cast(),
                entries: base.add(off.desc as usize).cast(),
                mask: size - 1,
            })
        }
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into the live mapping (see `map`).
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: points into the live mapping (see `map`).
        unsafe { &*self.consumer }
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; nothing refers to it after.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// A receive-only AF_XDP socket bound to one queue of one interface.
pub struct XskSocket {
    // Field order: the rings are unmapped before the socket closes, the UMEM last.
    rx: Ring<Desc>,
    fill: Ring<u64>,
    _completion: Ring<u64>,
    fd: OwnedFd,
    umem: Umem,
    /// Per frame: whether the kernel owns it (on the fill ring or being filled).
    kernel_owned: Vec<bool>,
    /// Frames taken from the RX ring in the current batch, to be refilled.
    taken: Vec<u64>,
    ifindex: u32,
    queue: u32,
    /// Descriptors that did not name a frame the kernel owned, or overflowed it.
    pub bad_descriptors: u64,
    /// Frames handed to the caller.
    pub received: u64,
    /// Frames the caller could not parse as UDP (counted by the caller).
    pub unparsed: u64,
}

// SAFETY: the raw pointers refer to mappings owned by this value alone; moving it to
// another thread moves that ownership.
unsafe impl Send for XskSocket {}

impl std::fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskSocket")
            .field("ifindex", &self.ifindex)
            .field("queue", &self.queue)
            .finish()
    }
}

fn setsockopt<T>(fd: &OwnedFd, opt: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points at a live `T` of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl XskSocket {
    /// Opens a socket on `queue` of interface `ifindex` in copy mode, with `frames`
    /// frames (a power of two), every one of them on the fill ring.
    pub fn open(ifindex: u32, queue: u32, frames: u32) -> io::Result<Self> {
        assert!(frames.is_power_of_two(), "frames must be a power of two");
        // SAFETY: plain socket creation; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem_len = frames as usize * FRAME_SIZE as usize;
        // SAFETY: a private anonymous mapping, checked, unmapped in Drop.
        let umem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                umem_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if umem == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let umem = umem.cast::<u8>();
        let guard = Umem(umem, umem_len);
        let reg = UmemReg {
            addr: umem as u64,
            len: umem_len as u64,
            chunk_size: FRAME_SIZE,
            headroom: HEADROOM,
            ..UmemReg::default()
        };
        setsockopt(&fd, libc::XDP_UMEM_REG, &reg)?;
        setsockopt(&fd, libc::XDP_UMEM_FILL_RING, &frames)?;
        setsockopt(&fd, libc::XDP_UMEM_COMPLETION_RING, &frames)?;
        setsockopt(&fd, libc::XDP_RX_RING, &frames)?;
        let mut off = MmapOffsets::default();
        let mut len = std::mem::size_of::<MmapOffsets>() as libc::socklen_t;
        // SAFETY: `off` is writable for `len` bytes; the kernel writes the offsets.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut MmapOffsets).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let rx = Ring::<Desc>::map(fd.as_fd(), &off.rx, frames, libc::XDP_PGOFF_RX_RING as u64)?;
        let fill = Ring::<u64>::map(fd.as_fd(), &off.fr, frames, libc::XDP_UMEM_PGOFF_FILL_RING)?;
        let completion = Ring::<u64>::map(
            fd.as_fd(),
            &off.cr,
            frames,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
        )?;
        let mut s = XskSocket {
            rx,
            fill,
            _completion: completion,
            fd,
            umem: guard,
            kernel_owned: vec![false; frames as usize],
            taken: Vec::with_capacity(frames as usize),
            ifindex,
            queue,
            bad_descriptors: 0,
            received: 0,
            unparsed: 0,
        };
        s.taken
            .extend((0..u64::from(frames)).map(|i| i * u64::from(FRAME_SIZE)));
        s.refill();
        let addr = SockaddrXdp {
            family: libc::AF_XDP as u16,
            flags: libc::XDP_COPY,
            ifindex,
            queue_id: queue,
            shared_umem_fd: 0,
        };
        // SAFETY: `addr` is a valid sockaddr_xdp of the size passed.
        let r = unsafe {
            libc::bind(
                s.fd.as_raw_fd(),
                (&addr as *const SockaddrXdp).cast(),
                std::mem::size_of::<SockaddrXdp>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(s)
    }

    /// The socket (poll it for readability; put it in the program's socket map).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The interface and queue it is bound to.
    pub fn binding(&self) -> (u32, u32) {
        (self.ifindex, self.queue)
    }

    /// Puts every frame of `taken` back on the fill ring.
    fn refill(&mut self) {
        let size = self.fill.mask + 1;
        let prod = self.fill.producer().load(Ordering::Relaxed);
        let cons = self.fill.consumer().load(Ordering::Acquire);
        let free = size - prod.wrapping_sub(cons);
        let n = (self.taken.len() as u32).min(free);
        for (i, addr) in self.taken.drain(..n as usize).enumerate() {
            self.kernel_owned[(addr / u64::from(FRAME_SIZE)) as usize] = true;
            let slot = (prod.wrapping_add(i as u32) & self.fill.mask) as usize;
            // SAFETY: `slot` is within the ring (masked); the entries between the
            // consumer and our producer are ours to write.
            unsafe { self.fill.entries.add(slot).write(addr) };
        }
        self.fill
            .producer()
            .store(prod.wrapping_add(n), Ordering::Release);
    }

    /// Takes up to `max` received frames and hands them to `f` as Ethernet frames
    /// (mutable: the caller may decrypt in place); when `f` returns, the frames go
    /// back to the kernel. Returns what `f` returned and how many frames it got.
    pub fn receive<R>(&mut self, max: usize, f: impl FnOnce(Frames<'_>) -> R) -> (R, usize) {
        let prod = self.rx.producer().load(Ordering::Acquire);
        let cons = self.rx.consumer().load(Ordering::Relaxed);
        let n = prod.wrapping_sub(cons).min(max.min(BATCH) as u32);
        self.taken.clear();
        let mut ranges = [(0u64, 0u32); BATCH];
        let mut count = 0;
        for i in 0..n {
            let slot = (cons.wrapping_add(i) & self.rx.mask) as usize;
            // SAFETY: entries between the consumer and the producer (acquired above)
            // were written by the kernel; `slot` is masked into the ring.
            let d = unsafe { self.rx.entries.add(slot).read() };
            let frame = d.addr / u64::from(FRAME_SIZE);
            let base = frame * u64::from(FRAME_SIZE);
            let ok = (frame as usize) < self.kernel_owned.len()
                && self.kernel_owned[frame as usize]
                && d.addr + u64::from(d.len) <= base + u64::from(FRAME_SIZE);
            if !ok {
                self.bad_descriptors += 1;
                continue;
            }
            self.kernel_owned[frame as usize] = false;
            self.taken.push(base);
            ranges[count] = (d.addr, d.len);
            count += 1;
        }
        self.rx
            .consumer()
            .store(cons.wrapping_add(n), Ordering::Release);
        self.received += count as u64;
        let frames = Frames {
            umem: self.umem.0,
            ranges: &ranges[..count],
            next: 0,
            _owner: std::marker::PhantomData,
        };
        let r = f(frames);
        self.refill();
        (r, count)
    }
}

/// The frames of one [`XskSocket::receive`] batch.
pub struct Frames<'a> {
    umem: *mut u8,
    ranges: &'a [(u64, u32)],
    next: usize,
    _owner: std::marker::PhantomData<&'a mut [u8]>,
}

impl<'a> Iterator for Frames<'a> {
    type Item = &'a mut [u8];

    fn next(&mut self) -> Option<&'a mut [u8]> {
        let &(addr, len) = self.ranges.get(self.next)?;
        self.next += 1;
        // SAFETY: `receive` checked that each range lies inside one frame of the UMEM
        // that the kernel handed over (and that no frame appears twice: it must have
        // been kernel-owned, and is now ours until the batch ends), so the slices are
        // in bounds and disjoint, and the kernel does not write them while `'a` lasts.
        Some(unsafe { std::slice::from_raw_parts_mut(self.umem.add(addr as usize), len as usize) })
    }
}

/// The UMEM mapping; unmapped on drop, after the socket (declared after it) closed.
struct Umem(*mut u8, usize);

impl Drop for Umem {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`; the socket that shared it with the
        // kernel is closed by now (field order), and no `Frames` borrow outlives us.
        unsafe { libc::munmap(self.0.cast(), self.1) };
    }
}

/// Where a steered Ethernet frame came from and where its UDP payload lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpFrame {
    /// Sender address and port.
    pub from: SocketAddr,
    /// Our address the datagram was sent to.
    pub to: IpAddr,
    /// The UDP payload within the frame.
    pub payload: Range<usize>,
}

/// Parses an Ethernet frame (up to two VLAN tags) carrying IPv4 or IPv6 (with
/// hop-by-hop, routing and destination options headers) and UDP; `None` for
/// anything else or anything truncated. The UDP length field bounds the payload.
pub fn parse_udp(frame: &[u8]) -> Option<UdpFrame> {
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?);
    at += 2;
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        ethertype = u16::from_be_bytes(frame.get(at + 2..at + 4)?.try_into().ok()?);
        at += 4;
    }
    let (src, dst, l4) = match ethertype {
        0x0800 => {
            let ip = frame.get(at..at + 20)?;
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ip[0] >> 4 != 4
                || ihl < 20
                || ip[9] != 17
                || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0
            {
                return None;
            }
            let s = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let d = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (IpAddr::V4(s), IpAddr::V4(d), at + ihl)
        }
        0x86dd => {
            let ip = frame.get(at..at + 40)?;
            if ip[0] >> 4 != 6 {
                return None;
            }
            let s: [u8; 16] = ip[8..24].try_into().ok()?;
            let d: [u8; 16] = ip[24..40].try_into().ok()?;
            let mut next = ip[6];
            let mut l4 = at + 40;
            for _ in 0..4 {
                if !matches!(next, 0 | 43 | 60) {
                    break;
                }
                let h = frame.get(l4..l4 + 2)?;
                next = h[0];
                l4 += (usize::from(h[1]) + 1) * 8;
            }
            if next != 17 {
                return None;
            }
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                l4,
            )
        }
        _ => return None,
    };
    let udp = frame.get(l4..l4 + 8)?;
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if ulen < 8 || l4 + ulen > frame.len() {
        return None;
    }
    Some(UdpFrame {
        from: SocketAddr::new(src, sport),
        to: dst,
        payload: l4 + 8..l4 + ulen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(payload: &[u8], sport: u16) -> Vec<u8> {
        let mut u = sport.to_be_bytes().to_vec();
        u.extend_from_slice(&51820u16.to_be_bytes());
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    fn v4(l4: &[u8], frag: u16, proto: u8) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
        f.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&frag.to_be_bytes());
        f.extend_from_slice(&[64, proto, 0, 0, 192, 0, 2, 1, 10, 0, 0, 2]);
        f.extend_from_slice(l4);
        f
    }

    #[test]
    fn parses_ipv4_udp_and_bounds_the_payload_by_the_udp_length() {
        let mut f = v4(&udp(b"hello", 4000), 0, 17);
        f.extend_from_slice(&[0; 10]); // Ethernet padding
        let p = parse_udp(&f).unwrap();
        assert_eq!(p.from, "192.0.2.1:4000".parse().unwrap());
        assert_eq!(p.to, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(&f[p.payload], b"hello");
    }

    #[test]
    fn parses_ipv6_with_an_extension_header_and_a_vlan_tag() {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x81, 0x00, 0, 7, 0x86, 0xdd]);
        let l4 = udp(b"data!", 5000);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&((8 + l4.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 64]);
        f.extend_from_slice(&[0xfd; 16]);
        f.extend_from_slice(&[0xfe; 16]);
        f.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
        f.extend_from_slice(&l4);
        let p = parse_udp(&f).unwrap();
        assert_eq!(
            p.from,
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from([0xfd; 16])), 5000)
        );
        assert_eq!(p.to, IpAddr::V6(Ipv6Addr::from([0xfe; 16])));
        assert_eq!(&f[p.payload], b"data!");
    }

    #[test]
    fn refuses_what_is_not_a_whole_udp_datagram() {
        let good = v4(&udp(b"hello", 4000), 0, 17);
        assert!(parse_udp(&good).is_some());
        assert_eq!(
            parse_udp(&v4(&udp(b"hello", 4000), 0x2000, 17)),
            None,
            "fragment"
        );
        assert_eq!(parse_udp(&v4(&udp(b"hello", 4000), 0, 6)), None, "TCP");
        for cut in 0..good.len() {
            assert_eq!(parse_udp(&good[..cut]), None, "truncated at {cut}");
        }
        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(parse_udp(&arp), None);
    }
}
