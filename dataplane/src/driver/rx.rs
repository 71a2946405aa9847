//! RX groups: received data messages are admitted by the device in arrival order,
//! opened in parallel as a group, and finished in arrival order; any other message
//! first finishes the group, so that a handshake is seen exactly where it arrived.

use super::sink::{OsIo, TunWrite};
use super::tx::UdpSend;
use super::MAX_CHUNKS;
use crate::crypto_jobs::{chunk_size, OpenChunk};
use crate::crypto_pool::Pool;
use portdistrict_ebpf::xsk::{self, XskSocket};
use portdistrict_wg::device::{DataTicket, Device};
use portdistrict_wg::peer::LocalAddr;
use portdistrict_wg::wire::{self, MessageType};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Most data messages opened in parallel as one group.
pub(super) const RX_GROUP: usize = 64;

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
pub(super) struct RxGroup<'a> {
    jobs: [Option<Admitted<'a>>; RX_GROUP],
    len: usize,
}

impl<'a> RxGroup<'a> {
    pub(super) fn new() -> Self {
        RxGroup {
            jobs: [const { None }; RX_GROUP],
            len: 0,
        }
    }

    /// One received datagram: a data message joins the group (finished when the
    /// group is full), anything else finishes the group and goes to the device.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn datagram<T: TunWrite, U: UdpSend>(
        &mut self,
        device: &mut Device,
        pool: &Pool,
        now: Instant,
        from: SocketAddr,
        local: Option<LocalAddr>,
        msg: &'a mut [u8],
        io: &mut OsIo<'_, T, U>,
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
    pub(super) fn finish<T: TunWrite, U: UdpSend>(
        &mut self,
        device: &mut Device,
        pool: &Pool,
        now: Instant,
        io: &mut OsIo<'_, T, U>,
    ) {
        let limit = chunk_size(pool);
        let group = io.tx.group();
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
                        chunks[n] = Some(OpenChunk::new(Arc::clone(key), group));
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
pub(super) fn read_xsk(
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
