//! The link monitor: rtnetlink notifications about our interface.
//!
//! The kernel multicasts `RTM_NEWLINK` / `RTM_DELLINK` to `RTMGRP_LINK` subscribers
//! whenever a link changes -> the driver sees the netlink fd readable -> it calls
//! [`LinkMonitor::drain`], which parses the messages about our ifindex into
//! [`LinkEvent`]s (MTU changes and up/down transitions only, not every notification).
//!
//! [`LinkEvent::Deleted`] means the interface **left this network namespace**: it was
//! deleted *or* moved to another namespace (`ip link set IFNAME netns X`). After a move
//! the TUN fd keeps working, so the driver must not exit on `Deleted`; real deletion
//! shows up as `EBADFD` on the TUN fd (see [`super::Tun::is_gone`]).

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::error::{cvt, IoError};
use super::udp::set_int;

/// Receive buffer: large enough for any single link message (they carry statistics
/// and per-VF data and can exceed a page).
const RECV_BUFFER: usize = 64 * 1024;
/// Kernel socket buffer asked for, so bursts of notifications are not lost.
const SOCKET_BUFFER: libc::c_int = 1 << 20;
/// Sequence number of our own `RTM_GETLINK` queries.
const QUERY_SEQ: u32 = 0x7064_0001;

/// Message layout (linux/netlink.h, linux/rtnetlink.h): sizes and field offsets.
mod field {
    use std::ops::Range;
    pub(super) const NLMSG_HDR_LEN: usize = 16;
    pub(super) const NLMSG_LEN: Range<usize> = 0..4;
    pub(super) const NLMSG_TYPE: Range<usize> = 4..6;
    pub(super) const NLMSG_SEQ: Range<usize> = 8..12;
    pub(super) const IFINFO_LEN: usize = 16;
    pub(super) const IFINFO_INDEX: Range<usize> = 4..8;
    pub(super) const IFINFO_FLAGS: Range<usize> = 8..12;
    pub(super) const RTA_HDR_LEN: usize = 4;
    pub(super) const RTA_LEN: Range<usize> = 0..2;
    pub(super) const RTA_TYPE: Range<usize> = 2..4;
    pub(super) const NLMSGERR_ERROR: Range<usize> = 0..4;
    /// In an `NLMSG_ERROR`, the header of the request that failed follows the errno.
    pub(super) const NLMSGERR_REQ_SEQ: Range<usize> = 12..16;
}

/// `IFLA_MTU` (linux/if_link.h).
const IFLA_MTU: u16 = 4;
/// Attribute-type bits (without `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// A change of our interface, as reported by [`LinkMonitor::drain`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The MTU is now this many bytes (also reported once at start).
    Mtu(u32),
    /// The interface left this namespace: deleted, or moved to another namespace.
    /// Not a reason to exit by itself (see the module docs).
    Deleted,
    /// The interface was set administratively up (`IFF_UP`).
    Up,
    /// The interface was set administratively down.
    Down,
}

/// What we last reported, so that only changes become events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LinkState {
    mtu: Option<u32>,
    up: Option<bool>,
}

/// A `NETLINK_ROUTE` socket subscribed to `RTMGRP_LINK`, filtering for one ifindex.
#[derive(Debug)]
pub struct LinkMonitor {
    fd: OwnedFd,
    ifindex: u32,
    state: LinkState,
    buf: Box<[u8]>,
}

