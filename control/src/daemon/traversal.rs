//! NAT traversal in `portdistrictd`: the facilitator as a peer of the tunnel, and each
//! peer device's [`PeerPath`] carried out every tick (~100 ms) of the daemon's loop.
//!
//! - With `--facilitator HOST:PORT:KEY`, the facilitator is a WireGuard peer of the
//!   tunnel (AllowedIP [`addr::FACILITATOR`], keepalive 25 s), the tunnel gets this
//!   device's address in the facilitator's tunnel ([`addr::node`]) and a socket there
//!   talks to it. Peers whose records name the same facilitator meet through it:
//!   both ask, it introduces them with a window two seconds ahead, and relays them
//!   when the window fails.
//! - Without one (or when it has not answered for [`FACILITATOR_SILENT`], or the peer
//!   names another), windows come once a minute (`--secret-windows-every`) from the
//!   pair's shared secret ([`secret_window`]), with the peer's published endpoints
//!   as candidates.
//! - A peer with no path after `--first-wait` is held in the dataplane: its own
//!   handshake initiations stop (only windows' probes start handshakes) until a
//!   window or the relay pins an endpoint.
//! - The dataplane carries out probes, pins and relay binds (shared-memory commands)
//!   and reports where each peer's latest handshake came from.

use super::DaemonOptions;
use crate::dataplane::Dataplane;
use crate::tunnels::PathInfo;
use anyhow::Context as _;
use portdistrict_control_core::mesh::{PeerDevice, KEEPALIVE};
use portdistrict_control_core::nat::addr;
use portdistrict_control_core::nat::path::{
    pair_secret, secret_window, Action, Observation, Path, PeerPath, Settings, WindowResult,
};
use portdistrict_control_core::nat::wire::Message;
use portdistrict_netlink as nl;
use portdistrict_wg::config::{AllowedIpChange, PeerChange};
use portdistrict_wg::{PrivateKey, PublicKey};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A facilitator that answered nothing for this long counts as unreachable: windows
/// come from shared secrets until it answers again.
pub(super) const FACILITATOR_SILENT: Duration = Duration::from_secs(20);

/// The daemon's link to its facilitator.
struct Link {
    endpoint: SocketAddr,
    key: PublicKey,
    /// Our address in the facilitator's tunnel.
    own: Ipv6Addr,
    sock: Option<UdpSocket>,
    /// Whether the input filter for the facilitator's tunnel is in place.
    filtered: bool,
    last_heard: Option<Instant>,
    /// The first request sent since the facilitator last answered: unanswered for
    /// [`FACILITATOR_SILENT`], the facilitator counts as unreachable.
    unanswered_since: Option<Instant>,
}

/// One peer device's traversal.
struct Peer {
    path: PeerPath,
    published: Vec<SocketAddr>,
    /// Whether its record names our facilitator.
    same_facilitator: bool,
    secret: [u8; 32],
}

/// NAT traversal for the tunnel's peers (see the module documentation).
pub(super) struct Traversal {
    settings: Settings,
    skew: Duration,
    /// Shared-secret windows: one per this many milliseconds.
    secret_every_ms: u64,
    own: PrivateKey,
    link: Option<Link>,
    peers: BTreeMap<PublicKey, Peer>,
    /// Errors already logged, so that a dataplane without the commands (a UAPI one)
    /// is reported once, not ten times a second.
    warned: bool,
}

impl Traversal {
    /// Traversal for the device with WireGuard key `own`.
    pub(super) fn new(o: &DaemonOptions, own: PrivateKey) -> Traversal {
        let link = o.facilitator.map(|(endpoint, key)| Link {
            endpoint,
            key,
            own: addr::node(&own.public_key()),
            sock: None,
            filtered: false,
            last_heard: None,
            unanswered_since: None,
        });
        Traversal {
            settings: o.windows,
            skew: o.window_skew,
            secret_every_ms: o.secret_every.as_millis() as u64,
            own,
            link,
            peers: BTreeMap::new(),
            warned: false,
        }
    }

