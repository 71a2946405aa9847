//! The event loop of `portdistrict-dataplane`: one thread that owns the protocol
//! [`Device`] and every fd, and joins them.
//!
//! Each turn: `poll(2)` over the TUN fd, the UDP sockets, the rtnetlink monitor, the
//! UAPI eventfd and the signalfd (timeout: the next timer tick) -> TUN packets to
//! [`Device::handle_tun_packet`] -> datagrams to [`Device::handle_datagram`] -> link
//! events (MTU) -> UAPI calls (`get`, `set`, `stats`) -> timers
//! ([`Device::handle_timeout`]). Reads are bounded per turn so no source starves
//! the others. The loop ends when the interface is deleted (the TUN fd reports
//! `EBADFD`) or on SIGTERM/SIGINT.

use crate::crypto_jobs::{chunk_size, remove_spans, OpenChunk, SealChunk};
use crate::io::{
    poll_fds, read_cpu_times, recvmmsg_batch, Completion, EventFd, IdleGate, LinkEvent,
    LinkMonitor, PollFd, Pool, Reactor, ReactorConfig, RecvBatch, SourceAddr, Tun, UdpSockets,
};
use crate::signals::TermSignals;
use crate::uapi_server::{Call, Pending};
use crate::xdp::{Xdp, XdpMode};
use portdistrict_ebpf::xsk::{self, XskSocket};
use portdistrict_offload::vnet::VIRTIO_NET_HDR_LEN;
use portdistrict_offload::{split, Coalescer, Segments, VirtioNetHdr};
use portdistrict_wg::config::ConfigChange;
use portdistrict_wg::crypto::AeadKey;
use portdistrict_wg::device::{
    DataTicket, Device, Io, SendOutcome, MAX_PACKET, TUN_HEADROOM, TUN_TAILROOM,
};
use portdistrict_wg::peer::{Endpoint, LocalAddr};
use portdistrict_wg::session::seal_prepared;
use portdistrict_wg::uapi::{self, Request};
use portdistrict_wg::wire::{self, MessageType};
use std::net::{IpAddr, SocketAddr};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Packets read from one source per loop turn before looking at the others.
const BATCH: usize = 128;
/// Entries per `recvmmsg` call (each up to 64 KiB: one datagram or a GRO run).
const RX_BATCH: usize = 16;
/// Timers are checked at least this often (their granularity).
const TICK: Duration = Duration::from_millis(100);
/// Extra io_uring turns (zero timeout) after one that moved bulk data, taken into the
/// same batch (see `run_uring`).
const EXTRA_TURNS: usize = 3;
/// Bytes (TUN frames and UDP datagrams) a turn must have moved for another turn to
/// follow: a TSO frame or a GSO datagram of a dozen segments, not a ping or ACKs.
const BULK_TURN: usize = 16 * 1024;

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The TUN interface was deleted.
    InterfaceDeleted,
    /// SIGTERM or SIGINT.
    Signal,
}

/// Datagrams to one endpoint waiting to leave in one `UDP_SEGMENT` (GSO) send: all of
/// `segment` bytes except possibly the last.
struct TxBatch {
    to: Option<Endpoint>,
    segment: usize,
    closed: bool,
    count: usize,
    buf: Vec<u8>,
    /// Data messages in `buf` still to be sealed before the batch leaves: offset,
    /// length and index into `keys`.
    unsealed: Vec<(usize, usize, usize)>,
    /// The keys of `unsealed` (usually one: a batch goes to one endpoint).
    keys: Vec<Arc<AeadKey>>,
    /// Endpoints whose sticky source address the kernel refused during a flush.
    sources_cleared: Vec<std::net::SocketAddr>,
    /// Datagrams the kernel refused during flushes.
    failed: u64,
    /// Data messages of `buf` that could not be sealed (offset, length): taken out
    /// of the batch before it leaves.
    dropped: Vec<(usize, usize)>,
    /// Data messages dropped unsent because they could not be sealed (a hard drop:
    /// see `seal_prepared`).
    seal_dropped: u64,
    /// Data messages sealed or opened by the AVX-512 group code (both directions:
    /// receive groups add theirs here too).
    crypto_grouped: u64,
}

/// Most datagrams in one GSO send (the kernel's limit is 64 segments).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO send.
const GSO_MAX_BYTES: usize = 65_000;

impl TxBatch {
    fn new() -> Self {
        Self {
            to: None,
            segment: 0,
            closed: false,
            count: 0,
            buf: Vec::with_capacity(GSO_MAX_BYTES),
            unsealed: Vec::with_capacity(GSO_MAX_SEGMENTS),
            keys: Vec::with_capacity(GSO_MAX_SEGMENTS),
            sources_cleared: Vec::new(),
            failed: 0,
            dropped: Vec::with_capacity(GSO_MAX_SEGMENTS),
            seal_dropped: 0,
            crypto_grouped: 0,
        }
    }

    fn fits(&self, to: &Endpoint, len: usize) -> bool {
        self.count > 0
            && self.to.as_ref() == Some(to)
            && !self.closed
            && len <= self.segment
            && self.count < GSO_MAX_SEGMENTS
            && self.buf.len() + len <= GSO_MAX_BYTES
    }

    /// Appends one datagram for `to` (flushing first if it does not fit); returns
    /// its offset in `buf`.
    fn append(&mut self, udp: &UdpSockets, pool: &Pool, to: &Endpoint, datagram: &[u8]) -> usize {
        if !self.fits(to, datagram.len()) {
            self.flush(udp, pool);
        }
        if self.count == 0 {
            self.to = Some(*to);
            self.segment = datagram.len();
        } else if datagram.len() < self.segment {
            self.closed = true;
        }
        let offset = self.buf.len();
        self.buf.extend_from_slice(datagram);
        self.count += 1;
        offset
    }

