//! An io_uring reactor for the receive side: TUN reads, UDP receives and readiness
//! of the control fds, all completed through one ring.
//!
//! What flows through, in order, on each [`Reactor::run_once`]:
//!
//! 1. Pending submissions (re-armed reads, new multishots) go to the kernel in one
//!    `io_uring_enter`, which also waits for the first completion or the timeout.
//! 2. Every completion queued is handed to the caller's closure as a [`Completion`]:
//!    - **TUN.** One `READ_FIXED` is always in flight, into a registered buffer. A
//!      finished read yields [`Completion::Tun`] (virtio-net header + packet, as
//!      `read(2)` would return); when the closure returns, the buffer is read into
//!      again. Never more than one: io_uring runs independent requests in no fixed
//!      order (a read that finds the queue empty waits for a poll wake-up or goes to an
//!      io-wq worker, while a later one completes inline), so two reads in flight on
//!      the TUN's single queue hand the packets of one flow out of order. Measured with
//!      32 in flight: 1,100 to 1,900 spurious TCP retransmissions in 6 s of one stream
//!      (every one DSACKed), up to 20% less throughput. The driver reads what queued
//!      behind a completed read with plain `read(2)` before the next is armed (in
//!      order: nothing else reads meanwhile), so small packets still come in batches.
//!    - **UDP.** One multishot `RECVMSG` per socket, with a provided-buffer ring
//!      (`IORING_REGISTER_PBUF_RING`) per socket: the kernel picks a buffer per
//!      datagram (or per `UDP_GRO` batch) and writes an `io_uring_recvmsg_out` header,
//!      the sender's address, the control messages (pktinfo, GRO segment size) and the
//!      payload into it. It yields [`Completion::Udp`]; when the closure returns the
//!      buffer goes back to the ring. When the ring runs dry the multishot ends
//!      (`ENOBUFS`) and is re-armed after the drain.
//!    - **Control fds** (netlink, eventfd, signalfd): a one-shot `POLL_ADD` each,
//!      re-armed after [`Completion::Readable`], so readiness is level-triggered like
//!      `poll(2)`: an fd not read empty is reported again on the next turn.
//! 3. Rings of provided buffers are published (one store each) and ended multishots
//!    re-armed; they are submitted at the start of the next turn.
//!
//! Buffers are lent to the closure only for the duration of the call: nothing is
//! allocated per completion and nothing needs returning by hand.
//!
//! **Sends stay synchronous** (`write(2)` on the TUN fd, `sendmsg(2)` with
//! `UDP_SEGMENT` on the sockets, as [`super::Tun`] and [`super::UdpSockets`] do):
//! the reactor only receives.
//!
//! **Exit.** When the interface is deleted the TUN reads fail with `EBADFD`; the first
//! such failure is reported once as [`Completion::TunError`] and TUN reading stops.
//!
//! **Without io_uring** (`kernel.io_uring_disabled`, seccomp, old kernels: see
//! [`Reactor::probe`]) the driver keeps its `poll(2)` loop and can read the UDP
//! sockets in batches with [`recvmmsg_batch`].
//!
//! The fds passed in are borrowed for the call only and kept as raw numbers: the
//! caller keeps them open while the reactor uses them (the TUN fd and the extra fds
//! for the reactor's life, the UDP sockets until [`Reactor::set_udp`] replaces them).
//! In-flight operations hold their own reference to the file, so closing a socket
//! right after replacing it is safe.

mod complete;
mod mmsg;
mod region;
mod tag;

#[cfg(test)]
mod tests;

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{opcode, squeue, IoUring, Probe};

use super::error::IoError;
use super::msg::{CmsgBuf, SourceAddr};
pub use mmsg::{recvmmsg_batch, RecvBatch};
use region::{BufRing, Region};
use tag::{Tag, GEN_MASK};

