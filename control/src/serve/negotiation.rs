//! The negotiation loop: exit requests inside the tunnel answered (a granted
//! consumer asks again as itself to prove the tunnel carries its traffic; new
//! consumers ask over the exit channel, [`super::channel`]), the store kept in line
//! with the tunnel, and the exit channel's listener run beside it.

use super::channel::{channel_loop, Decider, Shared, REPLAY_KEYS};
use super::sync::{sync, Applied};
use super::{Serving, NEGOTIATION_PORT, PROVIDER_V4};
use crate::dnsfwd;
use anyhow::Context as _;
use portdistrict_exitnode::channel::Responder;
use portdistrict_exitnode::negotiate::{self, Answer};
use portdistrict_exitnode::ratelimit::{Limits, RateLimiter};
use portdistrict_exitnode::store::Store;
use portdistrict_wg::PrivateKey;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

impl Serving<'_> {
    pub(super) fn serving(&self, store: Store, wg: &PrivateKey) -> anyhow::Result<()> {
        let o = self.o;
        // The firewall went in with the store's consumers; the peers are still to add.
        let mut applied = Applied::new(&store, &self.host);
        sync(o, &store, self.ipv6, &mut applied)?;
        let applied = Mutex::new(applied);
        let fwd = dnsfwd::Forwarder::start(
            SocketAddr::new(IpAddr::V4(PROVIDER_V4), 53),
            Some(&o.interface),
            self.upstream,
            Arc::clone(self.term),
        )?;
        (self.say)(&format!(
            "exit node up on {} (uplink {}, UDP {}, IPv6 {}), exit channel on TCP {}{}, DNS {PROVIDER_V4}:53 -> {}",
            o.interface,
            o.uplink,
            o.listen_port,
            if self.ipv6 { "offered" } else { "not offered" },
            o.channel_port(),
            if self.attestation.is_some() {
                " with this node's attestation"
            } else {
                ""
            },
            self.upstream
        ));
        let consumers = consumers_of(&applied);
        portdistrict_logging::notify::ready(&self.status_line(consumers));
        let shared = Shared {
            decider: self.decider(),
            term: self.term,
            responder: Mutex::new(Responder::new(self.noise.clone(), REPLAY_KEYS)),
            live: AtomicUsize::new(0),
            applied: &applied,
            wg,
            attestation: self.attestation.clone(),
            resolver: IpAddr::V4(PROVIDER_V4),
            metrics: &self.metrics,
        };
        let listener = &self.listener;
        let result = std::thread::scope(|scope| {
            let channel = std::thread::Builder::new()
                .name("exit-channel-accept".into())
                .spawn_scoped(scope, || channel_loop(scope, listener, &shared))
                .context("starting the exit channel's thread");
            let result = channel.and_then(|_| self.answer_requests(&applied, wg));
            // The channel's threads end with the flag; the scope waits for them.
            self.term.store(true, Ordering::Relaxed);
            result
        });
        fwd.join();
        result
    }

    fn answer_requests(&self, applied: &Mutex<Applied>, wg: &PrivateKey) -> anyhow::Result<()> {
        let o = self.o;
        // Bound to the tunnel interface: a datagram that arrived on any other (a host
        // on the uplink routing to 100.64.0.1) never reaches this socket.
        let sock = dnsfwd::udp_on(
            SocketAddr::new(IpAddr::V4(PROVIDER_V4), NEGOTIATION_PORT),
            Some(&o.interface),
        )
        .context("binding the negotiation port")?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let resolver = IpAddr::V4(PROVIDER_V4);
        let mut limiter = RateLimiter::new(Limits::NEGOTIATION, Instant::now());
        let mut buf = [0u8; 512];
        let mut last_sync = Instant::now();
        let mut failing = false;
        let mut consumers = consumers_of(applied);
        while !self.term.load(Ordering::Relaxed) {
            // `exit revoke` / `exit invite` (through the control socket) changed the
            // store, or invites expired. A store that cannot be read for a moment is
            // retried, never fatal.
            let due = if failing { 1 } else { 5 };
            if self.ctl.poll() || last_sync.elapsed() >= Duration::from_secs(due) {
                last_sync = Instant::now();
                let synced = self.decider().load().and_then(|store| {
                    let mut applied = applied
                        .lock()
                        .map_err(|_| anyhow::anyhow!("the applied state is poisoned"))?;
                    sync(o, &store, self.ipv6, &mut applied)
                });
                match synced {
                    Ok(()) if failing => {
                        tracing::info!("the store is in line with the tunnel again");
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        tracing::warn!(
                            "cannot bring the tunnel in line with the store (retrying): {e:#}"
                        );
                        failing = true;
                    }
                    Err(_) => {}
                }
                let now = consumers_of(applied);
                if now != consumers {
                    consumers = now;
                    portdistrict_logging::notify::status(&self.status_line(consumers));
                }
            }
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if crate::nothing_arrived(&e) => continue,
                Err(e) => {
                    tracing::warn!("negotiation socket: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            };
            if !limiter.allow(from.ip(), Instant::now()) {
                continue;
            }
            let reply = match negotiate::check(&buf[..n], wg.as_bytes()) {
                Err(Answer::Refuse { reply }) => reply,
                Err(_) => continue,
                Ok(request) => self.decider().decide(&request, resolver, applied),
            };
            let _ = sock.send_to(&reply, from);
        }
        Ok(())
    }

    /// The service manager's status line (`systemctl status`).
    fn status_line(&self, consumers: usize) -> String {
        format!(
            "exit node up on {}, {consumers} consumers",
            self.o.interface
        )
    }

    /// Decides requests, shared with the exit channel's threads.
    fn decider(&self) -> Decider<'_> {
        Decider {
            o: self.o,
            dir: self.dir,
            ipv6: self.ipv6,
        }
    }
}

/// How many consumers are peers of the tunnel now.
fn consumers_of(applied: &Mutex<Applied>) -> usize {
    applied.lock().map(|a| a.peers.len()).unwrap_or_default()
}