    /// Seals the batch's data messages (in parallel when there are enough of them)
    /// and sends the batch.
    fn flush(&mut self, udp: &UdpSockets, pool: &Pool) {
        self.seal(pool);
        if !self.dropped.is_empty() {
            // What could not be sealed never leaves; the rest of the batch keeps its
            // order and segment size.
            let count = self.count;
            let removed = remove_spans(&mut self.buf, &mut self.dropped).unwrap_or(count);
            self.count = count.saturating_sub(removed);
            self.seal_dropped += (count - self.count) as u64;
            self.dropped.clear();
        }
        if self.count == 0 {
            self.to = None;
            self.buf.clear();
            self.closed = false;
        }
        let Some(to) = self.to.take() else { return };
        let mut src = to_source(to.local);
        let had_source = src != SourceAddr::None;
        let seg = u16::try_from(self.segment).unwrap_or(u16::MAX);
        let result = if self.count == 1 {
            udp.send(&self.buf, to.addr, &mut src)
        } else {
            udp.send_segments(&self.buf, seg, to.addr, &mut src)
        };
        if result.is_err() {
            self.failed += self.count as u64;
        }
        if had_source && src == SourceAddr::None {
            self.sources_cleared.push(to.addr);
        }
        self.buf.clear();
        self.count = 0;
        self.closed = false;
    }

    fn seal(&mut self, pool: &Pool) {
        let limit = chunk_size(pool);
        let mut rest: &mut [u8] = &mut self.buf;
        let mut pos = 0;
        let mut todo = self.unsealed.iter().peekable();
        // `unsealed` is in offset order and its ranges are disjoint; up to
        // `MAX_CHUNKS` chunks go to the pool at a time.
        while todo.peek().is_some() {
            let mut chunks: [Option<SealChunk<'_>>; MAX_CHUNKS] = [const { None }; MAX_CHUNKS];
            let mut n = 0;
            while let Some(&&(offset, len, key)) = todo.peek() {
                let key: &AeadKey = &self.keys[key];
                let fits = n > 0
                    && chunks[n - 1]
                        .as_ref()
                        .is_some_and(|c| std::ptr::eq(c.key(), key) && !c.is_full(limit));
                if !fits && n == MAX_CHUNKS {
                    break;
                }
                todo.next();
                let tail = std::mem::take(&mut rest);
                // Never expected (the spans come from `append`): a message this cannot
                // reach stays unsealed, so it is dropped like one that failed to seal
                // (all of the batch, if the span lies outside the buffer).
                let Some((_, tail)) = offset
                    .checked_sub(pos)
                    .and_then(|gap| tail.split_at_mut_checked(gap))
                else {
                    self.dropped.push((offset, len));
                    continue;
                };
                let Some((msg, tail)) = tail.split_at_mut_checked(len) else {
                    self.dropped.push((offset, len));
                    continue;
                };
                rest = tail;
                pos = offset + len;
                if !fits {
                    chunks[n] = Some(SealChunk::new(key));
                    n += 1;
                }
                if let Some(c) = chunks[n - 1].as_mut() {
                    c.push(msg, (offset, len));
                }
            }
            pool.run(&mut chunks[..n]);
            for c in chunks[..n].iter().flatten() {
                self.dropped.extend(c.dropped());
            }
            let grouped: usize = chunks[..n].iter().flatten().map(|c| c.grouped).sum();
            self.crypto_grouped += grouped as u64;
        }
        self.unsealed.clear();
        self.keys.clear();
    }
}

/// The operating-system half handed to the protocol for its outputs. Datagrams are
/// batched per endpoint and leave as GSO sends when the batch ends (on drop).
struct OsIo<'a> {
    tun: &'a Tun,
    udp: Option<&'a UdpSockets>,
    tx: &'a mut TxBatch,
    pool: &'a Pool,
    /// With a virtio-net header on the TUN fd: decrypted packets are coalesced (GRO)
    /// and written as super-packets when the batch ends.
    gro: Option<&'a mut Coalescer>,
    /// The XDP program, told of every receiver index before it is announced.
    xdp: Option<&'a mut Xdp>,
}

fn to_source(local: Option<LocalAddr>) -> SourceAddr {
    match local {
        Some(LocalAddr {
            ip: IpAddr::V4(addr),
            ifindex,
        }) => SourceAddr::V4 { addr, ifindex },
        Some(LocalAddr {
            ip: IpAddr::V6(addr),
            ifindex,
        }) => SourceAddr::V6 { addr, ifindex },
        None => SourceAddr::None,
    }
}

fn from_source(src: SourceAddr) -> Option<LocalAddr> {
    match src {
        SourceAddr::V4 { addr, ifindex } => Some(LocalAddr {
            ip: IpAddr::V4(addr),
            ifindex,
        }),
        SourceAddr::V6 { addr, ifindex } => Some(LocalAddr {
            ip: IpAddr::V6(addr),
            ifindex,
        }),
        SourceAddr::None => None,
    }
}

impl OsIo<'_> {
    /// Jumbo datagrams (large tunnel MTU) gain nothing from batching: sent at once.
    fn send_now(udp: &UdpSockets, to: &Endpoint, datagram: &[u8]) -> SendOutcome {
        let mut src = to_source(to.local);
        let had_source = src != SourceAddr::None;
        match udp.send(datagram, to.addr, &mut src) {
            Ok(()) if had_source && src == SourceAddr::None => SendOutcome::SentWithoutSource,
            Ok(()) => SendOutcome::Sent,
            Err(_) => SendOutcome::Failed,
        }
    }
}