    /// The facilitator's WireGuard key, if one is configured.
    pub(super) fn facilitator_key(&self) -> Option<PublicKey> {
        self.link.as_ref().map(|l| l.key)
    }

    /// The facilitator as a peer of the tunnel.
    pub(super) fn facilitator_peer(&self) -> Option<PeerChange> {
        let l = self.link.as_ref()?;
        let mut c = PeerChange::new(l.key);
        c.endpoint = Some(l.endpoint);
        c.persistent_keepalive_interval = Some(KEEPALIVE);
        c.replace_allowed_ips = true;
        c.allowed_ips = vec![AllowedIpChange {
            addr: IpAddr::V6(addr::FACILITATOR),
            cidr: 128,
            remove: false,
        }];
        Some(c)
    }

    /// Our address in the facilitator's tunnel on `ifindex`, the route to the
    /// facilitator, and the socket (bound once).
    pub(super) fn setup_link(
        &mut self,
        h: &mut nl::Handle,
        ifname: &str,
        ifindex: u32,
    ) -> anyhow::Result<()> {
        let Some(l) = self.link.as_mut() else {
            return Ok(());
        };
        let spec = nl::AddressSpec {
            ifindex,
            addr: IpAddr::V6(l.own),
            prefix_len: 128,
            nodad: true,
            deprecated: true,
        };
        h.address(nl::Verb::Replace, &spec).with_context(|| {
            format!(
                "adding {}/128 (the facilitator's tunnel) to {ifname}",
                l.own
            )
        })?;
        h.route(
            nl::Verb::Replace,
            &nl::Route {
                family: nl::Family::V6,
                dst: Some((IpAddr::V6(addr::FACILITATOR), 128)),
                oif: Some(ifindex),
                table: 254,
                kind: nl::RouteKind::Unicast,
            },
        )
        .with_context(|| {
            format!(
                "a route to the facilitator {} via {ifname}",
                addr::FACILITATOR
            )
        })?;
        if !l.filtered {
            let table = filter_table(ifname);
            portdistrict_exitnode::apply::apply_table(
                &table,
                &filter_script(&table, ifname, l.own),
            )
            .with_context(|| format!("the facilitator filter on {ifname}"))?;
            l.filtered = true;
        }
        if l.sock.is_none() {
            let s = UdpSocket::bind(SocketAddrV6::new(l.own, addr::PORT, 0, 0))
                .with_context(|| format!("binding [{}]:{}", l.own, addr::PORT))?;
            s.set_nonblocking(true)?;
            l.sock = Some(s);
        }
        Ok(())
    }

    /// Follows the view's devices: new ones start, gone ones are dropped.
    pub(super) fn sync(&mut self, now: Instant, devices: &[PeerDevice]) {
        let facilitator = self.link.as_ref().map(|l| (l.endpoint, l.key.0));
        self.peers
            .retain(|k, _| devices.iter().any(|d| d.wg_key == k.0));
        for d in devices {
            let key = PublicKey(d.wg_key);
            let same = facilitator.is_some() && d.facilitator == facilitator;
            let own = &self.own;
            let settings = self.settings;
            let p = self.peers.entry(key).or_insert_with(|| {
                let shared =
                    portdistrict_wg::crypto::dh(own.as_bytes(), &d.wg_key).unwrap_or([0; 32]);
                Peer {
                    path: PeerPath::new(settings, same, now),
                    published: d.endpoints.clone(),
                    same_facilitator: same,
                    secret: pair_secret(&shared, own.public_key().as_bytes(), &d.wg_key),
                }
            });
            p.published.clone_from(&d.endpoints);
            if p.same_facilitator != same {
                p.same_facilitator = same;
                p.path = PeerPath::new(settings, same, now);
            }
        }
    }