/// Sizes of the reactor's buffer pools. Out-of-range values are clamped (see fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReactorConfig {
    /// Bytes per TUN buffer: the virtio-net header plus the largest packet.
    pub tun_buffer: usize,
    /// Provided buffers per UDP socket; rounded up to a power of two (1..=32768).
    pub udp_buffers: u16,
    /// Payload bytes per UDP buffer (`UDP_GRO` batches reach 64 KiB; a larger
    /// datagram or batch is dropped and counted in [`Reactor::truncated`]).
    pub udp_payload: usize,
}

impl Default for ReactorConfig {
    /// A TUN buffer of 10 + 65536 bytes and 64 UDP buffers of 64 KiB per socket:
    /// about 8 MiB in all.
    fn default() -> Self {
        ReactorConfig {
            tun_buffer: 10 + 65_536,
            udp_buffers: 64,
            udp_payload: 65_536,
        }
    }
}

/// One finished receive, lent to the [`Reactor::run_once`] closure.
#[derive(Debug)]
pub enum Completion<'a> {
    /// One TUN read: the bytes `read(2)` would have returned (with `IFF_VNET_HDR`, the
    /// virtio-net header and the packet). The buffer is read into again afterwards.
    Tun(&'a [u8]),
    /// One UDP message, possibly several datagrams coalesced by `UDP_GRO`. The
    /// payload may be changed in place (e.g. decrypted); the buffer goes back to the
    /// kernel afterwards.
    Udp {
        /// The socket it arrived on: 0 for IPv4, 1 for IPv6.
        family: usize,
        /// The payload.
        data: &'a mut [u8],
        /// The sender.
        from: SocketAddr,
        /// The local address (and interface) it arrived on, from pktinfo.
        local: SourceAddr,
        /// With `UDP_GRO`: `data` holds datagrams of this size (the last may be shorter).
        segment: Option<u16>,
    },
    /// Extra fd number `index` (in the order given to [`Reactor::new`]) is readable or
    /// has an error or hangup pending; reported again next turn until read empty.
    Readable(usize),
    /// A TUN read failed for good: `EBADFD` when the interface was deleted
    /// ([`super::Tun::is_gone`]), otherwise another error. Reported once; the reactor
    /// stops reading the TUN fd.
    TunError(io::Error),
}

/// Most readiness polls ([`Reactor::new`]'s `extra` and [`Reactor::add_poll`]).
pub const MAX_EXTRA: usize = 64;

/// The receive state of one UDP socket.
struct UdpSlot {
    fd: Option<RawFd>,
    /// Allocated when a socket of this family is first armed.
    ring: Option<BufRing>,
    /// `msg_namelen` / `msg_controllen` for the multishot (read by the kernel when
    /// the submission is consumed; boxed so its address survives moves of the reactor).
    msg: Box<libc::msghdr>,
    gen: u32,
    /// A multishot of generation `gen` is in flight.
    armed: bool,
    /// The multishot ended and is to be armed again after the drain.
    rearm: bool,
}

impl UdpSlot {
    fn new() -> UdpSlot {
        // SAFETY: `msghdr` is plain old data (integers and raw pointers); all-zero is valid.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_controllen = mem::size_of::<CmsgBuf>() as _;
        UdpSlot {
            fd: None,
            ring: None,
            msg: Box::new(msg),
            gen: 0,
            armed: false,
            rearm: false,
        }
    }

    /// Bytes before the payload in a provided buffer: the `io_uring_recvmsg_out`
    /// header, the name field and the control field.
    // `msg_controllen` is a `size_t` on glibc but a `socklen_t` on musl.
    #[allow(clippy::unnecessary_cast)]
    fn payload_offset(&self) -> usize {
        RECVMSG_OUT_LEN + self.msg.msg_namelen as usize + self.msg.msg_controllen as usize
    }
}

/// Size of `struct io_uring_recvmsg_out` (four `u32`s).
const RECVMSG_OUT_LEN: usize = 16;

