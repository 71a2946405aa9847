//! The facilitator's decisions, without sockets or a clock: which nodes are known at
//! which mapped endpoint, who asked to meet whom, when to introduce a pair and when
//! to give it a relay. The shell ([`portdistrict-control`]'s `facilitator serve`)
//! feeds it every authenticated request with the WireGuard key and endpoint it came
//! from and carries out the [`Out`]puts.
//!
//! Consent is mutual: a pair is introduced (or relayed) only once *each* node has
//! asked for the other within [`Config::wish_ttl`], so a node learns another's
//! address only if that node wants to meet it. A key the facilitator admitted learns
//! nothing about anyone who did not ask for it.

use super::wire::{Message, Refusal};
use portdistrict_wg::PublicKey;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The facilitator's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How long a request to meet (or to relay) waits for the other node's.
    pub wish_ttl: Duration,
    /// How far ahead of the introduction a window starts (both nodes must hear of
    /// it first: a little more than the slower node's round trip).
    pub window_lead: Duration,
    /// Whether this facilitator relays.
    pub relay: bool,
    /// Requests a node may send in a burst, then one per [`Config::refill`].
    pub burst: u32,
    /// How often a node earns one more request.
    pub refill: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            wish_ttl: Duration::from_secs(90),
            window_lead: Duration::from_secs(2),
            relay: true,
            burst: 20,
            refill: Duration::from_millis(200),
        }
    }
}

/// What the shell does for the facilitator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// Send `message` to the node with this key (through its tunnel).
    Send(PublicKey, Message),
    /// Give this pair a relay allocation (or the one it has), then send each its
    /// [`Message::Relay`] (see [`relay_messages`]).
    Relay(PublicKey, PublicKey),
}

/// Counters, by what happened to a request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Requests that parsed.
    pub requests: u64,
    /// Datagrams that are not facilitator requests (or are answers only the
    /// facilitator sends); dropped.
    pub malformed: u64,
    /// Requests over a node's rate; dropped.
    pub rate_limited: u64,
    /// Pairs introduced (one window each).
    pub introductions: u64,
    /// Requests answered with "waiting for the other node".
    pub waiting: u64,
    /// Pairs given a relay.
    pub relays: u64,
    /// Relay requests refused because this facilitator does not relay.
    pub no_relay: u64,
    /// Introductions or relays given again to a node that asked again (its copy was
    /// lost).
    pub repeated: u64,
}

/// A window given to a pair: its number, start, and what each side was told.
#[derive(Debug, Clone)]
struct Given {
    window: u64,
    start: Instant,
    told: [(PublicKey, Message); 2],
}

/// How long after its start a window is given again to a node that asks again.
const GIVEN_FOR: Duration = Duration::from_secs(3);
/// How long a relayed pair's allocation is handed out again on request.
const RELAYED_FOR: Duration = Duration::from_secs(60);

/// The pair `a`, `b` in a fixed order.
fn pair(a: PublicKey, b: PublicKey) -> (PublicKey, PublicKey) {
    if a.0 <= b.0 {
        (a, b)
    } else {
        (b, a)
    }
}

#[derive(Debug, Clone)]
struct Node {
    endpoint: SocketAddr,
    /// Other mappings of the node's dataplane socket seen lately (its relay binds),
    /// newest first.
    seen: Vec<SocketAddr>,
    published: Vec<SocketAddr>,
    meet: HashMap<PublicKey, Instant>,
    relay: HashMap<PublicKey, Instant>,
    tokens: u32,
    refilled: Instant,
}

/// The facilitator's state (see the module documentation).
#[derive(Debug, Clone)]
pub struct Facilitator {
    cfg: Config,
    nodes: HashMap<PublicKey, Node>,
    windows: u64,
    /// Windows given lately, by ordered pair: a node asking again (its copy of the
    /// introduction was lost) gets the same window.
    recent: HashMap<(PublicKey, PublicKey), Given>,
    /// Pairs relayed lately: a node asking again gets the allocation again.
    relayed: HashMap<(PublicKey, PublicKey), Instant>,
    /// What happened so far.
    pub stats: Stats,
}

impl Facilitator {
    /// An empty facilitator.
    #[must_use]
    pub fn new(cfg: Config) -> Facilitator {
        Facilitator {
            cfg,
            nodes: HashMap::new(),
            windows: 0,
            recent: HashMap::new(),
            relayed: HashMap::new(),
            stats: Stats::default(),
        }
    }

