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
//! shows up as `EBADFD` on the TUN fd (the dataplane's `Tun::is_gone`).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::wire::{self, consts, field, find_u32, read_u32};
use crate::{sys, Error};

/// Receive buffer: large enough for any single link message (they carry statistics
/// and per-VF data and can exceed a page).
const RECV_BUFFER: usize = 64 * 1024;
/// Kernel socket buffer asked for, so bursts of notifications are not lost.
const SOCKET_BUFFER: libc::c_int = 1 << 20;
/// Sequence number of our own `RTM_GETLINK` queries.
const QUERY_SEQ: u32 = 0x7064_0001;

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
    pub fn new(ifindex: u32) -> Result<LinkMonitor, Error> {
        let fd = sys::open(true, libc::RTMGRP_LINK as u32)?;
        if sys::set_int(
            fd.as_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            SOCKET_BUFFER,
        )
        .is_err()
        {
            // Not fatal: the default buffer only loses bursts, which drain recovers from.
            let _ = sys::set_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, SOCKET_BUFFER);
        }
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
    pub fn drain(&mut self, out: &mut Vec<LinkEvent>) -> Result<(), Error> {
        loop {
            match sys::recv(self.fd.as_fd(), &mut self.buf) {
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
                Err(io) => {
                    return Err(Error::Syscall {
                        call: "recvfrom(NETLINK_ROUTE)",
                        io,
                    })
                }
            }
        }
    }

    /// Sends `RTM_GETLINK` for our ifindex; the answer arrives through [`Self::drain`].
    fn query_link(&self) -> Result<(), Error> {
        let request = wire::getlink_by_index(self.ifindex).finish(QUERY_SEQ);
        sys::send(self.fd.as_fd(), &request).map_err(|io| Error::Syscall {
            call: "sendto(RTM_GETLINK)",
            io,
        })
    }
}

impl AsFd for LinkMonitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Parses a datagram of netlink messages, appending events about `ifindex` to `out`.
fn parse_messages(bytes: &[u8], ifindex: u32, state: &mut LinkState, out: &mut Vec<LinkEvent>) {
    for m in wire::messages(bytes) {
        match m.ty {
            consts::RTM_NEWLINK => parse_newlink(m.payload, ifindex, state, out),
            consts::RTM_DELLINK if link_index(m.payload) == Some(ifindex) => {
                *state = LinkState::default();
                out.push(LinkEvent::Deleted);
            }
            consts::NLMSG_ERROR if query_failed(m.payload) => {
                *state = LinkState::default();
                out.push(LinkEvent::Deleted);
            }
            _ => {}
        }
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
    if let Some(mtu) = find_u32(&payload[field::IFINFO_LEN..], consts::IFLA_MTU) {
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

#[cfg(test)]
#[path = "monitor_tests.rs"]
mod tests;