impl LinkMonitor {
    /// Opens the monitor for `ifindex` and queries the link once, so the first
    /// [`LinkMonitor::drain`] reports the current MTU and up/down state (or `Deleted`
    /// if the interface is not in this namespace).
    pub fn new(ifindex: u32) -> Result<LinkMonitor, IoError> {
        let ty = libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: socket takes no pointers; a nonnegative return is a new fd we own.
        let raw = cvt(unsafe { libc::socket(libc::AF_NETLINK, ty, libc::NETLINK_ROUTE) })
            .map_err(|e| IoError::syscall("socket(NETLINK_ROUTE)", e))?;
        // SAFETY: `raw` was just returned by socket and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if set_int(
            fd.as_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            SOCKET_BUFFER,
        )
        .is_err()
        {
            // Not fatal: the default buffer only loses bursts, which drain recovers from.
            let _ = set_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, SOCKET_BUFFER);
        }
        bind_groups(fd.as_fd(), libc::RTMGRP_LINK as u32)?;
        let monitor = LinkMonitor {
            fd,
            ifindex,
            state: LinkState::default(),
            buf: vec![0u8; RECV_BUFFER].into_boxed_slice(),
        };
        monitor.query_link()?;
        Ok(monitor)
    }

    /// The netlink socket, for the poll set (readable when notifications are queued).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads all queued messages and appends the events about our interface to `out`.
    ///
    /// Call when [`LinkMonitor::fd`] is readable. Malformed messages are skipped. If the
    /// kernel dropped notifications (`ENOBUFS`), the link is queried again so the next
    /// drain reports its current state. Allocates nothing beyond `out`'s growth.
    pub fn drain(&mut self, out: &mut Vec<LinkEvent>) -> Result<(), IoError> {
        loop {
            match self.recv() {
                Ok(Some(len)) => {
                    parse_messages(&self.buf[..len], self.ifindex, &mut self.state, out);
                }
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.state = LinkState::default();
                    self.query_link()?;
                }
                Err(e) => return Err(IoError::syscall("recvfrom(NETLINK_ROUTE)", e)),
            }
        }
    }

    /// Receives one datagram into `self.buf`; `None` if it is to be ignored (not from
    /// the kernel, or truncated).
    fn recv(&mut self) -> io::Result<Option<usize>> {
        // SAFETY: `sockaddr_nl` is plain old data; all-zero is a valid value.
        let mut from: libc::sockaddr_nl = unsafe { mem::zeroed() };
        let mut from_len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf` and at most
        // `from_len` bytes into `from`; both outlive the call.
        let n = cvt(unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                libc::MSG_TRUNC,
                (&mut from as *mut libc::sockaddr_nl).cast(),
                &mut from_len,
            )
        })? as usize;
        // Only the kernel (port id 0) speaks for the links; any process may unicast to us.
        let from_kernel =
            from_len as usize >= mem::size_of::<libc::sockaddr_nl>() && from.nl_pid == 0;
        Ok((from_kernel && n <= self.buf.len()).then_some(n))
    }

    /// Sends `RTM_GETLINK` for our ifindex; the answer arrives through [`Self::drain`].
    fn query_link(&self) -> Result<(), IoError> {
        let request = getlink_request(self.ifindex);
        // SAFETY: `sockaddr_nl` is plain old data; all-zero addresses the kernel.
        let mut to: libc::sockaddr_nl = unsafe { mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sends `request.len()` bytes from `request` to the address `to`, both
        // of which outlive the call.
        cvt(unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })
        .map_err(|e| IoError::syscall("sendto(RTM_GETLINK)", e))?;
        Ok(())
    }
}

impl AsFd for LinkMonitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn bind_groups(fd: BorrowedFd<'_>, groups: u32) -> Result<(), IoError> {
    // SAFETY: `sockaddr_nl` is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = groups;
    // SAFETY: `addr` is a valid `sockaddr_nl` that outlives the call, passed with its size.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    })
    .map_err(|e| IoError::syscall("bind(NETLINK_ROUTE, RTMGRP_LINK)", e))?;
    Ok(())
}

/// An `RTM_GETLINK` request (header + `ifinfomsg`) for one interface.
fn getlink_request(ifindex: u32) -> [u8; field::NLMSG_HDR_LEN + field::IFINFO_LEN] {
    let mut msg = [0u8; field::NLMSG_HDR_LEN + field::IFINFO_LEN];
    let len = msg.len() as u32;
    msg[field::NLMSG_LEN].copy_from_slice(&len.to_ne_bytes());
    msg[field::NLMSG_TYPE].copy_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
    msg[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    msg[field::NLMSG_SEQ].copy_from_slice(&QUERY_SEQ.to_ne_bytes());
    let info = &mut msg[field::NLMSG_HDR_LEN..];
    info[0] = libc::AF_UNSPEC as u8;
    info[field::IFINFO_INDEX].copy_from_slice(&ifindex.to_ne_bytes());
    msg
}

/// Parses a datagram of netlink messages, appending events about `ifindex` to `out`.
fn parse_messages(mut bytes: &[u8], ifindex: u32, state: &mut LinkState, out: &mut Vec<LinkEvent>) {
    while bytes.len() >= field::NLMSG_HDR_LEN {
        let len = read_u32(bytes, field::NLMSG_LEN) as usize;
        if len < field::NLMSG_HDR_LEN || len > bytes.len() {
            return;
        }
        let ty = read_u16(bytes, field::NLMSG_TYPE);
        let payload = &bytes[field::NLMSG_HDR_LEN..len];
        match ty {
            libc::RTM_NEWLINK => parse_newlink(payload, ifindex, state, out),
            libc::RTM_DELLINK if link_index(payload) == Some(ifindex) => {
                *state = LinkState::default();
                out.push(LinkEvent::Deleted);
            }
            t if libc::c_int::from(t) == libc::NLMSG_ERROR && query_failed(payload) => {
                *state = LinkState::default();
                out.push(LinkEvent::Deleted);
            }
            _ => {}
        }
        bytes = bytes.get(align4(len)..).unwrap_or(&[]);
    }
}

/// The ifindex in an `ifinfomsg` payload.
fn link_index(payload: &[u8]) -> Option<u32> {
    (payload.len() >= field::IFINFO_LEN).then(|| read_u32(payload, field::IFINFO_INDEX))
}

fn parse_newlink(payload: &[u8], ifindex: u32, state: &mut LinkState, out: &mut Vec<LinkEvent>) {
    if link_index(payload) != Some(ifindex) {
        return;
    }
    let up = read_u32(payload, field::IFINFO_FLAGS) & libc::IFF_UP as u32 != 0;
    if let Some(mtu) = find_u32_attr(&payload[field::IFINFO_LEN..], IFLA_MTU) {
        if state.mtu != Some(mtu) {
            state.mtu = Some(mtu);
            out.push(LinkEvent::Mtu(mtu));
        }
    }
    if state.up != Some(up) {
        state.up = Some(up);
        out.push(if up { LinkEvent::Up } else { LinkEvent::Down });
    }
}

/// Whether an `NLMSG_ERROR` payload reports the failure of our `RTM_GETLINK` (the
/// interface is not in this namespace); acknowledgements (errno 0) are not failures.
fn query_failed(payload: &[u8]) -> bool {
    if payload.len() < field::NLMSGERR_REQ_SEQ.end {
        return false;
    }
    let errno = read_u32(payload, field::NLMSGERR_ERROR) as i32;
    errno != 0 && read_u32(payload, field::NLMSGERR_REQ_SEQ) == QUERY_SEQ
}

/// The 4-byte payload of the first attribute of type `ty` in a run of rtattrs.
fn find_u32_attr(mut attrs: &[u8], ty: u16) -> Option<u32> {
    while attrs.len() >= field::RTA_HDR_LEN {
        let len = usize::from(read_u16(attrs, field::RTA_LEN));
        if len < field::RTA_HDR_LEN || len > attrs.len() {
            return None;
        }
        if read_u16(attrs, field::RTA_TYPE) & NLA_TYPE_MASK == ty && len >= field::RTA_HDR_LEN + 4 {
            return Some(read_u32(&attrs[field::RTA_HDR_LEN..], 0..4));
        }
        attrs = attrs.get(align4(len)..).unwrap_or(&[]);
    }
    None
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// Reads a native-endian u32 at `range`; callers check that `bytes` is long enough.
fn read_u32(bytes: &[u8], range: std::ops::Range<usize>) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[range]);
    u32::from_ne_bytes(raw)
}

/// Reads a native-endian u16 at `range`; callers check that `bytes` is long enough.
fn read_u16(bytes: &[u8], range: std::ops::Range<usize>) -> u16 {
    let mut raw = [0u8; 2];
    raw.copy_from_slice(&bytes[range]);
    u16::from_ne_bytes(raw)
}

#[cfg(test)]
#[path = "netlink_tests.rs"]
mod tests;