    /// The endpoint traversal pinned for `key` (the cycle configures it instead of
    /// the record's, which would replace the pin).
    pub(super) fn endpoint_override(&self, key: &PublicKey) -> Option<SocketAddr> {
        self.peers.get(key).and_then(|p| p.path.pinned())
    }

    /// The path of `key` for `tunnels.json`.
    pub(super) fn info(&self, key: &PublicKey, now: Instant) -> Option<PathInfo> {
        let p = self.peers.get(key)?;
        let wall = unix(SystemTime::now());
        Some(PathInfo {
            path: p.path.path().as_str().to_owned(),
            pinned: p.path.pinned().map(|e| e.to_string()),
            last_window: p.path.last_result().map(|r| match r {
                WindowResult::Direct(a) => format!("direct via {a}"),
                WindowResult::Failed => "failed".to_owned(),
            }),
            next_window: p.path.next_window().map(|t| {
                (wall + t.saturating_duration_since(now).as_millis() as u64).div_ceil(1000)
            }),
            windows_tried: p.path.counters.tried,
            windows_succeeded: p.path.counters.succeeded,
            relayed: p.path.counters.relayed,
            last_direct_ms: p
                .path
                .counters
                .last_direct_after
                .map(|d| d.as_millis() as u64),
            last_relay_ms: p
                .path
                .counters
                .last_relay_after
                .map(|d| d.as_millis() as u64),
        })
    }

    /// One tick: facilitator answers, shared-secret windows, every path advanced and
    /// its actions carried out. True when a path, a window result or the count of
    /// windows changed.
    pub(super) fn tick(
        &mut self,
        now: Instant,
        dp: &mut dyn Dataplane,
        published: &[SocketAddr],
    ) -> bool {
        let before = self.summary();
        let mut actions: Vec<(PublicKey, Action)> = Vec::new();
        self.receive(now, &mut actions);
        let wall_ms = unix(SystemTime::now());
        // Reachable until a request has gone unanswered for FACILITATOR_SILENT (a
        // facilitator that is merely not asked for a while is not silent).
        let facilitator_ok = self.link.as_ref().is_some_and(|l| {
            l.unanswered_since
                .is_none_or(|t| now.saturating_duration_since(t) < FACILITATOR_SILENT)
        });
        let window_len = (self.settings.primer + self.settings.punch).as_millis() as u64;
        for (key, p) in &mut self.peers {
            let handshake = match dp.handshake_source(*key) {
                Ok(Some(h)) => {
                    let ago =
                        Duration::from_millis(wall_ms.saturating_sub(h.at.as_millis() as u64));
                    Some((now.checked_sub(ago).unwrap_or(now), h.addr))
                }
                Ok(None) => None,
                Err(e) => {
                    if !self.warned {
                        tracing::warn!("NAT traversal is off for this tunnel: {e}");
                        self.warned = true;
                    }
                    return false;
                }
            };
            if !(facilitator_ok && p.same_facilitator) {
                let start_ms = secret_window(&p.secret, wall_ms, self.secret_every_ms, window_len);
                let start = now + Duration::from_millis(start_ms - wall_ms) + self.skew;
                if start_ms - wall_ms <= 3_000 && p.path.wants_window_at(start) {
                    tracing::info!(
                        "{}: shared-secret window in {} ms",
                        key.to_base64(),
                        start.saturating_duration_since(now).as_millis()
                    );
                    p.path.scheduled(start, p.published.clone());
                }
            }
            let mut out = Vec::new();
            p.path.tick(now, Observation { handshake }, &mut out);
            actions.extend(out.into_iter().map(|a| (*key, a)));
        }
        for (key, a) in actions {
            self.carry_out(now, dp, key, a, published);
        }
        let after = self.summary();
        for (k, (path, last, _)) in &after {
            if before.get(k).map(|(p, l, _)| (*p, *l)) != Some((*path, *last)) {
                tracing::info!(
                    "{}: path {}{}",
                    k.to_base64(),
                    path.as_str(),
                    match last {
                        Some(WindowResult::Direct(a)) => format!(" (window went direct via {a})"),
                        Some(WindowResult::Failed) => " (last window failed)".to_owned(),
                        None => String::new(),
                    }
                );
            }
        }
        before != after
    }