impl Io for OsIo<'_> {
    fn send_udp(&mut self, to: &Endpoint, datagram: &[u8]) -> SendOutcome {
        let Some(udp) = self.udp else {
            return SendOutcome::Failed;
        };
        if datagram.len() > GSO_MAX_BYTES / 2 {
            self.tx.flush(udp, self.pool);
            return Self::send_now(udp, to, datagram);
        }
        self.tx.append(udp, self.pool, to, datagram);
        SendOutcome::Sent
    }

    fn send_data(&mut self, to: &Endpoint, msg: &mut [u8], key: &Arc<AeadKey>) -> SendOutcome {
        let Some(udp) = self.udp else {
            return SendOutcome::Failed;
        };
        if msg.len() > GSO_MAX_BYTES / 2 {
            self.tx.flush(udp, self.pool);
            if seal_prepared(key, msg).is_err() {
                return SendOutcome::NotSealed;
            }
            return Self::send_now(udp, to, msg);
        }
        // Sealed when the batch leaves, together with the rest of the batch.
        let offset = self.tx.append(udp, self.pool, to, msg);
        let tx = &mut *self.tx;
        let k = match tx.keys.last() {
            Some(last) if Arc::ptr_eq(last, key) => tx.keys.len() - 1,
            _ => {
                tx.keys.push(Arc::clone(key));
                tx.keys.len() - 1
            }
        };
        tx.unsealed.push((offset, msg.len(), k));
        SendOutcome::Sent
    }

    fn index_added(&mut self, index: u32) {
        if let Some(x) = self.xdp.as_mut() {
            x.index_added(index);
        }
    }

    fn write_tun(&mut self, packet: &[u8]) {
        match self.gro.as_mut() {
            Some(gro) => gro.push(packet),
            // A full TUN queue drops, like any NIC; the kernel counts it.
            None => drop(self.tun.write(packet)),
        }
    }
}

impl Drop for OsIo<'_> {
    fn drop(&mut self) {
        if let Some(udp) = self.udp {
            self.tx.flush(udp, self.pool);
        }
        if let Some(gro) = self.gro.as_mut() {
            let tun = self.tun;
            gro.flush(|frame| drop(tun.write(frame)));
        }
    }
}

/// Most data messages opened in parallel as one group.
const RX_GROUP: usize = 64;
/// Most crypto chunks handed to the pool at once (a batch takes more rounds).
const MAX_CHUNKS: usize = 8;

/// One data message of a receive batch, admitted by the device: opened on any thread
/// (in a chunk), finished in order.
struct Admitted<'a> {
    msg: &'a mut [u8],
    ticket: DataTicket,
    from: SocketAddr,
    local: Option<LocalAddr>,
}

/// Received datagrams on their way to the device: data messages are admitted in
/// arrival order ([`Device::begin_data`]), opened in parallel as a group, then
/// finished in arrival order ([`Device::finish_data`]). Any other message first
/// finishes the group, so that a handshake is seen exactly where it arrived.
struct RxGroup<'a> {
    jobs: [Option<Admitted<'a>>; RX_GROUP],
    len: usize,
}