    /// How many nodes have sent a request and are not forgotten.
    #[must_use]
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The mapped endpoint last seen for `key`.
    #[must_use]
    pub fn endpoint(&self, key: &PublicKey) -> Option<SocketAddr> {
        self.nodes.get(key).map(|n| n.endpoint)
    }

    /// One datagram from the node with key `from`, whose WireGuard session comes from
    /// `endpoint` (its dataplane socket's NAT mapping), at `now`.
    pub fn handle(
        &mut self,
        now: Instant,
        from: PublicKey,
        endpoint: SocketAddr,
        datagram: &[u8],
        out: &mut Vec<Out>,
    ) {
        let Ok(msg) = Message::parse(datagram) else {
            self.stats.malformed += 1;
            return;
        };
        let node = self.nodes.entry(from).or_insert_with(|| Node {
            endpoint,
            seen: Vec::new(),
            published: Vec::new(),
            meet: HashMap::new(),
            relay: HashMap::new(),
            tokens: self.cfg.burst,
            refilled: now,
        });
        node.endpoint = endpoint;
        let earned = now.saturating_duration_since(node.refilled).as_millis()
            / self.cfg.refill.as_millis().max(1);
        if earned > 0 {
            node.tokens = (node.tokens as u128 + earned).min(self.cfg.burst as u128) as u32;
            node.refilled = now;
        }
        if node.tokens == 0 {
            self.stats.rate_limited += 1;
            return;
        }
        node.tokens -= 1;
        let peer = PublicKey(*msg.peer());
        match msg {
            Message::Meet { published, .. } if peer != from => {
                self.stats.requests += 1;
                node.published = published;
                if let Some(g) = self.recent.get(&pair(from, peer)) {
                    if now < g.start + GIVEN_FOR {
                        if let Some((
                            _,
                            Message::Introduce {
                                peer: p, endpoints, ..
                            },
                        )) = g.told.iter().find(|(k, _)| *k == from)
                        {
                            self.stats.repeated += 1;
                            let left = g.start.saturating_duration_since(now).as_millis();
                            out.push(Out::Send(
                                from,
                                Message::Introduce {
                                    peer: *p,
                                    window: g.window,
                                    start_in_ms: u16::try_from(left).unwrap_or(u16::MAX),
                                    endpoints: endpoints.clone(),
                                },
                            ));
                            return;
                        }
                    }
                }
                let Some(node) = self.nodes.get_mut(&from) else {
                    return;
                };
                node.meet.insert(peer, now);
                if self.wants(&peer, &from, now, |n| &n.meet) {
                    self.introduce(from, peer, now, out);
                } else {
                    self.stats.waiting += 1;
                    out.push(Out::Send(from, Message::Waiting { peer: peer.0 }));
                }
            }
            Message::RelayAsk { .. } if peer != from => {
                self.stats.requests += 1;
                if !self.cfg.relay {
                    self.stats.no_relay += 1;
                    out.push(Out::Send(
                        from,
                        Message::Refused {
                            peer: peer.0,
                            reason: Refusal::NoRelay,
                        },
                    ));
                    return;
                }
                if self
                    .relayed
                    .get(&pair(from, peer))
                    .is_some_and(|t| now.saturating_duration_since(*t) < RELAYED_FOR)
                {
                    self.stats.repeated += 1;
                    out.push(Out::Relay(from, peer));
                    return;
                }
                let Some(node) = self.nodes.get_mut(&from) else {
                    return;
                };
                node.relay.insert(peer, now);
                if self.wants(&peer, &from, now, |n| &n.relay) {
                    self.relayed.insert(pair(from, peer), now);
                    for (a, b) in [(from, peer), (peer, from)] {
                        if let Some(n) = self.nodes.get_mut(&a) {
                            n.relay.remove(&b);
                        }
                    }
                    self.stats.relays += 1;
                    out.push(Out::Relay(from, peer));
                } else {
                    self.stats.waiting += 1;
                    out.push(Out::Send(from, Message::Waiting { peer: peer.0 }));
                }
            }
            // Answers only the facilitator sends, and requests naming oneself.
            _ => self.stats.malformed += 1,
        }
    }

