//! The exit channel's listener: consumers ask for their grant over TCP, in Noise
//! (`portdistrict_exitnode::channel`), outside the tunnel. One conversation:
//!
//! 1. message 1 (the hello: token id, WireGuard key, proof of owning it);
//! 2. message 2: the answer the store would give now (decided on a copy, nothing
//!    saved) and this node's attestation, obtained once at start;
//! 3. the consumer, having judged the attestation, confirms with a first transport
//!    message: the same exit request. Only then is the store changed (a consumer
//!    that refuses the exit, or does not hold the invite's token — with `psk2` the
//!    provider cannot tell before — changes nothing);
//! 4. the final answer (ack or nak) in a transport message, after the consumer is a
//!    peer and let through the firewall.
//!
//! Bounded: [`MAX_CONNECTIONS`] at once, each with [`DEADLINE`] to finish, frames of
//! at most 16 KiB, and connections rate limited per source and in all
//! ([`Limits::CHANNEL`]); over a limit a connection gets the refusal "busy" without
//! any X25519 work. Replays of message 1 are refused by the responder's window.

use super::metrics::{ExitMetrics, Outcome};
use super::sync::Applied;
use crate::exit::frames::FrameConn;
use crate::exit::now;
use anyhow::Context as _;
use portdistrict_exitnode::channel::{
    self, Answer, Attestation, Frame, RefusalCode, Reply, Responder, TokenId,
};
use portdistrict_exitnode::negotiate::{self, Verified};
use portdistrict_exitnode::ratelimit::{Limits, RateLimiter};
use portdistrict_exitnode::store::{Refusal, Store};
use portdistrict_exitnode::wire::Message;
use portdistrict_wg::PrivateKey;
use std::io::Write as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most conversations at once.
pub(super) const MAX_CONNECTIONS: usize = 128;
/// How long one conversation may take, all of it.
pub(super) const DEADLINE: Duration = Duration::from_secs(10);
/// Consumer keys whose last hello the responder remembers (replay protection).
pub(super) const REPLAY_KEYS: usize = 65_536;

/// Binds the channel's port on every address (IPv6 and IPv4 where the host has
/// IPv6, else IPv4 only).
pub(super) fn bind(port: u16) -> anyhow::Result<TcpListener> {
    let l = TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port))
        .or_else(|_| TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))))
        .with_context(|| format!("binding the exit channel's TCP port {port}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Decides requests against the store and makes the grants real (the part of `exit
/// serve` that the channel's threads share).
pub(super) struct Decider<'a> {
    pub(super) o: &'a super::ServeOptions,
    pub(super) dir: &'a crate::exit::ExitDir,
    pub(super) ipv6: bool,
}

/// What every conversation shares.
pub(super) struct Shared<'a> {
    pub(super) decider: Decider<'a>,
    pub(super) term: &'a std::sync::atomic::AtomicBool,
    pub(super) responder: Mutex<Responder>,
    pub(super) live: AtomicUsize,
    pub(super) applied: &'a Mutex<Applied>,
    pub(super) wg: &'a PrivateKey,
    pub(super) attestation: Option<Attestation>,
    pub(super) resolver: IpAddr,
    /// Conversations by outcome.
    pub(super) metrics: &'a ExitMetrics,
}