impl<'a> RxGroup<'a> {
    fn new() -> Self {
        RxGroup {
            jobs: [const { None }; RX_GROUP],
            len: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn datagram(
        &mut self,
        device: &mut Device,
        pool: &Pool,
        now: Instant,
        from: SocketAddr,
        local: Option<LocalAddr>,
        msg: &'a mut [u8],
        io: &mut OsIo<'_>,
    ) {
        if wire::message_type(msg) != Ok(MessageType::Data) {
            self.finish(device, pool, now, io);
            device.handle_datagram(now, from, local, msg, io);
            return;
        }
        let Some(ticket) = device.begin_data(now, msg) else {
            return;
        };
        self.jobs[self.len] = Some(Admitted {
            msg,
            ticket,
            from,
            local,
        });
        self.len += 1;
        if self.len == RX_GROUP {
            self.finish(device, pool, now, io);
        }
    }

    /// Opens the group (consecutive messages under one key in chunks, in parallel
    /// when the pool's workers are on; up to [`MAX_CHUNKS`] chunks at a time) and
    /// finishes each message in arrival order.
    fn finish(&mut self, device: &mut Device, pool: &Pool, now: Instant, io: &mut OsIo<'_>) {
        let limit = chunk_size(pool);
        let mut next = 0;
        while next < self.len {
            let mut chunks: [Option<OpenChunk<'a>>; MAX_CHUNKS] = [const { None }; MAX_CHUNKS];
            let mut n = 0;
            let mut end = next;
            while end < self.len {
                if let Some(a) = self.jobs[end].as_mut() {
                    let key = a.ticket.key();
                    let fits = n > 0
                        && chunks[n - 1]
                            .as_ref()
                            .is_some_and(|c| Arc::ptr_eq(c.key(), key) && !c.is_full(limit));
                    if !fits {
                        if n == MAX_CHUNKS {
                            break;
                        }
                        chunks[n] = Some(OpenChunk::new(Arc::clone(key)));
                        n += 1;
                    }
                    if let Some(c) = chunks[n - 1].as_mut() {
                        c.push(std::mem::take(&mut a.msg));
                    }
                }
                end += 1;
            }
            pool.run(&mut chunks[..n]);
            let grouped: usize = chunks[..n].iter().flatten().map(|c| c.grouped).sum();
            io.tx.crypto_grouped += grouped as u64;
            let mut opened = chunks
                .into_iter()
                .take(n)
                .flatten()
                .flat_map(OpenChunk::into_results);
            for slot in &mut self.jobs[next..end] {
                let (Some(a), Some((msg, result))) = (slot.take(), opened.next()) else {
                    continue;
                };
                device.finish_data(now, a.from, a.local, msg, a.ticket, result, io);
            }
            next = end;
        }
        self.len = 0;
    }
}

/// Data messages the XDP program steered to an AF_XDP socket: admitted, opened and
/// finished like the UDP socket's, a group per batch of frames; the frames go back to
/// the kernel when the group is done.
fn read_xsk(
    device: &mut Device,
    pool: &Pool,
    now: Instant,
    xsk: &mut XskSocket,
    ifindex: u32,
    io: &mut OsIo<'_>,
) {
    for _ in 0..4 {
        let (unparsed, n) = xsk.receive(xsk::BATCH, |frames| {
            let mut unparsed = 0;
            let mut rx = RxGroup::new();
            for frame in frames {
                let Some(u) = xsk::parse_udp(frame) else {
                    unparsed += 1;
                    continue;
                };
                let local = Some(LocalAddr { ip: u.to, ifindex });
                rx.datagram(device, pool, now, u.from, local, &mut frame[u.payload], io);
            }
            rx.finish(device, pool, now, io);
            unparsed
        });
        xsk.unparsed += unparsed;
        if n < xsk::BATCH {
            break;
        }
    }
}

/// Reads up to `max` TUN packets with `read(2)` until the queue is empty, each to the
/// device (split first when it is a super-packet); true when the interface is gone.
/// The poll loop's TUN reader, and on io_uring the follow-up to each completed read:
/// there the one read in flight has completed and is re-armed only afterwards, so
/// these reads take the packets queued after it, in order.
fn drain_tun(
    device: &mut Device,
    tun: &Tun,
    buf: &mut [u8],
    tun_split: &mut TunSplit<'_>,
    now: Instant,
    io: &mut OsIo<'_>,
    max: usize,
) -> bool {
    let vnet = tun_split.vnet;
    for _ in 0..max {
        // Without a virtio-net header the packet is read where it will be sealed:
        // after room for the data header, with room for padding and tag behind.
        let at = if vnet { 0 } else { TUN_HEADROOM };
        let end = buf.len() - TUN_TAILROOM;
        let n = match tun.read(&mut buf[at..end]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if Tun::is_gone(&e) => return true,
            Err(e) => {
                log::error!("{}: reading the TUN device failed: {e}", tun.name());
                return true;
            }
        };
        if vnet {
            tun_frame(device, tun_split, now, &buf[..n], io);
        } else {
            device.handle_tun_packet_in_place(now, buf, n, io);
        }
    }
    false
}

/// One TUN read (`frame`) to the device: as is, or with a virtio-net header split
/// into MTU-sized packets first (a TSO/USO super-packet).
fn tun_frame(
    device: &mut Device,
    tun_split: &mut TunSplit<'_>,
    now: Instant,
    frame: &[u8],
    io: &mut OsIo<'_>,
) {
    if !tun_split.vnet {
        device.handle_tun_packet(now, frame, io);
        return;
    }
    let segments = &mut *tun_split.segments;
    let split_ok = VirtioNetHdr::parse(frame).and_then(|hdr| {
        segments.clear();
        split(
            &hdr,
            &frame[VIRTIO_NET_HDR_LEN..],
            TUN_HEADROOM,
            TUN_TAILROOM,
            segments,
        )
    });
    if split_ok.is_err() {
        *tun_split.malformed += 1;
        return;
    }
    // Each segment has room for the data header before it and the padding and tag
    // after it: it is sealed where it lies.
    for i in 0..segments.len() {
        let (buf, len) = segments.get_with_room_mut(i);
        device.handle_tun_packet_in_place(now, buf, len, io);
    }
}

/// The TUN-read half of the offload state, borrowed next to an [`OsIo`].
struct TunSplit<'a> {
    vnet: bool,
    segments: &'a mut Segments,
    malformed: &'a mut u64,
}

impl<'a> OsIo<'a> {
    /// The output sink of one batch (with the coalescer when the TUN fd carries a
    /// virtio-net header), and the TUN-read half of the offload state.
    fn new(
        tun: &'a Tun,
        udp: Option<&'a UdpSockets>,
        tx: &'a mut TxBatch,
        pool: &'a Pool,
        offload: &'a mut Offload,
        xdp: Option<&'a mut Xdp>,
    ) -> (Self, TunSplit<'a>) {
        let Offload {
            vnet,
            segments,
            gro,
            malformed,
            ..
        } = offload;
        let io = OsIo {
            tun,
            udp,
            tx,
            pool,
            gro: vnet.then_some(gro),
            xdp,
        };
        let tun_split = TunSplit {
            vnet: *vnet,
            segments,
            malformed,
        };
        (io, tun_split)
    }
}

/// The io_uring reactor unless `PD_IO=poll` asks for the `poll(2)` loop or the kernel
/// refuses io_uring (`kernel.io_uring_disabled`, seccomp, old kernel); says which
/// receive path is active.
fn open_reactor(
    tun: &Tun,
    udp: &UdpSockets,
    link: &LinkMonitor,
    wake: &EventFd,
    signals: &TermSignals,
    xsks: &[(XskSocket, u32)],
) -> Option<Reactor> {
    use std::os::fd::AsFd;
    match std::env::var("PD_IO").as_deref() {
        Ok("poll") => {
            log::info!(
                "{}: receive path: poll(2) loop with recvmmsg (PD_IO=poll)",
                tun.name()
            );
            return None;
        }
        Ok("uring") | Err(_) => {}
        Ok(other) => log::warn!(
            "{}: PD_IO={other:?} is neither \"uring\" nor \"poll\"; trying io_uring",
            tun.name()
        ),
    }
    if let Err(e) = Reactor::probe() {
        log::info!(
            "{}: receive path: poll(2) loop with recvmmsg (io_uring unavailable: {e})",
            tun.name()
        );
        return None;
    }
    // The first three are the driver's `readable` slots; AF_XDP sockets follow.
    let mut extra = vec![link.fd(), wake.fd(), signals.fd()];
    extra.extend(xsks.iter().map(|(s, _)| s.fd()));
    match Reactor::new(
        tun.as_fd(),
        [udp.v4_fd(), udp.v6_fd()],
        &extra,
        ReactorConfig::default(),
    ) {
        Ok(r) => {
            log::info!(
                "{}: receive path: io_uring (one TUN read in flight, multishot UDP receive; task work: {})",
                tun.name(),
                r.task_work()
            );
            Some(r)
        }
        Err(e) => {
            log::warn!(
                "{}: receive path: poll(2) loop with recvmmsg (io_uring setup failed: {e})",
                tun.name()
            );
            None
        }
    }
}

/// How often the idle gate samples the CPU times (every tick).
const GATE_INTERVAL: Duration = TICK;

/// Worker threads for the crypto pool, and whether an [`IdleGate`] decides when to
/// use them: `PD_CRYPTO_THREADS=N` forces N threads in all (the loop's included,
/// always used; 1 = no workers); unset, one per CPU besides the loop's, used while
/// CPU time is idle.
fn crypto_workers() -> (usize, bool) {
    if let Ok(v) = std::env::var("PD_CRYPTO_THREADS") {
        match v.trim().parse::<usize>() {
            Ok(n) => return (n.clamp(1, 64) - 1, false),
            Err(_) => {
                log::warn!("PD_CRYPTO_THREADS={v:?} is not a number; using one thread per CPU")
            }
        }
    }
    (
        std::thread::available_parallelism().map_or(1, |n| n.get()) - 1,
        true,
    )
}

/// Offload state of the loop: the TUN side (virtio-net header, TSO/USO split, GRO)
/// and counters of what the offload layer refused.
struct Offload {
    vnet: bool,
    segments: Segments,
    gro: Coalescer,
    /// TUN reads whose virtio-net header or super-packet could not be split.
    malformed: u64,
    /// UDP GSO/GRO wanted (off with `PD_OFFLOAD=off`).
    udp: bool,
}

/// Everything the loop owns.
pub struct Driver {
    device: Device,
    tun: Tun,
    udp: Option<UdpSockets>,
    listen_port: u16,
    fwmark: u32,
    link: LinkMonitor,
    signals: TermSignals,
    wake: Arc<EventFd>,
    calls: mpsc::Receiver<Pending>,
    buf: Box<[u8]>,
    events: Vec<LinkEvent>,
    tx: TxBatch,
    /// Threads that seal and open the messages of a batch in parallel.
    pool: Pool,
    /// Decides when `pool` uses its workers (`None`: always, as configured).
    gate: Option<IdleGate>,
    gate_next: Instant,
    offload: Offload,
    /// Buffers of the poll loop's `recvmmsg` receives.
    rx_batch: RecvBatch,
    /// The io_uring receive path; `None` runs the `poll(2)` loop.
    reactor: Option<Reactor>,
    /// The shared-memory region with portdistrictd (`--shm`).
    shm: Option<crate::shm_link::ShmLink>,
    /// The XDP program on the underlay (`--xdp`).
    xdp: Option<Xdp>,
    /// Its AF_XDP sockets (steer mode), with the interface each is bound to.
    xsks: Vec<(XskSocket, u32)>,
}

/// How the loop uses the kernel's fast paths.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// UDP GSO/GRO (and, decided earlier, TUN offloads): `PD_OFFLOAD` not `off`.
    pub udp_offload: bool,
    /// The XDP program on the underlay.
    pub xdp: XdpMode,
}

/// Most AF_XDP sockets the `poll(2)` loop watches.
const MAX_POLL_XSKS: usize = 16;

impl Driver {
    /// Builds the loop; binds the UDP sockets to a random port as wireguard-go does.
    pub fn new(
        device: Device,
        tun: Tun,
        link: LinkMonitor,
        signals: TermSignals,
        wake: Arc<EventFd>,
        calls: mpsc::Receiver<Pending>,
        opts: Options,
    ) -> anyhow::Result<Self> {
        let Options {
            udp_offload,
            xdp: xdp_mode,
        } = opts;
        let udp = UdpSockets::bind(0, 0)?;
        let vnet = tun.offload().vnet_hdr;
        let gro = udp.set_offload(udp_offload);
        let o = tun.offload();
        log::info!(
            "{}: listening on UDP port {}; offloads: TUN vnet-hdr {} (TSO {}, USO {}), UDP GSO {}, UDP GRO {}",
            tun.name(),
            udp.port(),
            o.vnet_hdr,
            o.tso,
            o.uso,
            udp.gso_enabled(),
            gro
        );
        let mut xdp = Xdp::start(xdp_mode, tun.name(), tun.ifindex());
        let xsks = match xdp.as_mut() {
            Some(x) => {
                x.tick(Instant::now(), &device, udp.port(), tun.name());
                x.take_new_sockets()
            }
            None => Vec::new(),
        };
        let reactor = open_reactor(&tun, &udp, &link, &wake, &signals, &xsks);
        let (workers, gated) = crypto_workers();
        let pool = Pool::new(workers);
        // Gated workers start unused: the gate turns them on once it sees idle CPUs.
        pool.set_enabled(!gated);
        log::info!(
            "{}: crypto on up to {} thread(s): the loop and {} worker(s), {} (PD_CRYPTO_THREADS=N forces N)",
            tun.name(),
            pool.workers() + 1,
            pool.workers(),
            if gated { "used while other CPUs are idle" } else { "always used" }
        );
        Ok(Self {
            pool,
            gate: (gated && workers > 0).then(IdleGate::new),
            gate_next: Instant::now(),
            reactor,
            rx_batch: RecvBatch::new(RX_BATCH, MAX_PACKET + 64),
            device,
            tun,
            udp: Some(udp),
            listen_port: 0,
            fwmark: 0,
            link,
            signals,
            wake,
            calls,
            buf: vec![0u8; TUN_HEADROOM + MAX_PACKET + 64 + TUN_TAILROOM].into_boxed_slice(),
            events: Vec::new(),
            tx: TxBatch::new(),
            offload: Offload {
                vnet,
                segments: Segments::with_capacity(512 * 1024, 4096),
                gro: Coalescer::new(),
                malformed: 0,
                udp: udp_offload,
            },
            shm: None,
            xdp,
            xsks,
        })
    }

