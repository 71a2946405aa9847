//! The UDP side: one IPv4 and one IPv6 socket on the same port, reply-to-sender
//! ("sticky") source addresses, and the firewall mark.
//!
//! Inbound: the driver polls [`UdpSockets::fds`]; on readiness it calls
//! [`UdpSockets::recv`] until `None`. Each [`Received`] carries the sender and the
//! local address the datagram arrived on ([`SourceAddr`], from `IP_PKTINFO` /
//! `IPV6_PKTINFO`), which the driver stores with the peer's endpoint.
//!
//! Outbound: [`UdpSockets::send`] picks the socket of the destination's family and
//! puts the stored source in a pktinfo control message. When that address has gone
//! away, the kernel rejects it; the source is then cleared and the datagram is sent
//! again with normal route selection (wireguard-go `conn/sticky_linux.go`).

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{cvt, IoError};
use super::msg::{
    from_sockaddr, read_gro, read_pktinfo, to_sockaddr, write_pktinfo, write_segment_size,
    write_ttl, CmsgBuf, SourceAddr, UDP_GRO,
};

/// Socket buffer size asked for (wireguard-go uses the same 7 MiB).
const SOCKET_BUFFER_SIZE: libc::c_int = 7 << 20;
/// How often binding port 0 retries when the kernel's v4 port is taken for v6.
const EPHEMERAL_BIND_TRIES: usize = 100;

/// One datagram received by [`UdpSockets::recv`] (its bytes are in the caller's buffer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Number of bytes written to the buffer.
    pub len: usize,
    /// The sender.
    pub from: SocketAddr,
    /// The local address (and interface) the datagram arrived on.
    pub local: SourceAddr,
    /// With `UDP_GRO`: the buffer holds several datagrams of this size from the same
    /// sender, coalesced by the kernel (the last may be shorter).
    pub segment: Option<u16>,
}

/// The UDP sockets of one interface: `0.0.0.0:port` and `[::]:port` (v6-only), either
/// of which may be missing when the family is unavailable in the network namespace.
#[derive(Debug)]
pub struct UdpSockets {
    v4: Option<OwnedFd>,
    v6: Option<OwnedFd>,
    port: u16,
    truncated: AtomicU64,
    /// False once a `UDP_SEGMENT` send failed with `EIO` (no GSO on the route).
    gso: std::sync::atomic::AtomicBool,
}

/// The two address families, with what differs between their sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn domain(self) -> libc::c_int {
        match self {
            Family::V4 => libc::AF_INET,
            Family::V6 => libc::AF_INET6,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn any(self, port: u16) -> SocketAddr {
        match self {
            Family::V4 => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)),
            Family::V6 => SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0)),
        }
    }
}

/// Why opening one family's socket failed.
enum OpenError {
    /// The family does not exist here (`EAFNOSUPPORT`): run without it.
    Unavailable,
    /// `bind` failed with `EADDRINUSE`.
    InUse,
    /// Anything else: fatal.
    Fatal(IoError),
}

impl UdpSockets {
    /// Binds `0.0.0.0:port` and `[::]:port` (`IPV6_V6ONLY`), both nonblocking and
    /// close-on-exec, with `SO_MARK = fwmark` when nonzero, pktinfo reception on, and
    /// 7 MiB socket buffers (`SO_RCVBUFFORCE`, falling back to `SO_RCVBUF`).
    ///
    /// Port 0 takes the kernel's ephemeral port for IPv4 and binds IPv6 to the same
    /// one, retrying with a new port when it is taken for IPv6. A family the namespace
    /// lacks is skipped; [`IoError::NoAddressFamily`] if both are missing.
    pub fn bind(port: u16, fwmark: u32) -> Result<UdpSockets, IoError> {
        for _ in 0..EPHEMERAL_BIND_TRIES {
            match Self::bind_once(port, fwmark)? {
                Some(sockets) => return Ok(sockets),
                None => continue,
            }
        }
        Err(IoError::PortInUse {
            port,
            family: Family::V6.name(),
        })
    }

