//! One peer's path, as a state machine without sockets or a clock: whether the tunnel
//! to it runs direct, through the relay, or not at all, and what to do next — ask the
//! facilitator to meet, prime and punch in a window, ask for a relay, bind it, pin the
//! endpoint. The daemon calls [`PeerPath::tick`] every ~100 ms with what the dataplane
//! reports for the peer and carries out the [`Action`]s; facilitator answers come in
//! through [`PeerPath::introduced`], [`PeerPath::relay_offered`] and
//! [`PeerPath::refused`].
//!
//! A window: from its start, for [`Settings::primer`], probes (WireGuard handshake
//! initiations) with IP TTL [`Settings::primer_ttl`] to every candidate endpoint: they
//! open our own NAT's mapping and die before the peer's NAT, so that its router does
//! not make a conntrack entry that would remap the peer (nat-lab.md). Then, until
//! [`Settings::punch`] has passed, probes at full TTL. A handshake message received
//! after the window's start from anywhere but the relay is success (a candidate, or
//! the peer's mapping toward us when its NAT is symmetric): the endpoint is pinned
//! there (so the relay's stale datagrams cannot move it back). Otherwise the
//! window failed: with a facilitator that relays, ask for a relay (both peers' windows
//! fail together, so both ask), bind our source there and pin the endpoint to it; in
//! any case try another window after a backoff that doubles per failure.

use super::relay::bind_datagram;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Timings of windows (the daemon's options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How long a new peer may take to handshake at its published endpoint before
    /// traversal starts.
    pub first_wait: Duration,
    /// The TTL-limited primer's length: longer than the largest clock skew accepted
    /// between the peers.
    pub primer: Duration,
    /// The primer's IP TTL (reaches past our NATs, not to the peer's).
    pub primer_ttl: u8,
    /// The punch after the primer.
    pub punch: Duration,
    /// How often to probe each candidate in a window.
    pub probe_every: Duration,
    /// The first backoff after a failed window; it doubles per failure up to
    /// [`Settings::backoff_max`].
    pub backoff_min: Duration,
    /// The longest backoff.
    pub backoff_max: Duration,
    /// How often a pending request to the facilitator is repeated.
    pub ask_every: Duration,
    /// How often a relayed path binds its source at the relay again (its NAT may
    /// have given the flow a new mapping; the relay then learns it).
    pub rebind_every: Duration,
    /// A path without a handshake for this long is down (WireGuard rekeys every two
    /// minutes while traffic or keepalives flow).
    pub stale: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            first_wait: Duration::from_secs(5),
            primer: Duration::from_millis(500),
            primer_ttl: 2,
            punch: Duration::from_millis(2500),
            probe_every: Duration::from_millis(200),
            backoff_min: Duration::from_secs(30),
            backoff_max: Duration::from_secs(600),
            ask_every: Duration::from_secs(2),
            rebind_every: Duration::from_secs(15),
            stale: Duration::from_secs(200),
        }
    }
}

/// Which way the tunnel to the peer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// No handshake (yet).
    None,
    /// Straight to the peer.
    Direct,
    /// Through the facilitator's relay.
    Relay,
}

impl Path {
    /// `none`, `direct`, `relay`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Path::None => "none",
            Path::Direct => "direct",
            Path::Relay => "relay",
        }
    }
}

/// How the last window ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowResult {
    /// A handshake came back from this candidate.
    Direct(SocketAddr),
    /// None did.
    Failed,
}

/// What the dataplane reports about the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observation {
    /// When the latest handshake message from the peer arrived, and from where.
    pub handshake: Option<(Instant, SocketAddr)>,
}

/// What the daemon does for the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask the facilitator to meet the peer.
    AskMeet,
    /// Ask the facilitator for a relay to the peer.
    AskRelay,
    /// Send a handshake initiation to `to` with IP TTL `ttl` (0: the default).
    Probe {
        /// The candidate endpoint.
        to: SocketAddr,
        /// Its TTL.
        ttl: u8,
    },
    /// Send these bytes from the dataplane's socket to `to`.
    Send {
        /// Where.
        to: SocketAddr,
        /// What.
        payload: Vec<u8>,
    },
    /// Pin the peer's endpoint (`Some`) or let it roam again (`None`).
    Pin(Option<SocketAddr>),
    /// Hold the peer's own handshake initiations in the dataplane (probes only);
    /// a pin to an address releases them.
    Hold,
}