    /// Takes its configuration from a shared-memory region (besides UAPI).
    pub fn with_shm(mut self, region: portdistrict_shm::Region) -> Self {
        log::info!(
            "{}: configuration from shared memory ({} peers at most)",
            self.tun.name(),
            region.capacity()
        );
        self.shm = Some(crate::shm_link::ShmLink::new(region));
        self
    }

    /// Applies what the shared-memory region changed, runs its commands and writes the
    /// statistics back (on timer ticks).
    fn poll_shm(&mut self, now: Instant) {
        let Some(mut link) = self.shm.take() else {
            return;
        };
        let name = self.tun.name().to_owned();
        link.apply_config(&name, |change| self.apply_set(now, change));
        while let Some(portdistrict_shm::Command::Handshake(key)) = link.next_command(&name) {
            let key = portdistrict_wg::PublicKey(key);
            let mut known = false;
            self.with_io(|device, io| known = device.initiate_handshake(now, &key, io));
            if !known {
                log::warn!("{name}: shared memory asked for a handshake with an unknown peer");
            }
        }
        if link.stats_due(now) {
            link.write_stats(&name, &self.device.peer_stats());
        }
        self.shm = Some(link);
    }

    /// Runs until the interface is deleted or a termination signal arrives.
    pub fn run(&mut self) -> anyhow::Result<Exit> {
        if self.reactor.is_some() {
            return self.run_uring();
        }
        let mut next_tick = Instant::now();
        loop {
            let (tun_ready, udp_ready, link_ready, wake_ready, sig_ready, xsk_ready) =
                self.wait(next_tick)?;
            let now = Instant::now();
            if sig_ready && self.signals.pending() {
                return Ok(Exit::Signal);
            }
            if tun_ready && self.read_tun(now)? {
                return Ok(Exit::InterfaceDeleted);
            }
            for (which, ready) in udp_ready.into_iter().enumerate() {
                if ready {
                    self.read_udp(now, which);
                }
            }
            if xsk_ready != 0 {
                self.read_xsks(now, xsk_ready);
            }
            if link_ready {
                self.link_events();
            }
            if wake_ready {
                let _ = self.wake.drain();
                self.serve_calls(now);
                self.xdp_tick(now);
            }
            if now >= next_tick {
                self.timers(now);
                next_tick = now + TICK;
            }
            self.forget_refused_sources();
        }
    }