    /// One attempt; `Ok(None)` means "port 0 collided on IPv6, try again".
    fn bind_once(port: u16, fwmark: u32) -> Result<Option<UdpSockets>, IoError> {
        let in_use = |family: Family| IoError::PortInUse {
            port,
            family: family.name(),
        };
        let v4 = match open_bound(Family::V4, port, fwmark) {
            Ok(bound) => Some(bound),
            Err(OpenError::Unavailable) => None,
            Err(OpenError::InUse) => return Err(in_use(Family::V4)),
            Err(OpenError::Fatal(e)) => return Err(e),
        };
        let port_v4 = v4.as_ref().map_or(port, |(_, p)| *p);
        let v6 = match open_bound(Family::V6, port_v4, fwmark) {
            Ok(bound) => Some(bound),
            Err(OpenError::Unavailable) => None,
            Err(OpenError::InUse) if port == 0 && v4.is_some() => return Ok(None),
            Err(OpenError::InUse) => return Err(in_use(Family::V6)),
            Err(OpenError::Fatal(e)) => return Err(e),
        };
        let bound_port = match (&v4, &v6) {
            (Some((_, p)), _) | (None, Some((_, p))) => *p,
            (None, None) => return Err(IoError::NoAddressFamily),
        };
        Ok(Some(UdpSockets {
            v4: v4.map(|(fd, _)| fd),
            v6: v6.map(|(fd, _)| fd),
            port: bound_port,
            truncated: AtomicU64::new(0),
            gso: std::sync::atomic::AtomicBool::new(true),
        }))
    }

    /// The port both sockets are bound to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets `SO_MARK` on both sockets (needs `CAP_NET_ADMIN`); 0 clears the mark.
    pub fn set_fwmark(&self, mark: u32) -> Result<(), IoError> {
        for fd in self.fds() {
            set_int(fd, libc::SOL_SOCKET, libc::SO_MARK, mark as libc::c_int)
                .map_err(|e| IoError::syscall("setsockopt(SO_MARK)", e))?;
        }
        Ok(())
    }