    /// What `tunnels.json` shows of each path that changes with a window: the path,
    /// the last window's result, the windows tried.
    fn summary(&self) -> BTreeMap<PublicKey, (Path, Option<WindowResult>, u64)> {
        self.peers
            .iter()
            .map(|(k, p)| {
                (
                    *k,
                    (p.path.path(), p.path.last_result(), p.path.counters.tried),
                )
            })
            .collect()
    }

    /// Reads the facilitator's answers.
    fn receive(&mut self, now: Instant, actions: &mut Vec<(PublicKey, Action)>) {
        let Some(l) = self.link.as_mut() else {
            return;
        };
        let Some(sock) = &l.sock else {
            return;
        };
        let mut buf = [0u8; 1024];
        for _ in 0..64 {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                return;
            };
            if from != SocketAddr::V6(SocketAddrV6::new(addr::FACILITATOR, addr::PORT, 0, 0)) {
                continue;
            }
            let msg = match Message::parse(&buf[..n]) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("an unreadable message from the facilitator: {e}");
                    continue;
                }
            };
            l.last_heard = Some(now);
            l.unanswered_since = None;
            let key = PublicKey(*msg.peer());
            let Some(p) = self.peers.get_mut(&key) else {
                continue;
            };
            match msg {
                Message::Introduce {
                    window,
                    start_in_ms,
                    endpoints,
                    ..
                } => {
                    let candidates = candidates(&endpoints, &p.published);
                    tracing::info!(
                        "{}: window {window} in {start_in_ms} ms, candidates {candidates:?}",
                        key.to_base64()
                    );
                    let start = now + Duration::from_millis(u64::from(start_in_ms)) + self.skew;
                    p.path.introduced(start, candidates);
                }
                Message::Relay { relay, token, .. } => {
                    tracing::info!("{}: relay at {relay}", key.to_base64());
                    let mut out = Vec::new();
                    p.path.relay_offered(now, relay, token, &mut out);
                    actions.extend(out.into_iter().map(|a| (key, a)));
                }
                Message::Refused { reason, .. } => {
                    tracing::warn!("{}: the facilitator refused: {reason}", key.to_base64());
                    p.path.refused(now);
                }
                Message::Waiting { .. } | Message::Meet { .. } | Message::RelayAsk { .. } => {}
            }
        }
    }

    fn carry_out(
        &mut self,
        now: Instant,
        dp: &mut dyn Dataplane,
        key: PublicKey,
        a: Action,
        published: &[SocketAddr],
    ) {
        let r = match a {
            Action::AskMeet => {
                self.ask(
                    now,
                    &Message::Meet {
                        peer: key.0,
                        published: published.to_vec(),
                    },
                );
                Ok(())
            }
            Action::AskRelay => {
                self.ask(now, &Message::RelayAsk { peer: key.0 });
                Ok(())
            }
            Action::Probe { to, ttl } => dp.probe(key, to, ttl),
            Action::Send { to, payload } => dp.send_raw(to, 0, &payload),
            Action::Pin(to) => dp.pin(key, to),
            Action::Hold => dp.hold(key, true),
        };
        if let Err(e) = r {
            tracing::warn!("{}: {e}", key.to_base64());
        }
    }

    fn ask(&mut self, now: Instant, m: &Message) {
        let Some(l) = self.link.as_mut() else {
            return;
        };
        l.unanswered_since.get_or_insert(now);
        let Some(sock) = l.sock.as_ref() else {
            return;
        };
        let to = SocketAddrV6::new(addr::FACILITATOR, addr::PORT, 0, 0);
        // Fails while the tunnel to the facilitator has no session yet (the first
        // packet starts the handshake and waits in the dataplane's queue) or no
        // route: the path asks again.
        if let Err(e) = sock.send_to(&m.emit(), to) {
            tracing::debug!("asking the facilitator: {e}");
        }
    }
}