    fn timers(&mut self, now: Instant) {
        if let Some(gate) = self.gate.as_mut().filter(|_| now >= self.gate_next) {
            self.gate_next = now + GATE_INTERVAL;
            match read_cpu_times() {
                Ok(t) => {
                    let on = gate.update(t);
                    if on != self.pool.enabled() {
                        log::debug!(
                            "{}: parallel crypto {}",
                            self.tun.name(),
                            if on {
                                "on (idle CPU time)"
                            } else {
                                "off (CPUs busy)"
                            }
                        );
                    }
                    self.pool.set_enabled(on);
                }
                Err(e) => {
                    log::warn!(
                        "{}: /proc/stat: {e}; parallel crypto stays on",
                        self.tun.name()
                    );
                    self.gate = None;
                }
            }
        }
        self.with_io(|device, io| device.handle_timeout(now, io));
        self.poll_shm(now);
        self.xdp_tick(now);
    }

    /// Keeps the XDP program's maps in step with the device.
    fn xdp_tick(&mut self, now: Instant) {
        let port = self.udp.as_ref().map_or(self.listen_port, UdpSockets::port);
        let Some(x) = self.xdp.as_mut() else { return };
        x.tick(now, &self.device, port, self.tun.name());
        // AF_XDP sockets of interfaces that appeared since: polled from now on.
        for (s, ifindex) in x.take_new_sockets() {
            if let Some(r) = self.reactor.as_mut() {
                if let Err(e) = r.add_poll(s.fd()) {
                    log::warn!("{}: cannot poll an AF_XDP socket: {e}", self.tun.name());
                    continue;
                }
            } else if self.xsks.len() >= MAX_POLL_XSKS {
                log::warn!(
                    "{}: the poll(2) loop watches {MAX_POLL_XSKS} AF_XDP sockets at most",
                    self.tun.name()
                );
                continue;
            }
            self.xsks.push((s, ifindex));
        }
    }

    /// Runs `f` on the device with the loop's output sink; what it sends leaves when
    /// `f` returns.
    fn with_io(&mut self, f: impl FnOnce(&mut Device, &mut OsIo<'_>)) {
        let (mut io, _) = OsIo::new(
            &self.tun,
            self.udp.as_ref(),
            &mut self.tx,
            &self.pool,
            &mut self.offload,
            self.xdp.as_mut(),
        );
        f(&mut self.device, &mut io);
    }

    /// The loop on io_uring: one `run_once` per turn receives every TUN read and UDP
    /// message that completed (sends stay synchronous and batched as in the poll loop),
    /// then the control fds, UAPI calls and timers are served as there.
    fn run_uring(&mut self) -> anyhow::Result<Exit> {
        let mut next_tick = Instant::now();
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            let mut readable = [false; 3];
            let mut gone = false;
            {
                let Driver {
                    device,
                    tun,
                    udp,
                    tx,
                    pool,
                    buf,
                    offload,
                    reactor,
                    xdp,
                    xsks,
                    ..
                } = self;
                let Some(reactor) = reactor.as_mut() else {
                    return Ok(Exit::Signal);
                };
                let (mut io, mut tun_split) =
                    OsIo::new(tun, udp.as_ref(), tx, pool, offload, xdp.as_mut());
                // After a turn that moved bulk data, what completes meanwhile (the rest
                // of a GSO send that left the peer as two datagrams, the TUN frames
                // that the ACKs just written released) is taken into the same batch
                // before the batch leaves: the GRO super-packet and the GSO send are
                // then whole instead of a large one and a small tail. Bounded; a turn
                // of small packets (ping, ACKs) ends it, so they never wait for it;
                // a control fd ends it so that it is served at once.
                let mut timeout = timeout;
                for _ in 0..=EXTRA_TURNS {
                    let mut now = None;
                    let mut moved = 0usize;
                    reactor.run_once(timeout, |c| {
                        let now = *now.get_or_insert_with(Instant::now);
                        match c {
                            Completion::Tun(frame) => {
                                moved += frame.len();
                                tun_frame(device, &mut tun_split, now, frame, &mut io);
                                // What queued behind it, in order (see `drain_tun`).
                                gone |= drain_tun(
                                    device,
                                    tun,
                                    buf,
                                    &mut tun_split,
                                    now,
                                    &mut io,
                                    BATCH - 1,
                                );
                            }
                            Completion::Udp {
                                data,
                                from,
                                local,
                                segment,
                                ..
                            } => {
                                moved += data.len();
                                let seg = segment.map_or(data.len(), usize::from).max(1);
                                let mut rx = RxGroup::new();
                                for chunk in data.chunks_mut(seg) {
                                    rx.datagram(
                                        device,
                                        pool,
                                        now,
                                        from,
                                        from_source(local),
                                        chunk,
                                        &mut io,
                                    );
                                }
                                rx.finish(device, pool, now, &mut io);
                            }
                            Completion::Readable(i) => {
                                if let Some(r) = readable.get_mut(i) {
                                    *r = true;
                                } else if let Some((xsk, ifindex)) =
                                    xsks.get_mut(i - readable.len())
                                {
                                    read_xsk(device, pool, now, xsk, *ifindex, &mut io);
                                }
                            }
                            Completion::TunError(e) => {
                                if !Tun::is_gone(&e) {
                                    log::error!(
                                        "{}: reading the TUN device failed: {e}",
                                        tun.name()
                                    );
                                }
                                gone = true;
                            }
                        }
                    })?;
                    if moved < BULK_TURN || gone || readable.contains(&true) {
                        break;
                    }
                    timeout = Duration::ZERO;
                }
            }
            if gone {
                return Ok(Exit::InterfaceDeleted);
            }
            let now = Instant::now();
            if readable[2] && self.signals.pending() {
                return Ok(Exit::Signal);
            }
            if readable[0] {
                self.link_events();
            }
            if readable[1] {
                let _ = self.wake.drain();
                self.serve_calls(now);
                self.xdp_tick(now);
            }
            if now >= next_tick {
                self.timers(now);
                next_tick = now + TICK;
            }
            self.forget_refused_sources();
        }
    }