/// The io_uring receive reactor; see the module documentation.
pub struct Reactor {
    // Declared first so that it is dropped (the ring fd closed) before the buffers.
    ring: IoUring,
    tun: RawFd,
    tun_pool: Region,
    tun_stride: usize,
    tun_len: usize,
    tun_reads: u16,
    /// The pool is registered (`READ_FIXED`); otherwise plain `READ` is used.
    tun_fixed: bool,
    tun_dead: bool,
    udp: [UdpSlot; 2],
    udp_buffers: u16,
    udp_buf_size: usize,
    extra: Vec<RawFd>,
    /// Completions copied out of the queue, capacity = the queue's size.
    cqes: Vec<(u64, i32, u32)>,
    /// How completion work reaches us: "deferred", "cooperative" or "signalled".
    task_work: &'static str,
    truncated: u64,
}

// SAFETY: the raw pointers in the reactor (buffer mappings, the boxed msghdrs) point
// to memory it owns exclusively and are not tied to a thread. A ring set up with
// `SINGLE_ISSUER` refuses submissions from any task but its creator (`EEXIST`, an
// error from `run_once`), which is no memory hazard; the driver creates and runs its
// reactor on one thread.
unsafe impl Send for Reactor {}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("tun", &self.tun)
            .field("tun_reads", &self.tun_reads)
            .field("tun_fixed", &self.tun_fixed)
            .field("udp", &self.udp.each_ref().map(|s| s.fd))
            .field("extra", &self.extra)
            .finish_non_exhaustive()
    }
}

/// The ring, with completion work deferred to our own `io_uring_enter` calls where the
/// kernel allows (`SINGLE_ISSUER` + `DEFER_TASKRUN`, 6.1+; else `COOP_TASKRUN`, 5.19+):
/// without it every datagram the peer's sends wake us with is turned into task work
/// signalled by an inter-processor interrupt, which lands in the middle of our crypto
/// (pd-bench, one TCP stream: 9% of the daemon's time in the IPI's return path).
fn build_ring(sq: u32, cq: u32) -> Result<(IoUring, &'static str), IoError> {
    let deferred = IoUring::builder()
        .setup_cqsize(cq)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(sq);
    if let Ok(ring) = deferred {
        return Ok((ring, "deferred"));
    }
    let coop = IoUring::builder()
        .setup_cqsize(cq)
        .setup_coop_taskrun()
        .build(sq);
    if let Ok(ring) = coop {
        return Ok((ring, "cooperative"));
    }
    IoUring::builder()
        .setup_cqsize(cq)
        .build(sq)
        .map(|ring| (ring, "signalled"))
        .map_err(|e| IoError::syscall("io_uring_setup", e))
}