/// Counters of one peer's windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Windows opened.
    pub tried: u64,
    /// Windows that ended direct.
    pub succeeded: u64,
    /// Times the path went to the relay.
    pub relayed: u64,
    /// The last direct window: from its start to the handshake that proved it.
    pub last_direct_after: Option<Duration>,
    /// The last fallback: from the failed window's end to the relay in use.
    pub last_relay_after: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// Waiting for a first handshake at the published endpoint.
    Starting { since: Instant },
    /// Settled (direct, relayed or waiting to try): the next window is asked for at
    /// `next`.
    Settled { next: Instant },
    /// Asking the facilitator to meet (again at `again`) until an introduction.
    Asking { again: Instant, until: Instant },
    /// A window with these candidates.
    Window {
        start: Instant,
        candidates: Vec<SocketAddr>,
        next_probe: Instant,
    },
    /// Asking for a relay (again at `again`) until one is offered or `until`.
    AskingRelay { again: Instant, until: Instant },
}

/// One peer's path (see the module documentation).
#[derive(Debug, Clone)]
pub struct PeerPath {
    s: Settings,
    stage: Stage,
    path: Path,
    relay: Option<(SocketAddr, [u8; 16])>,
    /// Whether a facilitator is configured; without one, windows come from
    /// [`PeerPath::scheduled`] (shared-secret windows) only.
    facilitator: bool,
    pinned: Option<SocketAddr>,
    failures: u32,
    last: Option<WindowResult>,
    next_window: Option<Instant>,
    /// When the last window failed (for [`Counters::last_relay_after`]).
    failed_at: Option<Instant>,
    /// When the relay bind is due again.
    rebind_at: Option<Instant>,
    /// Since when the dataplane holds the peer's initiations (until a pin).
    held: Option<Instant>,
    /// Counters.
    pub counters: Counters,
}

impl PeerPath {
    /// A peer just configured at its published endpoint, at `now`.
    #[must_use]
    pub fn new(s: Settings, facilitator: bool, now: Instant) -> PeerPath {
        PeerPath {
            s,
            stage: Stage::Starting { since: now },
            path: Path::None,
            relay: None,
            facilitator,
            pinned: None,
            failures: 0,
            last: None,
            next_window: None,
            failed_at: None,
            rebind_at: None,
            held: None,
            counters: Counters::default(),
        }
    }

    /// The path now.
    #[must_use]
    pub fn path(&self) -> Path {
        self.path
    }

    /// The endpoint the path pinned (the direct one found, or the relay).
    #[must_use]
    pub fn pinned(&self) -> Option<SocketAddr> {
        self.pinned
    }

    /// The relay endpoint in use, when relayed.
    #[must_use]
    pub fn relay(&self) -> Option<SocketAddr> {
        self.relay.map(|r| r.0)
    }

    /// How the last window ended.
    #[must_use]
    pub fn last_result(&self) -> Option<WindowResult> {
        self.last
    }

    /// When the next window will be asked for (or starts), if one is planned.
    #[must_use]
    pub fn next_window(&self) -> Option<Instant> {
        match &self.stage {
            Stage::Window { start, .. } => Some(*start),
            Stage::Settled { next } => Some(*next),
            _ => self.next_window,
        }
    }

    /// The facilitator introduced the peer: a window at `start` with `candidates`.
    pub fn introduced(&mut self, start: Instant, candidates: Vec<SocketAddr>) {
        if candidates.is_empty() || matches!(self.stage, Stage::Window { .. }) {
            return;
        }
        self.counters.tried += 1;
        self.stage = Stage::Window {
            start,
            candidates,
            next_probe: start,
        };
    }

    /// A window without a facilitator (derived from the pair's shared secret).
    /// Taken while the path is not direct and no window is under way: while asking
    /// the facilitator (it may be unreachable, or the peer may use none), or settled
    /// with the backoff passed by `start`.
    pub fn scheduled(&mut self, start: Instant, candidates: Vec<SocketAddr>) {
        let ok = match self.stage {
            Stage::Settled { next } => self.path != Path::Direct && start >= next,
            Stage::Asking { .. } => true,
            _ => false,
        };
        if ok {
            self.introduced(start, candidates);
        }
    }

