//! The TX batch: datagrams to one endpoint collected for one `UDP_SEGMENT` (GSO)
//! send, their data messages sealed together (in parallel) just before it leaves.
//!
//! Rules: datagrams leave in the order they were appended; a batch holds one
//! endpoint's datagrams of one size (only the last may be shorter, and closes it); it
//! is flushed before a datagram that does not fit (another endpoint, longer than the
//! first, a full batch: [`GSO_MAX_SEGMENTS`] or [`GSO_MAX_BYTES`]) and at the end of
//! every wake-up (when the [`super::sink::OsIo`] that owns it for the turn drops).
//! What cannot be sealed is taken out; the rest keeps its order.

use super::MAX_CHUNKS;
use crate::crypto_jobs::{chunk_size, remove_spans, SealChunk};
use crate::crypto_pool::Pool;
use crate::io::{SourceAddr, UdpSockets};
use portdistrict_wg::crypto::AeadKey;
use portdistrict_wg::peer::{Endpoint, LocalAddr};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Most datagrams in one GSO send (the kernel's limit is 64 segments).
pub(super) const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO send.
pub(super) const GSO_MAX_BYTES: usize = 65_000;

/// Where the batch's datagrams go: the UDP sockets, or a fake in tests.
pub(super) trait UdpSend {
    /// One datagram (see [`UdpSockets::send`]).
    fn send(&self, buf: &[u8], dst: SocketAddr, src: &mut SourceAddr) -> io::Result<()>;
    /// Datagrams of `segment` bytes each, the last possibly shorter (see
    /// [`UdpSockets::send_segments`]).
    fn send_segments(
        &self,
        buf: &[u8],
        segment: u16,
        dst: SocketAddr,
        src: &mut SourceAddr,
    ) -> io::Result<()>;
    /// One datagram with its own TTL, outside any batch (see
    /// [`UdpSockets::send_ttl`]).
    fn send_ttl(&self, buf: &[u8], dst: SocketAddr, ttl: u8) -> io::Result<()>;
}

impl UdpSend for UdpSockets {
    #[inline]
    fn send(&self, buf: &[u8], dst: SocketAddr, src: &mut SourceAddr) -> io::Result<()> {
        UdpSockets::send(self, buf, dst, src)
    }

    #[inline]
    fn send_segments(
        &self,
        buf: &[u8],
        segment: u16,
        dst: SocketAddr,
        src: &mut SourceAddr,
    ) -> io::Result<()> {
        UdpSockets::send_segments(self, buf, segment, dst, src)
    }

    fn send_ttl(&self, buf: &[u8], dst: SocketAddr, ttl: u8) -> io::Result<()> {
        UdpSockets::send_ttl(self, buf, dst, ttl)
    }
}

/// Datagrams to one endpoint waiting to leave in one `UDP_SEGMENT` (GSO) send: all of
/// `segment` bytes except possibly the last.
pub(super) struct TxBatch {
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
    /// Whether the AVX-512 group code may seal (`PD_CRYPTO_GROUP`, and the CPU).
    group: bool,
    /// Endpoints whose sticky source address the kernel refused during a flush.
    pub(super) sources_cleared: Vec<SocketAddr>,
    /// Datagrams the kernel refused during flushes.
    pub(super) failed: u64,
    /// Data messages of `buf` that could not be sealed (offset, length): taken out
    /// of the batch before it leaves.
    dropped: Vec<(usize, usize)>,
    /// Data messages dropped unsent because they could not be sealed (a hard drop:
    /// see `seal_prepared`).
    pub(super) seal_dropped: u64,
    /// Data messages sealed or opened by the AVX-512 group code (both directions:
    /// receive groups add theirs here too).
    pub(super) crypto_grouped: u64,
}

pub(super) fn to_source(local: Option<LocalAddr>) -> SourceAddr {
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

pub(super) fn from_source(src: SourceAddr) -> Option<LocalAddr> {
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

impl TxBatch {
    /// An empty batch; `group`: whether the group code may seal.
    pub(super) fn new(group: bool) -> Self {
        Self {
            to: None,
            segment: 0,
            closed: false,
            count: 0,
            buf: Vec::with_capacity(GSO_MAX_BYTES),
            unsealed: Vec::with_capacity(GSO_MAX_SEGMENTS),
            keys: Vec::with_capacity(GSO_MAX_SEGMENTS),
            group,
            sources_cleared: Vec::new(),
            failed: 0,
            dropped: Vec::with_capacity(GSO_MAX_SEGMENTS),
            seal_dropped: 0,
            crypto_grouped: 0,
        }
    }

    /// Whether the group code may be used (the receive side asks too).
    pub(super) fn group(&self) -> bool {
        self.group
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
    pub(super) fn append(
        &mut self,
        udp: &impl UdpSend,
        pool: &Pool,
        to: &Endpoint,
        datagram: &[u8],
    ) -> usize {
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

    /// Appends a prepared data message for `to` that is sealed under `key` when the
    /// batch leaves.
    pub(super) fn append_data(
        &mut self,
        udp: &impl UdpSend,
        pool: &Pool,
        to: &Endpoint,
        msg: &[u8],
        key: &Arc<AeadKey>,
    ) {
        let offset = self.append(udp, pool, to, msg);
        let k = match self.keys.last() {
            Some(last) if Arc::ptr_eq(last, key) => self.keys.len() - 1,
            _ => {
                self.keys.push(Arc::clone(key));
                self.keys.len() - 1
            }
        };
        self.unsealed.push((offset, msg.len(), k));
    }

    /// Seals the batch's data messages (in parallel when there are enough of them)
    /// and sends the batch.
    pub(super) fn flush(&mut self, udp: &impl UdpSend, pool: &Pool) {
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
                    chunks[n] = Some(SealChunk::new(key, self.group));
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