    /// Whether `who` asked (per `wishes`) for `whom` within the wish lifetime.
    fn wants(
        &self,
        who: &PublicKey,
        whom: &PublicKey,
        now: Instant,
        wishes: impl Fn(&Node) -> &HashMap<PublicKey, Instant>,
    ) -> bool {
        self.nodes
            .get(who)
            .and_then(|n| wishes(n).get(whom))
            .is_some_and(|t| now.saturating_duration_since(*t) <= self.cfg.wish_ttl)
    }

    /// Tells `a` and `b` each other's endpoints and the window start; the wishes are
    /// used up (the next window needs two new requests).
    fn introduce(&mut self, a: PublicKey, b: PublicKey, now: Instant, out: &mut Vec<Out>) {
        self.windows += 1;
        self.stats.introductions += 1;
        let lead = u16::try_from(self.cfg.window_lead.as_millis()).unwrap_or(u16::MAX);
        for (x, y) in [(a, b), (b, a)] {
            if let Some(n) = self.nodes.get_mut(&x) {
                n.meet.remove(&y);
            }
        }
        for (to, about) in [(a, b), (b, a)] {
            let Some(n) = self.nodes.get(&about) else {
                continue;
            };
            let mut endpoints = vec![n.endpoint];
            for e in n.seen.iter().chain(&n.published) {
                if !endpoints.contains(e) && endpoints.len() < super::wire::MAX_ENDPOINTS {
                    endpoints.push(*e);
                }
            }
            out.push(Out::Send(
                to,
                Message::Introduce {
                    peer: about.0,
                    window: self.windows,
                    start_in_ms: lead,
                    endpoints,
                },
            ));
        }
        let told: Vec<(PublicKey, Message)> = out
            .iter()
            .rev()
            .take(2)
            .filter_map(|o| match o {
                Out::Send(k, m @ Message::Introduce { .. }) => Some((*k, m.clone())),
                _ => None,
            })
            .collect();
        if let [x, y] = told.as_slice() {
            self.recent.insert(
                pair(a, b),
                Given {
                    window: self.windows,
                    start: now + self.cfg.window_lead,
                    told: [x.clone(), y.clone()],
                },
            );
        }
    }

    /// Another mapping of the dataplane socket of the node with `key`, seen by the
    /// relay (its bind): introductions give it too. A NAT that maps one source to
    /// one port for every destination after a rule change (Linux reuses a source's
    /// existing mapping) is reached there. At most four are kept, newest first.
    pub fn seen(&mut self, key: &PublicKey, addr: SocketAddr) {
        if let Some(n) = self.nodes.get_mut(key) {
            if addr != n.endpoint {
                n.seen.retain(|e| *e != addr);
                n.seen.insert(0, addr);
                n.seen.truncate(4);
            }
        }
    }

    /// Forgets the node with `key` (its tunnel went idle and the shell removed it).
    pub fn forget(&mut self, key: &PublicKey) {
        self.nodes.remove(key);
    }

    /// Drops wishes older than their lifetime (call now and then).
    pub fn expire(&mut self, now: Instant) {
        self.recent.retain(|_, g| now < g.start + GIVEN_FOR);
        self.relayed
            .retain(|_, t| now.saturating_duration_since(*t) < RELAYED_FOR);
        let ttl = self.cfg.wish_ttl;
        for n in self.nodes.values_mut() {
            n.meet
                .retain(|_, t| now.saturating_duration_since(*t) <= ttl);
            n.relay
                .retain(|_, t| now.saturating_duration_since(*t) <= ttl);
        }
    }
}

/// The two [`Message::Relay`]s of an allocation: `a` sends to `relay_a` after binding
/// with `token_a`, `b` to `relay_b` with `token_b`.
#[must_use]
pub fn relay_messages(
    (a, relay_a, token_a): (PublicKey, SocketAddr, [u8; 16]),
    (b, relay_b, token_b): (PublicKey, SocketAddr, [u8; 16]),
) -> [Out; 2] {
    [
        Out::Send(
            a,
            Message::Relay {
                peer: b.0,
                relay: relay_a,
                token: token_a,
            },
        ),
        Out::Send(
            b,
            Message::Relay {
                peer: a.0,
                relay: relay_b,
                token: token_b,
            },
        ),
    ]
}

#[cfg(test)]
mod tests;