impl Reactor {
    /// Sets up the ring, the TUN buffer (registered when the kernel allows; plain
    /// reads otherwise) and arms every read: one read on `tun`, a multishot
    /// receive on each UDP socket given, a poll on each of `extra`. Nothing is
    /// submitted before the first [`Reactor::run_once`].
    pub fn new(
        tun: BorrowedFd<'_>,
        udp: [Option<BorrowedFd<'_>>; 2],
        extra: &[BorrowedFd<'_>],
        cfg: ReactorConfig,
    ) -> Result<Reactor, IoError> {
        // One read in flight, never more: see the module documentation (ordering).
        let tun_reads: u16 = 1;
        let udp_buffers = cfg.udp_buffers.clamp(1, 1 << 15).next_power_of_two();
        let tun_len = cfg.tun_buffer.clamp(64, 1 << 20);
        let tun_stride = tun_len.next_multiple_of(64);
        let udp_buf_size = RECVMSG_OUT_LEN
            + mem::size_of::<libc::sockaddr_storage>()
            + mem::size_of::<CmsgBuf>()
            + cfg.udp_payload.clamp(1, 1 << 20);
        let in_flight = usize::from(tun_reads) + extra.len().max(MAX_EXTRA) + 8;
        let sq = in_flight.next_power_of_two() as u32;
        let cq = (2 * (in_flight + 2 * usize::from(udp_buffers))).next_power_of_two() as u32;
        let (ring, task_work) = build_ring(sq, cq)?;
        let pool = Region::new(
            tun_stride * usize::from(tun_reads),
            "mmap(io_uring TUN buffers)",
        )?;
        let mut reactor = Reactor {
            task_work,
            cqes: Vec::with_capacity(ring.params().cq_entries() as usize),
            ring,
            tun: tun.as_raw_fd(),
            tun_pool: pool,
            tun_stride,
            tun_len,
            tun_reads,
            tun_fixed: false,
            tun_dead: false,
            udp: [UdpSlot::new(), UdpSlot::new()],
            udp_buffers,
            udp_buf_size,
            extra: extra.iter().map(|fd| fd.as_raw_fd()).collect(),
            truncated: 0,
        };
        reactor.tun_fixed = reactor.register_tun_pool();
        reactor.arm_all(udp)?;
        tracing::info!(
            "io_uring reactor: one TUN read in flight ({}), multishot UDP receive \
             with {udp_buffers} provided buffers per socket",
            if reactor.tun_fixed {
                "registered buffers"
            } else {
                "unregistered buffers"
            },
        );
        Ok(reactor)
    }

    /// Registers the TUN pool as fixed buffers; false (plain reads) if the kernel
    /// refuses, e.g. over `RLIMIT_MEMLOCK`.
    fn register_tun_pool(&self) -> bool {
        let iovecs: Vec<libc::iovec> = (0..usize::from(self.tun_reads))
            .map(|i| libc::iovec {
                // SAFETY: `i * stride` is inside the pool, which has `tun_reads` strides.
                iov_base: unsafe { self.tun_pool.as_ptr().add(i * self.tun_stride) }.cast(),
                iov_len: self.tun_len,
            })
            .collect();
        // SAFETY: every iovec lies inside `tun_pool`, which outlives the ring (declared
        // after it, so dropped after the ring fd is closed).
        match unsafe { self.ring.submitter().register_buffers(&iovecs) } {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(
                    "io_uring: cannot register the TUN buffers ({e}); using plain reads"
                );
                false
            }
        }
    }

    fn arm_all(&mut self, udp: [Option<BorrowedFd<'_>>; 2]) -> Result<(), IoError> {
        for i in 0..self.tun_reads {
            self.arm_tun(u32::from(i))?;
        }
        for (family, fd) in udp.into_iter().enumerate() {
            self.udp[family].fd = fd.map(|fd| fd.as_raw_fd());
            if self.udp[family].fd.is_some() {
                self.arm_udp(family)?;
            }
        }
        for i in 0..self.extra.len() {
            self.arm_poll(i as u32)?;
        }
        Ok(())
    }

    /// Adds a readiness poll on `fd` after start-up (the caller keeps it open while the
    /// reactor lives); it completes as [`Completion::Readable`] with the index
    /// returned, after those given to [`Reactor::new`]. At most [`MAX_EXTRA`] in all
    /// (the completion queue was sized with room for them).
    pub fn add_poll(&mut self, fd: BorrowedFd<'_>) -> Result<usize, IoError> {
        if self.extra.len() >= MAX_EXTRA {
            return Err(IoError::syscall(
                "io_uring POLL_ADD",
                io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        self.extra.push(fd.as_raw_fd());
        let index = self.extra.len() - 1;
        if let Err(e) = self.arm_poll(index as u32) {
            self.extra.pop();
            return Err(e);
        }
        Ok(index)
    }

    /// Whether io_uring can run the reactor here; see [`Reactor::probe`].
    pub fn available() -> bool {
        Self::probe().is_ok()
    }

    /// Checks that io_uring works and has what the reactor uses: the opcodes (by
    /// `IORING_REGISTER_PROBE`), timeouts on waits (`IORING_FEAT_EXT_ARG`, 5.11),
    /// provided-buffer rings (5.19) and synchronous cancellation (6.0, which comes with
    /// multishot `RECVMSG`). The error says what is missing, for the start-up log:
    /// `io_uring_setup` fails with `EPERM` under `kernel.io_uring_disabled`.
    pub fn probe() -> Result<(), IoError> {
        let ring = IoUring::new(4).map_err(|e| IoError::syscall("io_uring_setup", e))?;
        let unsupported = |what| IoError::syscall(what, io::ErrorKind::Unsupported.into());
        if !ring.params().is_feature_ext_arg() {
            return Err(unsupported("io_uring_enter(EXT_ARG)"));
        }
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| IoError::syscall("io_uring_register(PROBE)", e))?;
        let ops = [
            (opcode::ReadFixed::CODE, "io_uring READ_FIXED"),
            (opcode::Read::CODE, "io_uring READ"),
            (opcode::RecvMsgMulti::CODE, "io_uring RECVMSG"),
            (opcode::PollAdd::CODE, "io_uring POLL_ADD"),
            (opcode::AsyncCancel::CODE, "io_uring ASYNC_CANCEL"),
        ];
        if let Some((_, name)) = ops.iter().find(|(code, _)| !probe.is_supported(*code)) {
            return Err(unsupported(name));
        }
        let bufs = BufRing::new(1, 64)?;
        // SAFETY: the one-entry ring is valid until unregistered below (or until the
        // ring is dropped, before `bufs`, on the error path).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufs.ring_addr(), 1, 0, 0)
        }
        .map_err(|e| IoError::syscall("io_uring_register(PBUF_RING)", e))?;
        drop(ring.submitter().unregister_buf_ring(0));
        let zero = Timespec::new();
        match ring
            .submitter()
            .register_sync_cancel(Some(zero), CancelBuilder::any())
        {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                Err(IoError::syscall("io_uring_register(SYNC_CANCEL)", e))
            }
            _ => Ok(()),
        }
    }

    /// UDP messages dropped because they did not fit a buffer (see
    /// [`ReactorConfig::udp_payload`]).
    pub fn truncated(&self) -> u64 {
        self.truncated
    }

    /// How the kernel runs completion work: "deferred" (`DEFER_TASKRUN`, only inside
    /// our `io_uring_enter`), "cooperative" (`COOP_TASKRUN`) or "signalled" (an IPI).
    pub fn task_work(&self) -> &'static str {
        self.task_work
    }

    /// Submits what is pending, waits until at least one completion is queued or
    /// `timeout` passes (a signal ends the wait early too), then calls `f` for every
    /// completion queued, re-arming reads as it goes. Call it once per loop turn with
    /// the time to the next timer as `timeout`.
    ///
    /// Fails only on a broken ring or a UDP socket error other than a full buffer
    /// ring; completions queued before are still delivered first.
    pub fn run_once(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(Completion<'_>),
    ) -> Result<(), IoError> {
        self.submit_and_wait(timeout)?;
        let mut cqes = mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        let mut first_err = None;
        for &(data, res, flags) in &cqes {
            if let Err(e) = self.complete(data, res, flags, &mut f) {
                first_err.get_or_insert(e);
            }
        }
        self.cqes = cqes;
        if let Err(e) = self.after_drain() {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }

    fn submit_and_wait(&mut self, timeout: Duration) -> Result<(), IoError> {
        let ts = Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let args = SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(IoError::syscall("io_uring_enter", e)),
        }
    }

    /// Replaces the UDP sockets (the listen port changed): cancels the multishots on
    /// the old ones (datagrams they still complete are dropped) and arms the new ones.
    /// The old sockets may be closed as soon as this returns.
    pub fn set_udp(&mut self, udp: [Option<BorrowedFd<'_>>; 2]) -> Result<(), IoError> {
        for (family, fd) in udp.into_iter().enumerate() {
            let slot = &mut self.udp[family];
            if slot.armed {
                let old = Tag::Udp {
                    family,
                    gen: slot.gen,
                };
                let cancel = opcode::AsyncCancel::new(old.encode())
                    .build()
                    .user_data(Tag::Cancel.encode());
                self.push(&cancel)?;
            }
            let slot = &mut self.udp[family];
            slot.gen = slot.gen.wrapping_add(1) & GEN_MASK;
            slot.armed = false;
            slot.rearm = false;
            slot.fd = fd.map(|fd| fd.as_raw_fd());
            if slot.fd.is_some() {
                self.arm_udp(family)?;
            }
        }
        Ok(())
    }

    fn arm_tun(&mut self, index: u32) -> Result<(), IoError> {
        if self.tun_dead {
            return Ok(());
        }
        // SAFETY: buffer `index` (< tun_reads) is inside the pool.
        let buf = unsafe { self.tun_pool.as_ptr().add(index as usize * self.tun_stride) };
        let len = self.tun_len as u32;
        let entry = if self.tun_fixed {
            opcode::ReadFixed::new(Fd(self.tun), buf, len, index as u16).build()
        } else {
            opcode::Read::new(Fd(self.tun), buf, len).build()
        };
        self.push(&entry.user_data(Tag::Tun(index).encode()))
    }

    fn arm_udp(&mut self, family: usize) -> Result<(), IoError> {
        let Some(fd) = self.udp[family].fd else {
            return Ok(());
        };
        if self.udp[family].ring.is_none() {
            let ring = BufRing::new(self.udp_buffers, self.udp_buf_size)?;
            // SAFETY: the ring mapping lives in `self.udp` until the reactor is
            // dropped, after the io_uring fd is closed (field order).
            unsafe {
                self.ring.submitter().register_buf_ring_with_flags(
                    ring.ring_addr(),
                    ring.count(),
                    family as u16,
                    0,
                )
            }
            .map_err(|e| IoError::syscall("io_uring_register(PBUF_RING)", e))?;
            self.udp[family].ring = Some(ring);
        }
        let slot = &mut self.udp[family];
        let tag = Tag::Udp {
            family,
            gen: slot.gen,
        };
        let entry = opcode::RecvMsgMulti::new(Fd(fd), &*slot.msg, family as u16)
            .build()
            .user_data(tag.encode());
        slot.armed = true;
        self.push(&entry)
    }

    fn arm_poll(&mut self, index: u32) -> Result<(), IoError> {
        let Some(&fd) = self.extra.get(index as usize) else {
            return Ok(());
        };
        let entry = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(Tag::Poll(index).encode());
        self.push(&entry)
    }

    /// Queues `entry`, submitting what is queued first when the queue is full.
    fn push(&mut self, entry: &squeue::Entry) -> Result<(), IoError> {
        // SAFETY: every entry points into memory the reactor owns and keeps until the
        // ring is closed: TUN pool buffers, boxed msghdrs; provided-buffer rings are
        // registered above with the same lifetime.
        if unsafe { self.ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        self.ring
            .submit()
            .map_err(|e| IoError::syscall("io_uring_enter", e))?;
        // SAFETY: as above.
        unsafe { self.ring.submission().push(entry) }
            .map_err(|_| IoError::syscall("io_uring submission", io::ErrorKind::WouldBlock.into()))
    }
}

impl Drop for Reactor {
    /// Cancels every operation in flight and waits for that (at most a second), so
    /// the kernel is done with the buffers before they are unmapped.
    fn drop(&mut self) {
        let limit = Timespec::new().sec(1);
        match self
            .ring
            .submitter()
            .register_sync_cancel(Some(limit), CancelBuilder::any())
        {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => tracing::debug!("io_uring: cancelling on drop failed: {e}"),
        }
    }
}