    /// The sockets to put in the poll set (IPv4 first when both exist).
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.v4.iter().chain(self.v6.iter()).map(|fd| fd.as_fd())
    }

    /// The IPv4 socket, if this namespace has IPv4.
    pub fn v4_fd(&self) -> Option<BorrowedFd<'_>> {
        self.v4.as_ref().map(|fd| fd.as_fd())
    }

    /// The IPv6 socket, if this namespace has IPv6.
    pub fn v6_fd(&self) -> Option<BorrowedFd<'_>> {
        self.v6.as_ref().map(|fd| fd.as_fd())
    }

    /// How many datagrams [`UdpSockets::recv`] discarded because they were larger than
    /// the buffer it was given.
    pub fn truncated(&self) -> u64 {
        self.truncated.load(Ordering::Relaxed)
    }

    /// Receives one datagram on `fd` (one of [`UdpSockets::fds`]) into `buf`; `None`
    /// when nothing is queued. A datagram larger than `buf` is discarded (counted in
    /// [`UdpSockets::truncated`]) and the next one is read: a 65535-byte buffer loses none.
    pub fn recv(&self, fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Received>> {
        loop {
            match recv_one(fd, buf) {
                Ok(RecvOutcome::Datagram(received)) => return Ok(Some(received)),
                Ok(RecvOutcome::Truncated) => {
                    self.truncated.fetch_add(1, Ordering::Relaxed);
                }
                Ok(RecvOutcome::Skip) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `buf` to `dst` from the socket of its family (an IPv4-mapped IPv6 `dst`
    /// goes out as IPv4), with `src` as the source address when it holds one.
    ///
    /// If the kernel rejects `src` (`EINVAL`, `EADDRNOTAVAIL`, `ENETUNREACH`: the
    /// address is gone or unroutable), `src` is cleared and the datagram is sent once
    /// more with normal route selection. A `src` of the other family than `dst` is
    /// cleared too. `WouldBlock` / `ENOBUFS` are returned: the caller counts a drop.
    /// `EAFNOSUPPORT` when this namespace has no socket of `dst`'s family.
    /// Does not allocate.
    pub fn send(&self, buf: &[u8], dst: SocketAddr, src: &mut SourceAddr) -> io::Result<()> {
        self.send_with(buf, dst, src, None)
    }

    /// Sends `buf` to `dst` from the socket of its family with IP TTL / IPv6 hop
    /// limit `ttl` on this datagram only (an `IP_TTL` / `IPV6_HOPLIMIT` control
    /// message; 0: the socket's default), with normal source selection. For the rare
    /// datagrams control asks for (probes, primers); the socket's own TTL is never
    /// changed, so the fast path is untouched.
    pub fn send_ttl(&self, buf: &[u8], dst: SocketAddr, ttl: u8) -> io::Result<()> {
        let dst = canonical(dst);
        let fd = match dst {
            SocketAddr::V4(_) => self.v4.as_ref(),
            SocketAddr::V6(_) => self.v6.as_ref(),
        }
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))?;
        let ttl = (ttl != 0).then_some(ttl);
        send_one(fd.as_fd(), buf, &dst, SourceAddr::None, None, ttl)
    }

    /// One `sendmsg` from the socket of `dst`'s family, with `src` (and `segment`, for
    /// GSO) in control messages; retried once without `src` when the kernel refuses it.
    fn send_with(
        &self,
        buf: &[u8],
        dst: SocketAddr,
        src: &mut SourceAddr,
        segment: Option<u16>,
    ) -> io::Result<()> {
        let dst = canonical(dst);
        let fd = match dst {
            SocketAddr::V4(_) => self.v4.as_ref(),
            SocketAddr::V6(_) => self.v6.as_ref(),
        }
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))?;
        if !src.fits(&dst) {
            *src = SourceAddr::None;
        }
        match send_one(fd.as_fd(), buf, &dst, *src, segment, None) {
            Err(e) if *src != SourceAddr::None && source_rejected(&e) => {
                *src = SourceAddr::None;
                send_one(fd.as_fd(), buf, &dst, SourceAddr::None, segment, None)
            }
            other => other,
        }
    }

    /// Sends `buf` as datagrams of `segment` bytes each (the last may be shorter) to
    /// `dst` in one `sendmsg` with `UDP_SEGMENT` (GSO). Falls back to one `sendmsg` per
    /// datagram where the kernel refuses GSO (`EIO`), and then stops trying GSO. Source
    /// address handling as [`UdpSockets::send`]. Does not allocate.
    pub fn send_segments(
        &self,
        buf: &[u8],
        segment: u16,
        dst: SocketAddr,
        src: &mut SourceAddr,
    ) -> io::Result<()> {
        let seg = usize::from(segment.max(1));
        if buf.len() <= seg {
            return self.send(buf, dst, src);
        }
        if self.gso.load(Ordering::Relaxed) {
            match self.send_with(buf, dst, src, Some(segment)) {
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    tracing::warn!(
                        "UDP GSO refused by the kernel ({e}); sending datagrams one by one"
                    );
                    self.gso.store(false, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        for chunk in buf.chunks(seg) {
            self.send(chunk, dst, src)?;
        }
        Ok(())
    }

    /// Turns segmentation (`UDP_SEGMENT` sends) and receive coalescing (`UDP_GRO`) on
    /// or off for both sockets. Returns whether GRO is on afterwards.
    pub fn set_offload(&self, on: bool) -> bool {
        self.gso.store(on, Ordering::Relaxed);
        let mut gro = on;
        for fd in self.fds() {
            if set_int(fd, libc::SOL_UDP, UDP_GRO, libc::c_int::from(on)).is_err() {
                gro = false;
            }
        }
        gro
    }

    /// True while `UDP_SEGMENT` sends are in use.
    pub fn gso_enabled(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it maps.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::V4(SocketAddrV4::new(ip, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Errors by which the kernel says "this source address cannot be used".
fn source_rejected(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EINVAL | libc::EADDRNOTAVAIL | libc::ENETUNREACH | libc::EHOSTUNREACH)
    )
}

/// The result of one `recvmsg` that returned a datagram.
enum RecvOutcome {
    Datagram(Received),
    /// Larger than the buffer: the tail was lost.
    Truncated,
    /// From an address family we do not know (cannot happen on these sockets).
    Skip,
}

fn recv_one(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<RecvOutcome> {
    // SAFETY: `sockaddr_storage` is plain old data; all-zero is a valid value.
    let mut name: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut control = CmsgBuf::new();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `msghdr` is plain old data (integers and raw pointers); all-zero is valid.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    // SAFETY: every pointer in `msg` refers to a live local or to `buf`, with the
    // lengths set to their sizes; the kernel writes at most those many bytes.
    let n = cvt(unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) })? as usize;
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Ok(RecvOutcome::Truncated);
    }
    let Some(from) = from_sockaddr(&name, msg.msg_namelen) else {
        return Ok(RecvOutcome::Skip);
    };
    let local = read_pktinfo(&control.0, msg.msg_controllen as usize);
    let segment = read_gro(&control.0, msg.msg_controllen as usize).filter(|s| usize::from(*s) < n);
    Ok(RecvOutcome::Datagram(Received {
        len: n,
        from,
        local,
        segment,
    }))
}

fn send_one(
    fd: BorrowedFd<'_>,
    buf: &[u8],
    dst: &SocketAddr,
    src: SourceAddr,
    segment: Option<u16>,
    ttl: Option<u8>,
) -> io::Result<()> {
    let (mut name, name_len) = to_sockaddr(dst);
    let mut control = CmsgBuf::new();
    let mut control_len = write_pktinfo(&mut control, src);
    if let Some(seg) = segment {
        control_len = write_segment_size(&mut control, control_len, seg);
    }
    if let Some(ttl) = ttl {
        control_len = write_ttl(&mut control, control_len, dst.is_ipv6(), ttl);
    }
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `msghdr` is plain old data (integers and raw pointers); all-zero is valid.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = name_len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if control_len > 0 {
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = control_len as _;
    }
    // SAFETY: every pointer in `msg` refers to a live local or to `buf`, with lengths
    // within their sizes; sendmsg only reads them (the iovec's `*mut` is not written).
    cvt(unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) })?;
    Ok(())
}

/// Opens, configures and binds one family's socket; returns it and its bound port.
fn open_bound(family: Family, port: u16, fwmark: u32) -> Result<(OwnedFd, u16), OpenError> {
    let fd = open_socket(family)?;
    configure(fd.as_fd(), family, fwmark).map_err(OpenError::Fatal)?;
    let (addr, addr_len) = to_sockaddr(&family.any(port));
    // SAFETY: `addr` is a valid sockaddr of `addr_len` bytes that outlives the call.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_storage).cast(),
            addr_len,
        )
    };
    match cvt(ret) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => return Err(OpenError::InUse),
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            return Err(OpenError::Unavailable)
        }
        Err(e) => return Err(OpenError::Fatal(IoError::syscall("bind(UDP)", e))),
    }
    let bound = local_port(fd.as_fd()).map_err(OpenError::Fatal)?;
    Ok((fd, bound))
}

