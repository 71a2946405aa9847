//! The negotiation loop: exit requests answered, the store kept in line with the
//! tunnel.

use super::sync::{sync, Applied};
use super::{Serving, NEGOTIATION_PORT, PROVIDER_V4};
use crate::dnsfwd;
use crate::exit::now;
use anyhow::Context as _;
use portdistrict_exitnode::negotiate::{self, Answer, Verified};
use portdistrict_exitnode::ratelimit::{Limits, RateLimiter};
use portdistrict_exitnode::store::{Refusal, Store};
use portdistrict_exitnode::wire::Message;
use portdistrict_wg::PrivateKey;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Serving<'_> {
    pub(super) fn serving(&self, store: Store, wg: &PrivateKey) -> anyhow::Result<()> {
        let o = self.o;
        // The firewall went in with the store's consumers; the peers are still to add.
        let mut applied = Applied::new(&store, &self.host);
        sync(o, &store, self.ipv6, &mut applied)?;
        let fwd = dnsfwd::Forwarder::start(
            SocketAddr::new(IpAddr::V4(PROVIDER_V4), 53),
            Some(&o.interface),
            self.upstream,
            Arc::clone(self.term),
        )?;
        (self.say)(&format!(
            "exit node up on {} (uplink {}, UDP {}, IPv6 {}), negotiation on {PROVIDER_V4}:{NEGOTIATION_PORT}, DNS {PROVIDER_V4}:53 -> {}",
            o.interface,
            o.uplink,
            o.listen_port,
            if self.ipv6 { "offered" } else { "not offered" },
            self.upstream
        ));
        let result = self.answer_requests(&mut applied, wg);
        self.term.store(true, Ordering::Relaxed);
        fwd.join();
        result
    }

    fn answer_requests(&self, applied: &mut Applied, wg: &PrivateKey) -> anyhow::Result<()> {
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
        while !self.term.load(Ordering::Relaxed) {
            // `exit revoke` / `exit invite` (through the control socket) changed the
            // store, or invites expired. A store that cannot be read for a moment is
            // retried, never fatal.
            let due = if failing { 1 } else { 5 };
            if self.ctl.poll() || last_sync.elapsed() >= Duration::from_secs(due) {
                last_sync = Instant::now();
                let synced = self
                    .load()
                    .and_then(|store| sync(o, &store, self.ipv6, applied));
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
                Ok(request) => self.decide(&request, resolver, applied),
            };
            let _ = sock.send_to(&reply, from);
        }
        Ok(())
    }

    /// The store, read under its lock.
    fn load(&self) -> anyhow::Result<Store> {
        let _lock = self.dir.lock()?;
        self.dir.store()
    }

    /// Decides a verified request against the store; on a grant the store is saved
    /// (a crash never forgets a grant it sent), the consumer made a peer and let
    /// through the firewall, and only then is the ack returned. When any of that
    /// fails (a store unreadable or unwritable for a moment), the failure is logged
    /// and the answer is "unavailable": nothing is acked that is not in place, and
    /// the consumer's retry gets the same grant.
    fn decide(&self, request: &Verified, resolver: IpAddr, applied: &mut Applied) -> Vec<u8> {
        self.try_decide(request, resolver, applied)
            .unwrap_or_else(|e| {
                tracing::warn!("an exit request cannot be answered now: {e:#}");
                Message::Nak(Refusal::Unavailable).emit()
            })
    }

    fn try_decide(
        &self,
        request: &Verified,
        resolver: IpAddr,
        applied: &mut Applied,
    ) -> anyhow::Result<Vec<u8>> {
        {
            let (answer, store) = {
                let _lock = self.dir.lock()?;
                let mut store = self.dir.store()?;
                let answer = negotiate::decide(&mut store, now(), request, resolver);
                if let Answer::Grant { .. } = answer {
                    self.dir.save(&store)?;
                }
                (answer, store)
            };
            match answer {
                Answer::Ignore => Ok(Message::Nak(Refusal::Unavailable).emit()),
                Answer::Refuse { reply } => Ok(reply),
                Answer::Grant {
                    wg_key,
                    grant,
                    reply,
                } => {
                    // Peer and firewall first, then the ack.
                    sync(self.o, &store, self.ipv6, applied)?;
                    let v6 = grant.inner_v6.map(|a| format!(" {a}")).unwrap_or_default();
                    tracing::info!("authorized {wg_key} as {}{v6}", grant.inner_v4);
                    Ok(reply)
                }
            }
        }
    }
}