/// Accepts conversations until `exit serve` ends; each runs on its own thread of
/// `scope`.
pub(super) fn channel_loop<'s, 'e: 's>(
    scope: &'s std::thread::Scope<'s, 'e>,
    listener: &TcpListener,
    shared: &'e Shared<'e>,
) {
    let live = &shared.live;
    let mut limiter = RateLimiter::new(Limits::CHANNEL, Instant::now());
    while !shared.term.load(Ordering::Relaxed) {
        let (mut stream, from) = match listener.accept() {
            Ok(x) => x,
            Err(e) if crate::nothing_arrived(&e) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => {
                tracing::warn!("exit channel: accepting: {e}");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let busy = !limiter.allow(from.ip(), Instant::now())
            || live.load(Ordering::Relaxed) >= MAX_CONNECTIONS;
        if busy {
            let mut out = Vec::new();
            RefusalCode::Busy.encode(&mut out);
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = stream.write_all(&out);
            shared.metrics.ended(Outcome::Busy);
            continue;
        }
        live.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("exit-channel".into())
            .spawn_scoped(scope, move || {
                let outcome = conversation(stream, shared).unwrap_or_else(|e| {
                    tracing::debug!("exit channel with {from}: {e:#}");
                    Outcome::Failed
                });
                shared.metrics.ended(outcome);
                live.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            live.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!("exit channel: no thread for {from}: {e}");
        }
    }
}

/// One consumer's conversation, to its end: how it ended (an error: broken off).
fn conversation(stream: TcpStream, shared: &Shared<'_>) -> anyhow::Result<Outcome> {
    let mut conn = FrameConn::new(stream, Instant::now() + DEADLINE, "the consumer")?;
    let mut out = Vec::new();
    // 1. Message 1 (read before the store: a connection that sends nothing costs no
    // store read), against the invites and consumers on record.
    let (kind, body) = conn.frame()?;
    let store = match shared.decider.load() {
        Ok(s) => s,
        Err(e) => {
            // Unreadable for a moment: the consumer asks again shortly.
            tracing::warn!("the exit channel cannot read the store (answering busy): {e:#}");
            RefusalCode::Busy.encode(&mut out);
            return conn.write(&out).map(|()| Outcome::Busy);
        }
    };
    let consumers =
        |_: &channel::NoisePublicKey, id: &TokenId| store.token_by(|t| TokenId::of(t) == *id);
    let pending = {
        let frame = Frame { kind, body: &body };
        let mut r = shared
            .responder
            .lock()
            .map_err(|_| anyhow::anyhow!("responder poisoned"))?;
        match r.read_hello(frame, &consumers) {
            Ok(p) => p,
            Err(e) => {
                drop(r);
                let Some(code) = e.refusal() else {
                    anyhow::bail!("message 1 refused: {e}");
                };
                code.encode(&mut out);
                conn.write(&out)?;
                tracing::debug!("exit channel: message 1 refused: {e}");
                return Ok(Outcome::Refused);
            }
        }
    };
    // 2. The answer the store would give now, and the attestation.
    let request = pending.wire_request();
    let checked = negotiate::check(&request.emit(), shared.wg.as_bytes());
    let answer = match &checked {
        Ok(v) => {
            let mut copy = store.clone();
            match negotiate::decide(&mut copy, now(), v, shared.resolver) {
                negotiate::Answer::Grant { grant, .. } => Answer::Ack {
                    inner_v4: grant.inner_v4,
                    inner_v6: grant.inner_v6,
                    resolver: shared.resolver,
                },
                negotiate::Answer::Refuse { reply } => Answer::Nak(refusal_of(&reply)),
                negotiate::Answer::Ignore => Answer::Nak(Refusal::Unavailable),
            }
        }
        Err(negotiate::Answer::Refuse { reply }) => Answer::Nak(refusal_of(reply)),
        Err(_) => Answer::Nak(Refusal::Outdated),
    };
    let granted = matches!(answer, Answer::Ack { .. });
    let reply = Reply {
        answer,
        attestation: shared.attestation.clone(),
    };
    let mut session = pending.answer(&reply, &mut out)?;
    conn.write(&out)?;
    let (Ok(verified), true) = (checked, granted) else {
        return Ok(Outcome::Refused);
    };
    // 3. The consumer's confirmation: the same request, under the session keys.
    let (kind, body) = match conn.frame() {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!("a consumer did not confirm its grant (it refused the exit, or holds no token): {e:#}");
            return Ok(Outcome::Unconfirmed);
        }
    };
    let mut plain = Vec::new();
    session.open(Frame { kind, body: &body }, &mut plain)?;
    if plain != request.emit() {
        anyhow::bail!("the confirmation is not the request of message 1");
    }
    // 4. Recorded, made a peer, let through; then the final answer.
    let final_answer = shared
        .decider
        .decide(&verified, shared.resolver, shared.applied);
    out.clear();
    session.seal(&final_answer, &mut out)?;
    conn.write(&out)?;
    Ok(match Message::parse(&final_answer) {
        Ok(Message::Ack { .. }) => Outcome::Granted,
        _ => Outcome::Refused,
    })
}

impl Decider<'_> {
    /// The store, read under its lock.
    pub(super) fn load(&self) -> anyhow::Result<Store> {
        let _lock = self.dir.lock()?;
        self.dir.store()
    }

    /// Decides a verified request against the store; on a grant the store is saved
    /// (a crash never forgets a grant it sent), the consumer made a peer and let
    /// through the firewall, and only then is the ack returned. When any of that
    /// fails (a store unreadable or unwritable for a moment), the failure is logged
    /// and the answer is "unavailable": nothing is acked that is not in place, and
    /// the consumer's retry gets the same grant.
    pub(super) fn decide(
        &self,
        request: &Verified,
        resolver: IpAddr,
        applied: &Mutex<Applied>,
    ) -> Vec<u8> {
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
        applied: &Mutex<Applied>,
    ) -> anyhow::Result<Vec<u8>> {
        // One decision at a time: the store's lock is taken inside, and the peers and
        // the firewall follow the store in the order of the decisions.
        let mut applied = applied
            .lock()
            .map_err(|_| anyhow::anyhow!("the applied state is poisoned"))?;
        let (answer, store) = {
            let _lock = self.dir.lock()?;
            let mut store = self.dir.store()?;
            let answer = negotiate::decide(&mut store, now(), request, resolver);
            if let negotiate::Answer::Grant { .. } = answer {
                self.dir.save(&store)?;
            }
            (answer, store)
        };
        match answer {
            negotiate::Answer::Ignore => Ok(Message::Nak(Refusal::Unavailable).emit()),
            negotiate::Answer::Refuse { reply } => Ok(reply),
            negotiate::Answer::Grant {
                wg_key,
                grant,
                reply,
            } => {
                // Peer and firewall first, then the ack.
                super::sync::sync(self.o, &store, self.ipv6, &mut applied)?;
                let v6 = grant.inner_v6.map(|a| format!(" {a}")).unwrap_or_default();
                tracing::info!("authorized {wg_key} as {}{v6}", grant.inner_v4);
                Ok(reply)
            }
        }
    }
}

/// The refusal in a nak's bytes.
fn refusal_of(reply: &[u8]) -> Refusal {
    match Message::parse(reply) {
        Ok(Message::Nak(r)) => r,
        _ => Refusal::Unavailable,
    }
}