    /// Whether the path would take a shared-secret window starting at `start`.
    #[must_use]
    pub fn wants_window_at(&self, start: Instant) -> bool {
        match self.stage {
            Stage::Settled { next } => self.path != Path::Direct && start >= next,
            Stage::Asking { .. } => true,
            _ => false,
        }
    }

    /// The facilitator offered a relay: bind our source there and pin to it.
    pub fn relay_offered(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        token: [u8; 16],
        out: &mut Vec<Action>,
    ) {
        if self.path == Path::Direct {
            return;
        }
        self.relay = Some((relay, token));
        for _ in 0..3 {
            out.push(Action::Send {
                to: relay,
                payload: bind_datagram(&token).to_vec(),
            });
        }
        out.push(Action::Pin(Some(relay)));
        self.held = None;
        self.pinned = Some(relay);
        self.rebind_at = Some(now + self.s.rebind_every);
        if self.path != Path::Relay {
            self.counters.relayed += 1;
            self.counters.last_relay_after =
                self.failed_at.map(|t| now.saturating_duration_since(t));
        }
        self.path = Path::Relay;
        if matches!(self.stage, Stage::AskingRelay { .. }) {
            self.settle(now);
        }
    }

    /// The facilitator refused a relay (full, or it does not relay).
    pub fn refused(&mut self, now: Instant) {
        if matches!(self.stage, Stage::AskingRelay { .. }) {
            self.settle(now);
        }
    }

    /// The next window after the backoff of the failures so far.
    fn settle(&mut self, now: Instant) {
        let shift = self.failures.saturating_sub(1).min(16);
        let backoff = self
            .s
            .backoff_min
            .saturating_mul(1u32 << shift)
            .min(self.s.backoff_max);
        let next = if self.path == Path::Direct {
            now + self.s.stale
        } else {
            now + backoff
        };
        self.next_window = Some(next);
        self.stage = Stage::Settled { next };
    }

    /// Advances to `now` with what the dataplane reports.
    pub fn tick(&mut self, now: Instant, obs: Observation, out: &mut Vec<Action>) {
        let recent = |since: Instant| obs.handshake.filter(|(t, _)| *t >= since);
        // A direct path whose handshakes stopped is down: let it roam and try again.
        if self.path == Path::Direct
            && obs
                .handshake
                .is_none_or(|(t, _)| now.saturating_duration_since(t) > self.s.stale)
        {
            self.path = Path::None;
            if self.pinned.take().is_some() {
                out.push(Action::Pin(None));
            }
            self.hold(now, out);
            self.stage = Stage::Settled { next: now };
        }
        // Held with no path, a handshake came anyway (the peer reached us, or our
        // answer to its initiation went through): that is a path; pin it, which
        // releases our own initiations again.
        if let (Some(since), Path::None, false) = (
            self.held,
            self.path,
            matches!(self.stage, Stage::Window { .. }),
        ) {
            let relay = self.relay.map(|r| r.0);
            if let Some((_, from)) = recent(since).filter(|(_, f)| Some(*f) != relay) {
                self.path = Path::Direct;
                self.held = None;
                self.pinned = Some(from);
                out.push(Action::Pin(Some(from)));
                self.settle(now);
                return;
            }
        }
        if let (Path::Relay, Some(at), Some((relay, token))) =
            (self.path, self.rebind_at, self.relay)
        {
            if now >= at {
                out.push(Action::Send {
                    to: relay,
                    payload: bind_datagram(&token).to_vec(),
                });
                self.rebind_at = Some(now + self.s.rebind_every);
            }
        }
        match self.stage.clone() {
            Stage::Starting { since } => {
                if recent(since).is_some() {
                    self.path = Path::Direct;
                    self.last = None;
                    self.settle(now);
                } else if now.saturating_duration_since(since) >= self.s.first_wait {
                    self.hold(now, out);
                    self.stage = Stage::Settled { next: now };
                    self.tick_settled(now, out);
                }
            }
            Stage::Settled { .. } => self.tick_settled(now, out),
            Stage::Asking { again, until } => {
                // Without any path the peer keeps asking (its introduction may have
                // been lost while it was not asking); a relayed one asks for a while
                // and backs off.
                if now >= until && self.path != Path::None {
                    self.settle(now);
                } else if now >= again {
                    out.push(Action::AskMeet);
                    self.stage = Stage::Asking {
                        again: now + self.s.ask_every,
                        until,
                    };
                }
            }
            Stage::Window {
                start,
                candidates,
                next_probe,
            } => {
                // Any source but the relay counts: WireGuard authenticated the
                // handshake, and a symmetric NAT's mapping toward us is not among
                // the candidates the facilitator saw (a peer-reflexive address).
                let relay = self.relay.map(|r| r.0);
                if let Some((at, from)) = recent(start).filter(|(_, f)| Some(*f) != relay) {
                    self.counters.last_direct_after = Some(at.saturating_duration_since(start));
                    self.path = Path::Direct;
                    self.last = Some(WindowResult::Direct(from));
                    self.counters.succeeded += 1;
                    self.failures = 0;
                    self.pinned = Some(from);
                    self.held = None;
                    out.push(Action::Pin(Some(from)));
                    self.settle(now);
                    return;
                }
                let end = start + self.s.primer + self.s.punch;
                if now >= end {
                    self.last = Some(WindowResult::Failed);
                    self.failed_at = Some(now);
                    self.failures = self.failures.saturating_add(1);
                    if self.facilitator && self.path != Path::Relay {
                        out.push(Action::AskRelay);
                        self.stage = Stage::AskingRelay {
                            again: now + self.s.ask_every,
                            until: now + self.s.ask_every * 5,
                        };
                    } else {
                        self.settle(now);
                    }
                    return;
                }
                if now >= start && now >= next_probe {
                    let ttl = if now < start + self.s.primer {
                        self.s.primer_ttl
                    } else {
                        0
                    };
                    for to in &candidates {
                        out.push(Action::Probe { to: *to, ttl });
                    }
                    self.stage = Stage::Window {
                        start,
                        candidates,
                        next_probe: now + self.s.probe_every,
                    };
                }
            }
            Stage::AskingRelay { again, until } => {
                if now >= until {
                    self.settle(now);
                } else if now >= again {
                    out.push(Action::AskRelay);
                    self.stage = Stage::AskingRelay {
                        again: now + self.s.ask_every,
                        until,
                    };
                }
            }
        }
    }

