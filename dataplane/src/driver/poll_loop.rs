//! The `poll(2)` loop (`PD_IO=poll`, or where io_uring is unavailable): wait for
//! readiness, then read each ready source up to [`BATCH`] packets, `recvmmsg` for
//! UDP.

use super::control::ControlReady;
use super::rx::{read_xsk, RxGroup};
use super::tun_intake::drain_tun;
use super::tx::from_source;
use super::{Driver, Exit, BATCH, MAX_POLL_XSKS};
use crate::io::{poll_fds, recvmmsg_batch, PollFd};
use std::time::Instant;

/// What one wait found readable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct PollReady {
    /// The TUN fd.
    pub(super) tun: bool,
    /// The UDP sockets (IPv4, IPv6).
    pub(super) udp: [bool; 2],
    /// The control fds.
    pub(super) control: ControlReady,
    /// A bit per AF_XDP socket, in the order of `Driver::xsks`.
    pub(super) xsks: u32,
}

impl Driver {
    /// The `poll(2)` loop.
    pub(super) fn run_poll(&mut self) -> anyhow::Result<Exit> {
        let mut next_tick = Instant::now();
        loop {
            let ready = self.wait(next_tick)?;
            let now = Instant::now();
            if self.signalled(&ready.control) {
                return Ok(Exit::Signal);
            }
            if ready.tun && self.read_tun(now) {
                return Ok(Exit::InterfaceDeleted);
            }
            for (which, ready) in ready.udp.into_iter().enumerate() {
                if ready {
                    self.read_udp(now, which);
                }
            }
            if ready.xsks != 0 {
                self.read_xsks(now, ready.xsks);
            }
            self.control_tail(now, &ready.control, &mut next_tick);
        }
    }

    /// Waits for the fds of the `poll(2)` loop until `next_tick` at most.
    fn wait(&self, next_tick: Instant) -> anyhow::Result<PollReady> {
        use std::os::fd::AsFd;
        let udp_fds = self
            .egress
            .udp
            .as_ref()
            .map(|u| [u.v4_fd(), u.v6_fd()])
            .unwrap_or([None, None]);
        // A fixed array: no allocation per loop turn. Missing UDP sockets and unused
        // AF_XDP slots poll the TUN fd again, which is harmless.
        let tun = self.egress.tun.as_fd();
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
        let mut xsks = 0u32;
        for i in 6..used {
            if r(i) {
                xsks |= 1 << (i - 6);
            }
        }
        Ok(PollReady {
            tun: r(0),
            udp: [udp_slot[0].is_some_and(r), udp_slot[1].is_some_and(r)],
            control: ControlReady {
                link: r(1),
                wake: r(2),
                signal: r(3),
            },
            xsks,
        })
    }

    /// Reads the AF_XDP sockets whose bit is set in `ready`.
    fn read_xsks(&mut self, now: Instant, ready: u32) {
        let Driver {
            device,
            egress,
            xsks,
            ..
        } = self;
        let (mut io, _) = egress.sink();
        let pool = io.pool;
        for (i, (xsk, ifindex)) in xsks.iter_mut().enumerate().take(MAX_POLL_XSKS) {
            if ready & (1 << i) != 0 {
                read_xsk(device, pool, now, xsk, *ifindex, &mut io);
            }
        }
    }

    /// Reads TUN packets; returns true when the interface is gone. With a virtio-net
    /// header, each read may be a TSO/USO super-packet: it is split into MTU-sized
    /// packets first.
    fn read_tun(&mut self, now: Instant) -> bool {
        let Driver {
            device,
            egress,
            buf,
            ..
        } = self;
        let (mut io, mut tun_split) = egress.sink();
        drain_tun(device, buf, &mut tun_split, now, &mut io, BATCH)
    }

    /// Reads UDP datagrams with `recvmmsg(2)`, a batch per call (each entry possibly
    /// a `UDP_GRO` run of datagrams from one sender), until the socket is empty or
    /// [`BATCH`] entries were handled.
    fn read_udp(&mut self, now: Instant, which: usize) {
        let Driver {
            device,
            egress,
            rx_batch,
            ..
        } = self;
        let (mut io, _) = egress.sink();
        let Some(udp) = io.udp else { return };
        let fd = if which == 0 { udp.v4_fd() } else { udp.v6_fd() };
        let Some(fd) = fd else { return };
        let pool = io.pool;
        let mut handled = 0;
        while handled < BATCH {
            let n = match recvmmsg_batch(fd, rx_batch) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!("UDP receive error: {e}");
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
}
