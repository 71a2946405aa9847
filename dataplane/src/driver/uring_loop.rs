//! The io_uring loop (the default): one TUN read in flight, multishot UDP receives,
//! poll requests for the control fds and AF_XDP sockets; sends stay synchronous and
//! batched as in the `poll(2)` loop.

use super::control::ControlReady;
use super::options::IoLoop;
use super::rx::{read_xsk, RxGroup};
use super::tun_intake::{drain_tun, tun_frame};
use super::tx::from_source;
use super::{Driver, Exit, BATCH};
use crate::io::{Completion, EventFd, LinkMonitor, Reactor, ReactorConfig, Tun, UdpSockets};
use crate::signals::TermSignals;
use portdistrict_ebpf::xsk::XskSocket;
use std::time::{Duration, Instant};

/// Extra io_uring turns (zero timeout) after one that moved bulk data, taken into the
/// same batch (see `run_uring`).
const EXTRA_TURNS: usize = 3;
/// Bytes (TUN frames and UDP datagrams) a turn must have moved for another turn to
/// follow: a TSO frame or a GSO datagram of a dozen segments, not a ping or ACKs.
const BULK_TURN: usize = 16 * 1024;

/// The control fds the reactor polls, in the order they are registered (its
/// [`Completion::Readable`] index); AF_XDP sockets follow them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ControlFd {
    /// The rtnetlink link monitor.
    Link,
    /// The UAPI eventfd.
    Wake,
    /// The signalfd.
    Signal,
}

impl ControlFd {
    /// In registration order.
    const ALL: [ControlFd; 3] = [ControlFd::Link, ControlFd::Wake, ControlFd::Signal];

    /// The control fd registered as poll `index`, if it is one.
    fn from_index(index: usize) -> Option<ControlFd> {
        Self::ALL.get(index).copied()
    }

    /// Marks this fd readable in `ready`.
    fn mark(self, ready: &mut ControlReady) {
        match self {
            ControlFd::Link => ready.link = true,
            ControlFd::Wake => ready.wake = true,
            ControlFd::Signal => ready.signal = true,
        }
    }
}

/// The io_uring reactor unless `PD_IO=poll` asks for the `poll(2)` loop or the kernel
/// refuses io_uring (`kernel.io_uring_disabled`, seccomp, old kernel); says which
/// receive path is active.
pub(super) fn open_reactor(
    choice: IoLoop,
    tun: &Tun,
    udp: &UdpSockets,
    link: &LinkMonitor,
    wake: &EventFd,
    signals: &TermSignals,
    xsks: &[(XskSocket, u32)],
) -> Option<Reactor> {
    use std::os::fd::AsFd;
    if choice == IoLoop::Poll {
        tracing::info!(
            "{}: receive path: poll(2) loop with recvmmsg (PD_IO=poll)",
            tun.name()
        );
        return None;
    }
    if let Err(e) = Reactor::probe() {
        tracing::info!(
            "{}: receive path: poll(2) loop with recvmmsg (io_uring unavailable: {e})",
            tun.name()
        );
        return None;
    }
    let mut extra: Vec<_> = ControlFd::ALL
        .iter()
        .map(|c| match c {
            ControlFd::Link => link.fd(),
            ControlFd::Wake => wake.fd(),
            ControlFd::Signal => signals.fd(),
        })
        .collect();
    extra.extend(xsks.iter().map(|(s, _)| s.fd()));
    match Reactor::new(
        tun.as_fd(),
        [udp.v4_fd(), udp.v6_fd()],
        &extra,
        ReactorConfig::default(),
    ) {
        Ok(r) => {
            tracing::info!(
                "{}: receive path: io_uring (one TUN read in flight, multishot UDP receive; task work: {})",
                tun.name(),
                r.task_work()
            );
            Some(r)
        }
        Err(e) => {
            tracing::warn!(
                "{}: receive path: poll(2) loop with recvmmsg (io_uring setup failed: {e})",
                tun.name()
            );
            None
        }
    }
}

impl Driver {
    /// The loop on io_uring: one `run_once` per turn receives every TUN read and UDP
    /// message that completed (sends stay synchronous and batched as in the poll loop),
    /// then the control fds, UAPI calls and timers are served as there.
    pub(super) fn run_uring(&mut self) -> anyhow::Result<Exit> {
        let mut next_tick = Instant::now();
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            let mut ready = ControlReady::default();
            let mut gone = false;
            {
                let Driver {
                    device,
                    egress,
                    buf,
                    reactor,
                    xsks,
                    ..
                } = self;
                let Some(reactor) = reactor.as_mut() else {
                    return Ok(Exit::Signal);
                };
                let (mut io, mut tun_split) = egress.sink();
                let pool = io.pool;
                let tun = io.tun;
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
                                gone |=
                                    drain_tun(device, buf, &mut tun_split, now, &mut io, BATCH - 1);
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
                            Completion::Readable(i) => match ControlFd::from_index(i) {
                                Some(fd) => fd.mark(&mut ready),
                                None => {
                                    if let Some((xsk, ifindex)) =
                                        xsks.get_mut(i - ControlFd::ALL.len())
                                    {
                                        read_xsk(device, pool, now, xsk, *ifindex, &mut io);
                                    }
                                }
                            },
                            Completion::TunError(e) => {
                                if !Tun::is_gone(&e) {
                                    tracing::error!(
                                        "{}: reading the TUN device failed: {e}",
                                        tun.name()
                                    );
                                }
                                gone = true;
                            }
                        }
                    })?;
                    if moved < BULK_TURN || gone || ready != ControlReady::default() {
                        break;
                    }
                    timeout = Duration::ZERO;
                }
            }
            if gone {
                return Ok(Exit::InterfaceDeleted);
            }
            let now = Instant::now();
            if self.signalled(&ready) {
                return Ok(Exit::Signal);
            }
            self.control_tail(now, &ready, &mut next_tick);
        }
    }
}