    /// No path: from now on only windows' probes start handshakes with the peer.
    /// WireGuard's own initiations (retries every 5 s to the published endpoint)
    /// would keep a NAT's conntrack entry toward it alive, and a router that accepts
    /// input keeps the entry a peer's packet made there, which remaps our own punch
    /// to another port (nat-lab.md); held, they stop until a window or the relay pins
    /// an endpoint.
    fn hold(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.held.is_none() {
            self.held = Some(now);
            out.push(Action::Hold);
        }
    }

    fn tick_settled(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Stage::Settled { next } = self.stage else {
            return;
        };
        if now < next || self.path == Path::Direct {
            if self.path == Path::Direct && now >= next {
                // Still direct at the check: look again later.
                self.settle(now);
            }
            return;
        }
        if self.facilitator {
            out.push(Action::AskMeet);
            self.stage = Stage::Asking {
                again: now + self.s.ask_every,
                until: now + self.s.backoff_min.max(self.s.ask_every * 5),
            };
        }
        // Without a facilitator, the daemon calls `scheduled` with the next
        // shared-secret window.
    }
}

/// The start of the first shared-secret window at or after `after_ms` (Unix
/// milliseconds) for the pair with `secret`: one window per `slot_ms`, at an offset
/// inside the slot both peers derive from the secret, leaving `length_ms` before the
/// slot ends. Both peers compute the same instants from their own clocks; the
/// primer covers the skew between them.
#[must_use]
pub fn secret_window(secret: &[u8; 32], after_ms: u64, slot_ms: u64, length_ms: u64) -> u64 {
    let slot_ms = slot_ms.max(length_ms + 1);
    let mut k = after_ms / slot_ms;
    loop {
        let h = blake3::keyed_hash(secret, &k.to_be_bytes());
        let offset = u64::from_be_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]))
            % (slot_ms - length_ms);
        let start = k * slot_ms + offset;
        if start >= after_ms {
            return start;
        }
        k += 1;
    }
}

/// The pair secret of two WireGuard keys from their Diffie-Hellman output: both
/// peers derive the same value (the keys are ordered).
#[must_use]
pub fn pair_secret(shared: &[u8; 32], a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h = blake3::Hasher::new_derive_key("portdistrict 2026-12 sync window pair secret");
    h.update(shared);
    h.update(lo);
    h.update(hi);
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests;
