//! The fallback receive path where io_uring is unavailable: `recvmmsg(2)` reads up to
//! a batch of datagrams from one UDP socket in one call, with the same control
//! messages as [`super::super::UdpSockets::recv`] (pktinfo, `UDP_GRO`).
//!
//! The driver polls the socket as before; on readiness it calls [`recvmmsg_batch`]
//! until it returns 0, handling [`RecvBatch::get`] `0..n` after each call. All memory
//! is allocated once, in [`RecvBatch::new`].

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::super::error::cvt;
use super::super::msg::{from_sockaddr, read_gro, read_pktinfo, CmsgBuf};
use super::super::udp::Received;

/// Buffers for [`recvmmsg_batch`]: `count` datagrams of up to `size` bytes each, with
/// their addresses and control messages.
pub struct RecvBatch {
    bufs: Vec<u8>,
    size: usize,
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<CmsgBuf>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// The datagrams of the last call: their slot and what was received.
    received: Vec<(usize, Received)>,
    truncated: u64,
}

// SAFETY: the raw pointers in `iovs` and `hdrs` point into this batch's own heap
// buffers, are rewritten before every `recvmmsg` and never dereferenced by Rust code,
// so moving the batch to another thread shares nothing.
unsafe impl Send for RecvBatch {}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("count", &self.hdrs.len())
            .field("size", &self.size)
            .field("received", &self.received.len())
            .finish_non_exhaustive()
    }
}

impl RecvBatch {
    /// Room for `count` (at least 1) datagrams of `size` bytes. With `UDP_GRO` on,
    /// pass 65536 so that coalesced batches are not truncated.
    pub fn new(count: usize, size: usize) -> RecvBatch {
        let count = count.max(1);
        // SAFETY: `sockaddr_storage`, `iovec` and `mmsghdr` are plain old data
        // (integers and raw pointers); all-zero is a valid value of each.
        let (name, iov, hdr) = unsafe { (mem::zeroed(), mem::zeroed(), mem::zeroed()) };
        RecvBatch {
            bufs: vec![0; count * size],
            size,
            names: vec![name; count],
            controls: (0..count).map(|_| CmsgBuf::new()).collect(),
            iovs: vec![iov; count],
            hdrs: vec![hdr; count],
            received: Vec::with_capacity(count),
            truncated: 0,
        }
    }

    /// The number of datagrams the last [`recvmmsg_batch`] returned.
    pub fn len(&self) -> usize {
        self.received.len()
    }

    /// Whether the last call returned nothing.
    pub fn is_empty(&self) -> bool {
        self.received.is_empty()
    }

    /// Datagram `i` of the last call (`i < len()`): what arrived and its bytes.
    pub fn get(&mut self, i: usize) -> Option<(Received, &mut [u8])> {
        let (slot, received) = *self.received.get(i)?;
        let start = slot * self.size;
        Some((received, &mut self.bufs[start..start + received.len]))
    }

    /// Every datagram of the last call, in order, with its bytes (disjoint slices, so
    /// that a batch can be worked on in parallel).
    pub fn entries_mut(&mut self) -> impl Iterator<Item = (Received, &mut [u8])> + '_ {
        let mut slots = self.bufs.chunks_mut(self.size).enumerate();
        self.received.iter().filter_map(move |&(slot, received)| {
            // `received` is in slot order (see `recvmmsg_batch`).
            let (_, buf) = slots.find(|(i, _)| *i == slot)?;
            Some((received, &mut buf[..received.len]))
        })
    }

    /// Datagrams dropped so far because they were larger than `size`.
    pub fn truncated(&self) -> u64 {
        self.truncated
    }

    /// Points every header at its slot's buffer, name and control space.
    fn prepare(&mut self) {
        let bufs = self.bufs.as_mut_ptr();
        for (i, hdr) in self.hdrs.iter_mut().enumerate() {
            let iov = &mut self.iovs[i];
            // SAFETY: `i * size` is inside `bufs`, which holds `count * size` bytes.
            iov.iov_base = unsafe { bufs.add(i * self.size) }.cast();
            iov.iov_len = self.size;
            let msg = &mut hdr.msg_hdr;
            msg.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_iov = iov;
            msg.msg_iovlen = 1;
            msg.msg_control = self.controls[i].0.as_mut_ptr().cast();
            msg.msg_controllen = self.controls[i].0.len() as _;
            msg.msg_flags = 0;
            hdr.msg_len = 0;
        }
    }

    /// Records message `i` of a completed call; truncated or non-IP ones are skipped.
    fn record(&mut self, i: usize) {
        let hdr = &self.hdrs[i];
        let msg = &hdr.msg_hdr;
        let len = hdr.msg_len as usize;
        if msg.msg_flags & libc::MSG_TRUNC != 0 {
            self.truncated += 1;
            return;
        }
        let Some(from) = from_sockaddr(&self.names[i], msg.msg_namelen) else {
            return;
        };
        let control = &self.controls[i].0;
        // `msg_controllen` is a `size_t` on glibc but a `socklen_t` on musl.
        #[allow(clippy::unnecessary_cast)]
        let control_len = msg.msg_controllen as usize;
        let received = Received {
            len,
            from,
            local: read_pktinfo(control, control_len),
            segment: read_gro(control, control_len).filter(|s| usize::from(*s) < len),
        };
        self.received.push((i, received));
    }
}

/// Reads up to a batch of datagrams from the nonblocking UDP socket `fd` with one
/// `recvmmsg(2)`; returns how many it read (0 when none is queued: stop then).
/// [`RecvBatch::get`] `0..batch.len()` gives them, less those larger than the batch's
/// size or not from an IP address, which are dropped (and counted). Does not allocate.
pub fn recvmmsg_batch(fd: BorrowedFd<'_>, batch: &mut RecvBatch) -> io::Result<usize> {
    batch.received.clear();
    batch.prepare();
    let count = batch.hdrs.len() as libc::c_uint;
    // SAFETY: every header points at live buffers of this batch with their lengths
    // (set by `prepare`); the kernel writes at most those many bytes into each and
    // updates the headers. No timeout pointer is passed.
    let ret = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            batch.hdrs.as_mut_ptr(),
            count,
            0,
            std::ptr::null_mut(),
        )
    };
    let n = match cvt(ret) {
        Ok(n) => n as usize,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            return Ok(0)
        }
        Err(e) => return Err(e),
    };
    for i in 0..n.min(batch.hdrs.len()) {
        batch.record(i);
    }
    Ok(n)
}