fn open_socket(family: Family) -> Result<OwnedFd, OpenError> {
    let ty = libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket takes no pointers; a nonnegative return is a new fd we own.
    match cvt(unsafe { libc::socket(family.domain(), ty, libc::IPPROTO_UDP) }) {
        // SAFETY: `raw` was just returned by socket and is owned by nobody else.
        Ok(raw) => Ok(unsafe { OwnedFd::from_raw_fd(raw) }),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT)
            ) =>
        {
            Err(OpenError::Unavailable)
        }
        Err(e) => Err(OpenError::Fatal(IoError::syscall("socket(UDP)", e))),
    }
}

/// Socket options set before `bind`.
fn configure(fd: BorrowedFd<'_>, family: Family, fwmark: u32) -> Result<(), IoError> {
    let on = 1;
    match family {
        Family::V4 => set_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, on)
            .map_err(|e| IoError::syscall("setsockopt(IP_PKTINFO)", e))?,
        Family::V6 => {
            set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, on)
                .map_err(|e| IoError::syscall("setsockopt(IPV6_V6ONLY)", e))?;
            set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, on)
                .map_err(|e| IoError::syscall("setsockopt(IPV6_RECVPKTINFO)", e))?;
        }
    }
    if fwmark != 0 {
        set_int(fd, libc::SOL_SOCKET, libc::SO_MARK, fwmark as libc::c_int)
            .map_err(|e| IoError::syscall("setsockopt(SO_MARK)", e))?;
    }
    // Receive coalescing: one recvmsg returns many datagrams of one sender. Optional:
    // without it every datagram is read on its own.
    if let Err(e) = set_int(fd, libc::SOL_UDP, UDP_GRO, on) {
        tracing::info!("UDP_GRO unavailable ({e}); receiving datagrams one by one");
    }
    set_buffer(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "SO_RCVBUF");
    set_buffer(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "SO_SNDBUF");
    Ok(())
}

/// Asks for a large buffer, beyond `net.core.*mem_max` when privileged. Failing is not
/// fatal (the default buffer works, with more drops under load), so it only warns.
fn set_buffer(fd: BorrowedFd<'_>, force: libc::c_int, plain: libc::c_int, what: &str) {
    if set_int(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER_SIZE).is_ok() {
        return;
    }
    if let Err(e) = set_int(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER_SIZE) {
        tracing::warn!("cannot set {what} to {SOCKET_BUFFER_SIZE} bytes: {e}");
    }
}

fn local_port(fd: BorrowedFd<'_>) -> Result<u16, IoError> {
    // SAFETY: `sockaddr_storage` is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `addr` and updates `len`.
    let ret = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    cvt(ret).map_err(|e| IoError::syscall("getsockname(UDP)", e))?;
    from_sockaddr(&addr, len).map(|a| a.port()).ok_or_else(|| {
        IoError::syscall(
            "getsockname(UDP)",
            io::Error::new(io::ErrorKind::InvalidData, "not an IP socket address"),
        )
    })
}

pub(crate) fn set_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to `value`, an int that outlives the call, with its size.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    cvt(ret).map(drop)
}

#[cfg(test)]
pub(crate) fn get_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, an int.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    cvt(ret).map(|_| value)
}

#[cfg(test)]
#[path = "udp_tests.rs"]
mod tests;
