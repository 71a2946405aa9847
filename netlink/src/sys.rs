//! The socket calls of the crate: open, bind, send, receive.

use crate::Error;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Converts a libc return of -1 into the errno.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens a `NETLINK_ROUTE` socket bound to `groups` (0 for none).
pub(crate) fn open(nonblocking: bool, groups: u32) -> Result<OwnedFd, Error> {
    open_protocol(libc::NETLINK_ROUTE, nonblocking, groups)
}

/// Opens a netlink socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_NETFILTER`) bound
/// to `groups` (0 for none).
pub(crate) fn open_protocol(
    protocol: libc::c_int,
    nonblocking: bool,
    groups: u32,
) -> Result<OwnedFd, Error> {
    let mut ty = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
    if nonblocking {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: socket takes no pointers; a nonnegative return is a new fd we own.
    let raw = cvt(unsafe { libc::socket(libc::AF_NETLINK, ty, protocol) }).map_err(|io| {
        Error::Syscall {
            call: "socket(AF_NETLINK)",
            io,
        }
    })?;
    // SAFETY: `raw` was just returned by socket and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
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
    .map_err(|io| Error::Syscall {
        call: "bind(AF_NETLINK)",
        io,
    })?;
    Ok(fd)
}

/// Sets an integer socket option.
pub(crate) fn set_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a c_int that outlives the call, with its size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// Sends `msg` to the kernel.
pub(crate) fn send(fd: BorrowedFd<'_>, msg: &[u8]) -> io::Result<()> {
    // SAFETY: `sockaddr_nl` is plain old data; all-zero addresses the kernel.
    let mut to: libc::sockaddr_nl = unsafe { mem::zeroed() };
    to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: sends `msg.len()` bytes from `msg` to the address `to`, both of which
    // outlive the call.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&to as *const libc::sockaddr_nl).cast(),
            mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one datagram into `buf`; `None` if it is to be ignored (not from the
/// kernel, or truncated).
pub(crate) fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `sockaddr_nl` is plain old data; all-zero is a valid value.
    let mut from: libc::sockaddr_nl = unsafe { mem::zeroed() };
    let mut from_len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf` and at most
    // `from_len` bytes into `from`; both outlive the call.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_TRUNC,
            (&mut from as *mut libc::sockaddr_nl).cast(),
            &mut from_len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // Only the kernel (port id 0) answers; any process may unicast to us.
    let from_kernel = from_len as usize >= mem::size_of::<libc::sockaddr_nl>() && from.nl_pid == 0;
    Ok((from_kernel && n <= buf.len()).then_some(n))
}
