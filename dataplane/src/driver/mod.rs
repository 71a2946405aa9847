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
//!
//! The parts: [`options`] (every `PD_*` variable, read once), `tx` (the GSO send
//! batch), `sink` (the output sink the protocol writes to, and the [`Egress`] it is
//! made of), `rx` (receive groups), `tun_intake` (TUN reads), `poll_loop` and
//! `uring_loop` (the two receive loops; [`Driver::run`] picks one), `control` (what
//! both loops do after receiving: link events, UAPI calls, timers, shared memory),
//! `commands` (the shared-memory ring's commands: handshakes, probes, pins, raw
//! datagrams), `stats`.

mod commands;
mod control;
pub mod options;
mod poll_loop;
mod rx;
mod sink;
mod stats;
mod tun_intake;
mod tx;
mod uring_loop;

#[cfg(test)]
mod tests;

pub use options::{IoLoop, Options, OptionsError};

use crate::crypto_pool::{IdleGate, Pool};
use crate::io::{EventFd, LinkEvent, LinkMonitor, Reactor, RecvBatch, Tun, UdpSockets};
use crate::signals::TermSignals;
use crate::uapi_server::Pending;
use crate::xdp::Xdp;
use portdistrict_ebpf::xsk::XskSocket;
use portdistrict_wg::device::{Device, MAX_PACKET, TUN_HEADROOM, TUN_TAILROOM};
use sink::{Egress, Offload, OsIo};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tx::TxBatch;

/// Packets read from one source per loop turn before looking at the others.
const BATCH: usize = 128;
/// Entries per `recvmmsg` call (each up to 64 KiB: one datagram or a GRO run).
const RX_BATCH: usize = 16;
/// Timers are checked at least this often (their granularity).
const TICK: Duration = Duration::from_millis(100);
/// Most crypto chunks handed to the pool at once (a batch takes more rounds).
const MAX_CHUNKS: usize = 8;
/// Most AF_XDP sockets the `poll(2)` loop watches.
const MAX_POLL_XSKS: usize = 16;

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The TUN interface was deleted.
    InterfaceDeleted,
    /// SIGTERM or SIGINT.
    Signal,
}

/// Everything the loop owns.
pub struct Driver {
    device: Device,
    /// TUN, UDP, the TX batch, the crypto pool, offloads and XDP: what outputs go
    /// through.
    egress: Egress,
    listen_port: u16,
    fwmark: u32,
    link: LinkMonitor,
    signals: TermSignals,
    wake: Arc<EventFd>,
    calls: mpsc::Receiver<Pending>,
    buf: Box<[u8]>,
    events: Vec<LinkEvent>,
    /// Decides when the pool uses its workers (`None`: always, as configured).
    gate: Option<IdleGate>,
    gate_next: Instant,
    /// Buffers of the poll loop's `recvmmsg` receives.
    rx_batch: RecvBatch,
    /// The io_uring receive path; `None` runs the `poll(2)` loop.
    reactor: Option<Reactor>,
    /// The shared-memory region with portdistrictd (`--shm`).
    shm: Option<crate::shm_link::ShmLink>,
    /// The XDP program's AF_XDP sockets (steer mode), with the interface each is
    /// bound to.
    xsks: Vec<(XskSocket, u32)>,
}

/// Worker threads for the crypto pool, and whether an [`IdleGate`] decides when to
/// use them: `PD_CRYPTO_THREADS=N` ([`Options::crypto_threads`]) forces N threads in
/// all (the loop's included, always used; 1 = no workers); unset, one per CPU
/// besides the loop's, used while CPU time is idle.
fn crypto_workers(threads: Option<usize>) -> (usize, bool) {
    match threads {
        Some(n) => (n.clamp(1, 64) - 1, false),
        None => (
            std::thread::available_parallelism().map_or(1, |n| n.get()) - 1,
            true,
        ),
    }
}

