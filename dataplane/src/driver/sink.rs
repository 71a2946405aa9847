//! The operating-system sink the protocol writes its outputs to ([`OsIo`]), and the
//! [`Egress`] it is made from: TUN, UDP, the TX batch, the crypto pool, the offload
//! state and the XDP program.

use super::tx::{to_source, TxBatch, UdpSend, GSO_MAX_BYTES};
use crate::crypto_pool::Pool;
use crate::io::{SourceAddr, Tun, UdpSockets};
use crate::xdp::Xdp;
use portdistrict_offload::{Coalescer, Segments};
use portdistrict_wg::crypto::AeadKey;
use portdistrict_wg::device::{Io, SendOutcome};
use portdistrict_wg::peer::Endpoint;
use portdistrict_wg::session::seal_prepared;
use std::net::SocketAddr;
use std::sync::Arc;

/// Where decrypted packets go: the TUN device, or a fake in tests.
pub(super) trait TunWrite {
    /// Writes one packet (or super-packet); a full queue drops it.
    fn write(&self, packet: &[u8]) -> std::io::Result<usize>;
}

impl TunWrite for Tun {
    #[inline]
    fn write(&self, packet: &[u8]) -> std::io::Result<usize> {
        Tun::write(self, packet)
    }
}

/// Offload state of the loop: the TUN side (virtio-net header, TSO/USO split, GRO)
/// and counters of what the offload layer refused.
pub(super) struct Offload {
    pub(super) vnet: bool,
    pub(super) segments: Segments,
    pub(super) gro: Coalescer,
    /// TUN reads whose virtio-net header or super-packet could not be split.
    pub(super) malformed: u64,
    /// UDP GSO/GRO wanted (off with `PD_OFFLOAD=off`).
    pub(super) udp: bool,
}

impl Offload {
    /// The offload state for a TUN fd with (`vnet`) or without a virtio-net header.
    pub(super) fn new(vnet: bool, udp: bool) -> Self {
        Offload {
            vnet,
            segments: Segments::with_capacity(512 * 1024, 4096),
            gro: Coalescer::new(),
            malformed: 0,
            udp,
        }
    }
}

/// Everything the loop's outputs go through: one value, borrowed as an [`OsIo`] for
/// each batch of work ([`Egress::sink`]).
pub(super) struct Egress<T = Tun, U = UdpSockets> {
    pub(super) tun: T,
    pub(super) udp: Option<U>,
    pub(super) tx: TxBatch,
    /// Threads that seal and open the messages of a batch in parallel.
    pub(super) pool: Pool,
    pub(super) offload: Offload,
    /// The XDP program on the underlay (`--xdp`).
    pub(super) xdp: Option<Xdp>,
}

impl<T: TunWrite, U: UdpSend> Egress<T, U> {
    /// The output sink of one batch (with the coalescer when the TUN fd carries a
    /// virtio-net header), and the TUN-read half of the offload state.
    pub(super) fn sink(&mut self) -> (OsIo<'_, T, U>, TunSplit<'_>) {
        let Egress {
            tun,
            udp,
            tx,
            pool,
            offload,
            xdp,
        } = self;
        let Offload {
            vnet,
            segments,
            gro,
            malformed,
            ..
        } = offload;
        let io = OsIo {
            tun,
            udp: udp.as_ref(),
            tx,
            pool,
            gro: vnet.then_some(gro),
            xdp: xdp.as_mut(),
        };
        let tun_split = TunSplit {
            vnet: *vnet,
            segments,
            malformed,
        };
        (io, tun_split)
    }
}

/// The TUN-read half of the offload state, borrowed next to an [`OsIo`].
pub(super) struct TunSplit<'a> {
    pub(super) vnet: bool,
    pub(super) segments: &'a mut Segments,
    pub(super) malformed: &'a mut u64,
}

/// The operating-system half handed to the protocol for its outputs. Datagrams are
/// batched per endpoint and leave as GSO sends when the batch ends (on drop).
pub(super) struct OsIo<'a, T: TunWrite = Tun, U: UdpSend = UdpSockets> {
    pub(super) tun: &'a T,
    pub(super) udp: Option<&'a U>,
    pub(super) tx: &'a mut TxBatch,
    pub(super) pool: &'a Pool,
    /// With a virtio-net header on the TUN fd: decrypted packets are coalesced (GRO)
    /// and written as super-packets when the batch ends.
    pub(super) gro: Option<&'a mut Coalescer>,
    /// The XDP program, told of every receiver index before it is announced.
    pub(super) xdp: Option<&'a mut Xdp>,
}

impl<T: TunWrite, U: UdpSend> OsIo<'_, T, U> {
    /// Jumbo datagrams (large tunnel MTU) gain nothing from batching: sent at once.
    fn send_now(udp: &U, to: &Endpoint, datagram: &[u8]) -> SendOutcome {
        let mut src = to_source(to.local);
        let had_source = src != SourceAddr::None;
        match udp.send(datagram, to.addr, &mut src) {
            Ok(()) if had_source && src == SourceAddr::None => SendOutcome::SentWithoutSource,
            Ok(()) => SendOutcome::Sent,
            Err(_) => SendOutcome::Failed,
        }
    }
}

impl<T: TunWrite, U: UdpSend> Io for OsIo<'_, T, U> {
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
        self.tx.append_data(udp, self.pool, to, msg, key);
        SendOutcome::Sent
    }

    /// Probes are rare: whatever is batched leaves first (order kept), then the
    /// probe on its own `sendmsg` with its TTL.
    fn send_udp_ttl(&mut self, to: SocketAddr, datagram: &[u8], ttl: u8) -> SendOutcome {
        let Some(udp) = self.udp else {
            return SendOutcome::Failed;
        };
        self.tx.flush(udp, self.pool);
        match udp.send_ttl(datagram, to, ttl) {
            Ok(()) => SendOutcome::Sent,
            Err(_) => SendOutcome::Failed,
        }
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

impl<T: TunWrite, U: UdpSend> Drop for OsIo<'_, T, U> {
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