/// The endpoints to probe in a window: those the facilitator gave (the mapped one
/// first), the same addresses at the ports the peer publishes (a NAT that keeps
/// ports maps its socket there towards us even when its mapping towards the
/// facilitator, made earlier or under another rule, has another port), then the
/// published endpoints themselves.
fn candidates(given: &[SocketAddr], published: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    let mut add = |e: SocketAddr| {
        if !out.contains(&e) {
            out.push(e);
        }
    };
    for e in given {
        add(*e);
    }
    for e in given {
        for p in published {
            if p.is_ipv4() == e.is_ipv4() {
                add(SocketAddr::new(e.ip(), p.port()));
            }
        }
    }
    for p in published {
        add(*p);
    }
    out.truncate(12);
    out
}

/// The nftables table that keeps the facilitator to its one port on `ifname`.
fn filter_table(ifname: &str) -> String {
    let safe: String = ifname
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("portdistrict_facilitator_{safe}")
}

/// The facilitator is a WireGuard peer of the tunnel, but not trusted like the
/// mesh's peers: from its tunnel's prefix, only its answers to our socket
/// ([`addr::PORT`] to [`addr::PORT`] at our address there) come in; nothing else
/// reaches this machine's services or is forwarded.
fn filter_script(table: &str, ifname: &str, own: Ipv6Addr) -> String {
    format!(
        "table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter - 1; policy accept;\n\
         \t\tiifname \"{ifname}\" ip6 saddr {prefix}/48 ip6 daddr {own} udp sport {port} udp dport {port} counter accept\n\
         \t\tiifname \"{ifname}\" ip6 saddr {prefix}/48 counter drop\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter - 1; policy accept;\n\
         \t\tiifname \"{ifname}\" ip6 saddr {prefix}/48 counter drop\n\
         \t}}\n}}\n",
        prefix = addr::PREFIX,
        port = addr::PORT,
    )
}

/// Milliseconds since the Unix epoch.
fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_facilitator_filter_admits_only_its_answers() {
        let own: Ipv6Addr = "fd70:6466:6163:1:2:3:4:5".parse().unwrap();
        let t = filter_table("pd-0.x");
        assert_eq!(t, "portdistrict_facilitator_pd_0_x");
        let script = filter_script(&t, "pd-0.x", own);
        assert_eq!(
            script,
            "table inet portdistrict_facilitator_pd_0_x\n\
             delete table inet portdistrict_facilitator_pd_0_x\n\
             table inet portdistrict_facilitator_pd_0_x {\n\
             \tchain input {\n\
             \t\ttype filter hook input priority filter - 1; policy accept;\n\
             \t\tiifname \"pd-0.x\" ip6 saddr fd70:6466:6163::/48 ip6 daddr fd70:6466:6163:1:2:3:4:5 udp sport 7447 udp dport 7447 counter accept\n\
             \t\tiifname \"pd-0.x\" ip6 saddr fd70:6466:6163::/48 counter drop\n\
             \t}\n\
             \tchain forward {\n\
             \t\ttype filter hook forward priority filter - 1; policy accept;\n\
             \t\tiifname \"pd-0.x\" ip6 saddr fd70:6466:6163::/48 counter drop\n\
             \t}\n}\n"
        );
    }

    #[test]
    fn candidates_add_the_published_port_at_each_mapped_address() {
        let ep = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            candidates(
                &[ep("198.51.100.20:40123"), ep("192.168.20.2:51820")],
                &[ep("192.168.20.2:51820")]
            ),
            vec![
                ep("198.51.100.20:40123"),
                ep("192.168.20.2:51820"),
                ep("198.51.100.20:51820"),
            ]
        );
        assert_eq!(
            candidates(&[], &[ep("[2001:db8::2]:51820")]),
            vec![ep("[2001:db8::2]:51820")]
        );
    }
}