    /// Waits for the fds of the `poll(2)` loop; returns TUN, UDP (v4, v6), link,
    /// wake-up, signal readiness and a bit per AF_XDP socket.
    #[allow(clippy::type_complexity)]
    fn wait(&self, next_tick: Instant) -> anyhow::Result<(bool, [bool; 2], bool, bool, bool, u32)> {
        use std::os::fd::AsFd;
        let udp_fds = self
            .udp
            .as_ref()
            .map(|u| [u.v4_fd(), u.v6_fd()])
            .unwrap_or([None, None]);
        // A fixed array: no allocation per loop turn. Missing UDP sockets and unused
        // AF_XDP slots poll the TUN fd again, which is harmless.
        let tun = self.tun.as_fd();
        let xsk = |i: usize| self.xsks.get(i).map_or(tun, |(s, _)| s.fd());
        let mut fds: [PollFd<'_>; 6 + MAX_POLL_XSKS] = std::array::from_fn(|i| match i {
            0 => PollFd::readable(tun),
            1 => PollFd::readable(self.link.fd()),
            2 => PollFd::readable(self.wake.fd()),
            3 => PollFd::readable(self.signals.fd()),
            4 => PollFd::readable(udp_fds[0].unwrap_or(tun)),
            5 => PollFd::readable(udp_fds[1].unwrap_or(tun)),
            i => PollFd::readable(xsk(i - 6)),
        });
        let used = 6 + self.xsks.len().min(MAX_POLL_XSKS);
        let udp_slot = [udp_fds[0].map(|_| 4), udp_fds[1].map(|_| 5)];
        let timeout = next_tick.saturating_duration_since(Instant::now());
        poll_fds(&mut fds[..used], Some(timeout))?;
        let r = |i: usize| fds[i].revents().any();
        let udp = [udp_slot[0].is_some_and(r), udp_slot[1].is_some_and(r)];
        let mut xsk_ready = 0u32;
        for i in 6..used {
            if r(i) {
                xsk_ready |= 1 << (i - 6);
            }
        }
        Ok((r(0), udp, r(1), r(2), r(3), xsk_ready))
    }

    /// Reads the AF_XDP sockets whose bit is set in `ready` (the `poll(2)` loop).
    fn read_xsks(&mut self, now: Instant, ready: u32) {
        let Driver {
            device,
            tun,
            udp,
            tx,
            pool,
            offload,
            xdp,
            xsks,
            ..
        } = self;
        let (mut io, _) = OsIo::new(tun, udp.as_ref(), tx, pool, offload, xdp.as_mut());
        for (i, (xsk, ifindex)) in xsks.iter_mut().enumerate().take(MAX_POLL_XSKS) {
            if ready & (1 << i) != 0 {
                read_xsk(device, pool, now, xsk, *ifindex, &mut io);
            }
        }
    }

    /// Endpoints whose sticky source the kernel refused in a batched send fall back
    /// to normal route selection from now on.
    fn forget_refused_sources(&mut self) {
        for addr in self.tx.sources_cleared.drain(..) {
            self.device.forget_source(addr);
        }
    }

    /// Reads TUN packets; returns true when the interface is gone. With a virtio-net
    /// header, each read may be a TSO/USO super-packet: it is split into MTU-sized
    /// packets first.
    fn read_tun(&mut self, now: Instant) -> anyhow::Result<bool> {
        let Driver {
            device,
            tun,
            udp,
            tx,
            pool,
            buf,
            offload,
            xdp,
            ..
        } = self;
        let (mut io, mut tun_split) = OsIo::new(tun, udp.as_ref(), tx, pool, offload, xdp.as_mut());
        Ok(drain_tun(
            device,
            tun,
            buf,
            &mut tun_split,
            now,
            &mut io,
            BATCH,
        ))
    }