impl Driver {
    /// Builds the loop; binds the UDP sockets to a random port as wireguard-go does.
    pub fn new(
        device: Device,
        tun: Tun,
        link: LinkMonitor,
        signals: TermSignals,
        wake: Arc<EventFd>,
        calls: mpsc::Receiver<Pending>,
        opts: &Options,
    ) -> anyhow::Result<Self> {
        for ignored in &opts.ignored {
            tracing::warn!("{}: {ignored}", tun.name());
        }
        let udp = UdpSockets::bind(0, 0)?;
        let vnet = tun.offload().vnet_hdr;
        let gro = udp.set_offload(opts.udp_offload);
        let o = tun.offload();
        tracing::info!(
            "{}: listening on UDP port {}; offloads: TUN vnet-hdr {} (TSO {}, USO {}), UDP GSO {}, UDP GRO {}",
            tun.name(),
            udp.port(),
            o.vnet_hdr,
            o.tso,
            o.uso,
            udp.gso_enabled(),
            gro
        );
        let mut xdp = Xdp::start(opts.xdp, opts.xdp_attach, tun.name(), tun.ifindex());
        let xsks = match xdp.as_mut() {
            Some(x) => {
                x.tick(Instant::now(), &device, udp.port(), tun.name());
                x.take_new_sockets()
            }
            None => Vec::new(),
        };
        let reactor = uring_loop::open_reactor(opts.io, &tun, &udp, &link, &wake, &signals, &xsks);
        let (workers, gated) = crypto_workers(opts.crypto_threads);
        let pool = Pool::new(workers);
        // Gated workers start unused: the gate turns them on once it sees idle CPUs.
        pool.set_enabled(!gated);
        tracing::info!(
            "{}: crypto on up to {} thread(s): the loop and {} worker(s), {} (PD_CRYPTO_THREADS=N forces N)",
            tun.name(),
            pool.workers() + 1,
            pool.workers(),
            if gated { "used while other CPUs are idle" } else { "always used" }
        );
        let group = opts.crypto_group && portdistrict_aead::available();
        Ok(Self {
            gate: (gated && workers > 0).then(IdleGate::new),
            gate_next: Instant::now(),
            reactor,
            rx_batch: RecvBatch::new(RX_BATCH, MAX_PACKET + 64),
            device,
            egress: Egress {
                tun,
                udp: Some(udp),
                tx: TxBatch::new(group),
                pool,
                offload: Offload::new(vnet, opts.udp_offload),
                xdp,
            },
            listen_port: 0,
            fwmark: 0,
            link,
            signals,
            wake,
            calls,
            buf: vec![0u8; TUN_HEADROOM + MAX_PACKET + 64 + TUN_TAILROOM].into_boxed_slice(),
            events: Vec::new(),
            shm: None,
            xsks,
        })
    }

    /// Takes its configuration from a shared-memory region (besides UAPI).
    pub fn with_shm(mut self, region: portdistrict_shm::Region) -> Self {
        tracing::info!(
            "{}: configuration from shared memory ({} peers at most)",
            self.egress.tun.name(),
            region.capacity()
        );
        self.shm = Some(crate::shm_link::ShmLink::new(region));
        self
    }

    /// Runs until the interface is deleted or a termination signal arrives: on
    /// io_uring when [`Driver::new`] could set it up, else the `poll(2)` loop.
    pub fn run(&mut self) -> anyhow::Result<Exit> {
        if self.reactor.is_some() {
            self.run_uring()
        } else {
            self.run_poll()
        }
    }

    /// The UDP port: the sockets' where they are bound, else the configured one.
    fn port(&self) -> u16 {
        self.egress
            .udp
            .as_ref()
            .map_or(self.listen_port, UdpSockets::port)
    }

    /// Runs `f` on the device with the loop's output sink; what it sends leaves when
    /// `f` returns.
    fn with_io(&mut self, f: impl FnOnce(&mut Device, &mut OsIo<'_>)) {
        let (mut io, _) = self.egress.sink();
        f(&mut self.device, &mut io);
    }

    /// Endpoints whose sticky source the kernel refused in a batched send fall back
    /// to normal route selection from now on.
    fn forget_refused_sources(&mut self) {
        for addr in self.egress.tx.sources_cleared.drain(..) {
            self.device.forget_source(addr);
        }
    }
}
