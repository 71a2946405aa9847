//! What both receive loops do after the packets of a turn: the termination signal,
//! link events, UAPI calls, timers (the crypto pool's idle gate, the device's
//! timers, shared memory, the XDP program's maps), and `set` requests from UAPI or
//! shared memory.

use super::{Driver, MAX_POLL_XSKS, TICK};
use crate::crypto_pool::read_cpu_times;
use crate::io::{LinkEvent, UdpSockets};
use crate::uapi_server::{Call, Pending};
use portdistrict_wg::config::ConfigChange;
use portdistrict_wg::uapi::{self, Request};
use std::time::{Duration, Instant};

/// How often the idle gate samples the CPU times (every tick).
const GATE_INTERVAL: Duration = TICK;

/// Which control fds are readable after a wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct ControlReady {
    /// The rtnetlink link monitor.
    pub(super) link: bool,
    /// The UAPI eventfd.
    pub(super) wake: bool,
    /// The signalfd.
    pub(super) signal: bool,
}

impl Driver {
    /// Whether a termination signal arrived (`ready`: the signalfd is readable).
    pub(super) fn signalled(&self, ready: &ControlReady) -> bool {
        ready.signal && self.signals.pending()
    }

    /// The end of every loop turn: link events, UAPI calls, timers when `next_tick`
    /// is due (then moved on), sources the kernel refused.
    pub(super) fn control_tail(
        &mut self,
        now: Instant,
        ready: &ControlReady,
        next_tick: &mut Instant,
    ) {
        if ready.link {
            self.link_events();
        }
        if ready.wake {
            let _ = self.wake.drain();
            self.serve_calls(now);
            self.xdp_tick(now);
        }
        if now >= *next_tick {
            self.timers(now);
            *next_tick = now + TICK;
        }
        self.forget_refused_sources();
    }

    fn link_events(&mut self) {
        self.events.clear();
        if let Err(e) = self.link.drain(&mut self.events) {
            tracing::warn!("link monitor: {e}");
        }
        for ev in &self.events {
            match ev {
                LinkEvent::Mtu(m) => {
                    tracing::info!("{}: MTU is now {m}", self.egress.tun.name());
                    self.device.set_mtu(*m as usize);
                }
                LinkEvent::Deleted => {
                    tracing::info!(
                        "{}: left this network namespace (moved or deleted)",
                        self.egress.tun.name()
                    )
                }
                LinkEvent::Up | LinkEvent::Down => {}
            }
        }
    }

    fn serve_calls(&mut self, now: Instant) {
        while let Ok(p) = self.calls.try_recv() {
            let (call, reply) = match p {
                Pending::Uapi { call, reply } => (call, reply),
                Pending::Metrics(reply) => {
                    let _ = reply.send(self.metrics_snapshot());
                    continue;
                }
            };
            let mut out = String::new();
            match call {
                Call::Uapi(Request::Get) => {
                    let port = self.port();
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
                    self.format_stats(&mut out);
                    uapi::format_errno(&mut out, 0);
                }
            }
            let _ = reply.send(out);
        }
    }

    fn timers(&mut self, now: Instant) {
        if let Some(gate) = self.gate.as_mut().filter(|_| now >= self.gate_next) {
            self.gate_next = now + GATE_INTERVAL;
            let pool = &self.egress.pool;
            match read_cpu_times() {
                Ok(t) => {
                    let on = gate.update(t);
                    if on != pool.enabled() {
                        tracing::debug!(
                            "{}: parallel crypto {}",
                            self.egress.tun.name(),
                            if on {
                                "on (idle CPU time)"
                            } else {
                                "off (CPUs busy)"
                            }
                        );
                    }
                    pool.set_enabled(on);
                }
                Err(e) => {
                    tracing::warn!(
                        "{}: /proc/stat: {e}; parallel crypto stays on",
                        self.egress.tun.name()
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
    pub(super) fn xdp_tick(&mut self, now: Instant) {
        let port = self.port();
        let tun_name = self.egress.tun.name();
        let Some(x) = self.egress.xdp.as_mut() else {
            return;
        };
        x.tick(now, &self.device, port, tun_name);
        // AF_XDP sockets of interfaces that appeared since: polled from now on.
        for (s, ifindex) in x.take_new_sockets() {
            if let Some(r) = self.reactor.as_mut() {
                if let Err(e) = r.add_poll(s.fd()) {
                    tracing::warn!("{tun_name}: cannot poll an AF_XDP socket: {e}");
                    continue;
                }
            } else if self.xsks.len() >= MAX_POLL_XSKS {
                tracing::warn!(
                    "{tun_name}: the poll(2) loop watches {MAX_POLL_XSKS} AF_XDP sockets at most"
                );
                continue;
            }
            self.xsks.push((s, ifindex));
        }
    }

    /// Applies what the shared-memory region changed, runs its commands and writes the
    /// statistics back (on timer ticks).
    fn poll_shm(&mut self, now: Instant) {
        let Some(mut link) = self.shm.take() else {
            return;
        };
        let name = self.egress.tun.name().to_owned();
        link.apply_config(&name, |change| self.apply_set(now, change));
        while let Some(cmd) = link.next_command(&name) {
            link.commands += 1;
            if !self.run_shm_command(now, &name, cmd) {
                link.command_failures += 1;
            }
        }
        if link.stats_due(now, self.device.stats.rx_handshake) {
            link.write_stats(&name, &self.device.peer_stats());
        }
        self.shm = Some(link);
    }

    /// Applies a `set`: the fallible socket changes first, so that a refused request
    /// changes nothing; then the device part, which cannot fail.
    fn apply_set(&mut self, now: Instant, req: &ConfigChange) -> Result<(), i32> {
        let name = self.egress.tun.name();
        let fwmark = req.fwmark.unwrap_or(self.fwmark);
        let current_port = self.egress.udp.as_ref().map(UdpSockets::port);
        let new_udp = match req.listen_port {
            Some(p) if Some(p) != current_port || p == 0 && current_port.is_none() => {
                match UdpSockets::bind(p, fwmark) {
                    Ok(u) => {
                        u.set_offload(self.egress.offload.udp);
                        Some(u)
                    }
                    Err(e) => {
                        tracing::warn!("{name}: listen port {p}: {e}");
                        return Err(-libc::EADDRINUSE);
                    }
                }
            }
            _ => None,
        };
        if new_udp.is_none() && req.fwmark.is_some() {
            if let Some(u) = &self.egress.udp {
                if let Err(e) = u.set_fwmark(fwmark) {
                    tracing::warn!("{name}: fwmark {fwmark}: {e}");
                    return Err(-libc::EIO);
                }
            }
        }
        if let (Some(u), Some(r)) = (&new_udp, self.reactor.as_mut()) {
            if let Err(e) = r.set_udp([u.v4_fd(), u.v6_fd()]) {
                tracing::error!("{name}: moving io_uring receives to the new sockets: {e}");
                return Err(-libc::EIO);
            }
        }
        if let Some(u) = new_udp {
            tracing::info!("{name}: listening on UDP port {}", u.port());
            self.egress.udp = Some(u);
        }
        if let Some(p) = req.listen_port {
            self.listen_port = p;
        }
        self.fwmark = fwmark;
        self.with_io(|device, io| device.apply(now, req, io));
        Ok(())
    }
}