    /// Reads UDP datagrams with `recvmmsg(2)`, a batch per call (each entry possibly
    /// a `UDP_GRO` run of datagrams from one sender), until the socket is empty or
    /// [`BATCH`] entries were handled.
    fn read_udp(&mut self, now: Instant, which: usize) {
        let Driver {
            device,
            tun,
            udp,
            tx,
            pool,
            rx_batch,
            offload,
            xdp,
            ..
        } = self;
        let Some(udp) = udp.as_ref() else { return };
        let fd = if which == 0 { udp.v4_fd() } else { udp.v6_fd() };
        let Some(fd) = fd else { return };
        let (mut io, _) = OsIo::new(tun, Some(udp), tx, pool, offload, xdp.as_mut());
        let mut handled = 0;
        while handled < BATCH {
            let n = match recvmmsg_batch(fd, rx_batch) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    log::debug!("UDP receive error: {e}");
                    break;
                }
            };
            handled += n;
            let mut rx = RxGroup::new();
            for (r, data) in rx_batch.entries_mut() {
                let local = from_source(r.local);
                // A GRO entry holds several datagrams of `segment` bytes each.
                let seg = r.segment.map_or(r.len, usize::from).max(1);
                for chunk in data.chunks_mut(seg) {
                    rx.datagram(device, pool, now, r.from, local, chunk, &mut io);
                }
            }
            rx.finish(device, pool, now, &mut io);
        }
    }

    fn link_events(&mut self) {
        self.events.clear();
        if let Err(e) = self.link.drain(&mut self.events) {
            log::warn!("link monitor: {e}");
        }
        for ev in &self.events {
            match ev {
                LinkEvent::Mtu(m) => {
                    log::info!("{}: MTU is now {m}", self.tun.name());
                    self.device.set_mtu(*m as usize);
                }
                LinkEvent::Deleted => {
                    log::info!(
                        "{}: left this network namespace (moved or deleted)",
                        self.tun.name()
                    )
                }
                LinkEvent::Up | LinkEvent::Down => {}
            }
        }
    }

    fn serve_calls(&mut self, now: Instant) {
        while let Ok(p) = self.calls.try_recv() {
            let mut out = String::new();
            match p.call {
                Call::Uapi(Request::Get) => {
                    let port = self.udp.as_ref().map_or(self.listen_port, UdpSockets::port);
                    uapi::format_get(&mut out, &self.device.snapshot(port, self.fwmark));
                }
                Call::Uapi(Request::Set(req)) => {
                    let errno = match self.apply_set(now, &req) {
                        Ok(()) => 0,
                        Err(errno) => errno,
                    };
                    uapi::format_errno(&mut out, errno);
                }
                Call::Stats => {
                    for (k, v) in self.device.stats.iter() {
                        out.push_str(&format!("{k}={v}\n"));
                    }
                    if let Some(u) = &self.udp {
                        let truncated = u.truncated() + self.rx_batch.truncated();
                        out.push_str(&format!("rx_truncated={truncated}\n"));
                        out.push_str(&format!("tx_gso={}\n", u8::from(u.gso_enabled())));
                    }
                    out.push_str(&format!("tx_batch_send_failed={}\n", self.tx.failed));
                    out.push_str(&format!("tx_batch_seal_dropped={}\n", self.tx.seal_dropped));
                    let p = self.pool.stats();
                    out.push_str(&format!("crypto_threads={}\n", self.pool.workers() + 1));
                    out.push_str(&format!(
                        "crypto_parallel={}\n",
                        u8::from(self.pool.enabled())
                    ));
                    out.push_str(&format!("crypto_jobs={}\n", p.jobs));
                    out.push_str(&format!("crypto_parallel_batches={}\n", p.parallel_batches));
                    out.push_str(&format!("crypto_worker_jobs={}\n", p.worker_jobs));
                    out.push_str(&format!(
                        "crypto_group_code={}\n",
                        u8::from(crate::crypto_jobs::group_enabled())
                    ));
                    out.push_str(&format!("crypto_grouped={}\n", self.tx.crypto_grouped));
                    out.push_str(&format!(
                        "tx_offload_malformed={}\n",
                        self.offload.malformed
                    ));
                    out.push_str(&format!("tun_vnet_hdr={}\n", u8::from(self.offload.vnet)));
                    out.push_str(&format!("io_uring={}\n", u8::from(self.reactor.is_some())));
                    if let Some(l) = &self.shm {
                        out.push_str(&format!("shm_updates={}\n", l.updates));
                        out.push_str(&format!("shm_errors={}\n", l.errors));
                    }
                    if let Some(r) = &self.reactor {
                        out.push_str(&format!("rx_uring_truncated={}\n", r.truncated()));
                    }
                    match &self.xdp {
                        Some(x) => x.stats(&mut out),
                        None => out.push_str("xdp=off\n"),
                    }
                    if !self.xsks.is_empty() {
                        let sum = |f: fn(&XskSocket) -> u64| -> u64 {
                            self.xsks.iter().map(|(s, _)| f(s)).sum()
                        };
                        out.push_str(&format!("xsk_sockets={}\n", self.xsks.len()));
                        out.push_str(&format!("xsk_received={}\n", sum(|s| s.received)));
                        out.push_str(&format!("xsk_unparsed={}\n", sum(|s| s.unparsed)));
                        out.push_str(&format!(
                            "xsk_bad_descriptors={}\n",
                            sum(|s| s.bad_descriptors)
                        ));
                    }
                    uapi::format_errno(&mut out, 0);
                }
            }
            let _ = p.reply.send(out);
        }
    }

    /// Applies a `set`: the fallible socket changes first, so that a refused request
    /// changes nothing; then the device part, which cannot fail.
    fn apply_set(&mut self, now: Instant, req: &ConfigChange) -> Result<(), i32> {
        let fwmark = req.fwmark.unwrap_or(self.fwmark);
        let current_port = self.udp.as_ref().map(UdpSockets::port);
        let new_udp = match req.listen_port {
            Some(p) if Some(p) != current_port || p == 0 && current_port.is_none() => {
                match UdpSockets::bind(p, fwmark) {
                    Ok(u) => {
                        u.set_offload(self.offload.udp);
                        Some(u)
                    }
                    Err(e) => {
                        log::warn!("{}: listen port {p}: {e}", self.tun.name());
                        return Err(-libc::EADDRINUSE);
                    }
                }
            }
            _ => None,
        };
        if new_udp.is_none() && req.fwmark.is_some() {
            if let Some(u) = &self.udp {
                if let Err(e) = u.set_fwmark(fwmark) {
                    log::warn!("{}: fwmark {fwmark}: {e}", self.tun.name());
                    return Err(-libc::EIO);
                }
            }
        }
        if let (Some(u), Some(r)) = (&new_udp, self.reactor.as_mut()) {
            if let Err(e) = r.set_udp([u.v4_fd(), u.v6_fd()]) {
                log::error!(
                    "{}: moving io_uring receives to the new sockets: {e}",
                    self.tun.name()
                );
                return Err(-libc::EIO);
            }
        }
        if let Some(u) = new_udp {
            log::info!("{}: listening on UDP port {}", self.tun.name(), u.port());
            self.udp = Some(u);
        }
        if let Some(p) = req.listen_port {
            self.listen_port = p;
        }
        self.fwmark = fwmark;
        self.with_io(|device, io| device.apply(now, req, io));
        Ok(())
    }
}
