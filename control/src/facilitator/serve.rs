//! The facilitator's event loop (see the module documentation of [`super`]).

use super::{dir, inner, key, Recorded, ServeOptions, NODE_IDLE};
use crate::Dirs;
use anyhow::{bail, Context as _};
use portdistrict_control_core::nat::addr;
use portdistrict_control_core::nat::facilitator::{relay_messages, Config, Facilitator, Out};
use portdistrict_control_core::nat::relay::{Limits, Relay, Side, Verdict};
use portdistrict_control_core::nat::wire::Message;
use portdistrict_exitnode::state::{private_dir, write_atomic};
use portdistrict_wg::config::{AllowedIpChange, ConfigChange, PeerChange};
use portdistrict_wg::device::{Device, Io, SendOutcome};
use portdistrict_wg::peer::Endpoint;
use portdistrict_wg::PublicKey;
use rand_core::RngCore as _;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The largest datagram read (WireGuard's largest message over a 1500-byte path and
/// more; the relay forwards what fits, a jumbo path's datagrams included).
const BUF: usize = 65_536;

/// The in-process device's I/O: datagrams out of the listen socket, inner packets
/// into a queue the loop answers.
struct FacIo<'a> {
    sock: &'a UdpSocket,
    inner: Vec<Vec<u8>>,
}

impl Io for FacIo<'_> {
    fn send_udp(&mut self, to: &Endpoint, datagram: &[u8]) -> SendOutcome {
        match self.sock.send_to(datagram, to.addr) {
            Ok(_) => SendOutcome::Sent,
            Err(_) => SendOutcome::Failed,
        }
    }

    fn write_tun(&mut self, packet: &[u8]) {
        // The facilitator's tunnel carries only requests: a handful a minute per node.
        if self.inner.len() < 1024 {
            self.inner.push(packet.to_vec());
        }
    }
}

/// The facilitator's state besides the device.
struct State {
    fac: Facilitator,
    relay: Relay,
    relay_socks: HashMap<u16, UdpSocket>,
    relay_ip: Option<IpAddr>,
    relay_ports: Option<(u16, u16)>,
    next_port: u16,
    by_addr: HashMap<Ipv6Addr, PublicKey>,
    /// When each node was admitted: a responder's handshake completes only when the
    /// node's first data message arrives (which a lossy path may delay), so a node
    /// without a completed handshake counts as idle only [`UNCONFIRMED_GRACE`] after
    /// its admission.
    admitted_at: HashMap<PublicKey, Instant>,
    dropped_inner: u64,
}

/// How long an admitted node may take to complete its handshake (its first data
/// message) before it is removed as idle: a few handshake retries (5 s apart).
const UNCONFIRMED_GRACE: Duration = Duration::from_secs(30);

/// `facilitator serve`: runs until SIGTERM or SIGINT.
pub fn serve(dirs: &Dirs, o: &ServeOptions) -> anyhow::Result<()> {
    let private = key(dirs)?;
    if o.relay_ports.is_some() && o.listen.ip().is_unspecified() {
        bail!(
            "facilitator serve: with --relay-ports, --listen needs the public address nodes reach (not {}): relay endpoints are handed out with it",
            o.listen.ip()
        );
    }
    let sock = UdpSocket::bind(o.listen)
        .with_context(|| format!("facilitator serve: binding {}", o.listen))?;
    sock.set_nonblocking(true)?;
    write_atomic(
        &dir(dirs).join("facilitator.json"),
        serde_json::to_string_pretty(&Recorded {
            listen: o.listen,
            relay_ports: o.relay_ports,
        })?
        .as_bytes(),
    )
    .context("recording the listen address for `facilitator show`")?;
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term)).context("signal handler")?;
    }
    let mut seed = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut seed);
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut device = Device::new(seed, (Instant::now(), wall), 1420);
    device.set_private_key(Some(private.clone()));
    device.set_admission(Some(o.max_nodes));
    let pairs = o
        .relay_ports
        .map_or(0, |(lo, hi)| usize::from(hi - lo + 1) / 2);
    let mut st = State {
        fac: Facilitator::new(Config {
            relay: o.relay_ports.is_some(),
            ..Config::default()
        }),
        relay: Relay::new(Limits {
            max_allocations: pairs,
            bytes_per_second: o.relay_rate,
            idle: o.relay_idle,
        }),
        relay_socks: HashMap::new(),
        relay_ip: o.relay_ports.map(|_| o.listen.ip()),
        relay_ports: o.relay_ports,
        next_port: o.relay_ports.map_or(0, |(lo, _)| lo),
        by_addr: HashMap::new(),
        admitted_at: HashMap::new(),
        dropped_inner: 0,
    };
    tracing::info!(
        "facilitator {} listening on {} (relay: {})",
        private.public_key().to_base64(),
        o.listen,
        o.relay_ports
            .map_or("off".to_owned(), |(lo, hi)| format!("ports {lo}-{hi}"))
    );
    let mut buf = vec![0u8; BUF];
    let mut housekeeping = Instant::now();
    while !term.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = device
            .poll_timeout()
            .map_or(Duration::from_millis(200), |t| {
                t.saturating_duration_since(now)
            })
            .min(Duration::from_millis(200));
        let ports: Vec<u16> = st.relay_socks.keys().copied().collect();
        let ready = {
            let mut fds = vec![rustix::event::PollFd::new(
                &sock,
                rustix::event::PollFlags::IN,
            )];
            for p in &ports {
                fds.push(rustix::event::PollFd::new(
                    &st.relay_socks[p],
                    rustix::event::PollFlags::IN,
                ));
            }
            let ts = rustix::event::Timespec {
                tv_sec: wait.as_secs() as i64,
                tv_nsec: i64::from(wait.subsec_nanos()),
            };
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e).context("poll"),
            }
            fds.iter()
                .map(|f| !f.revents().is_empty())
                .collect::<Vec<bool>>()
        };
        let now = Instant::now();
        let mut io = FacIo {
            sock: &sock,
            inner: Vec::new(),
        };
        if ready[0] {
            for _ in 0..256 {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        device.handle_datagram(now, from, None, &mut buf[..n], &mut io);
                        // A node sends its first request the moment our response
                        // arrives: its AllowedIP must be in place before we read on.
                        admit(&mut device, &mut st, now, &mut io);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // ICMP errors from a node that went away surface here; go on.
                    Err(e) => {
                        tracing::debug!("receiving: {e}");
                        break;
                    }
                }
            }
        }
        answer(&mut device, &mut st, now, &mut io);
        for (i, port) in ports.iter().enumerate() {
            if ready[i + 1] {
                forward(&mut st, *port, now, &mut buf);
            }
        }
        if device.poll_timeout().is_some_and(|t| t <= now) {
            device.handle_timeout(now, &mut io);
        }
        if now.saturating_duration_since(housekeeping) >= Duration::from_secs(1) {
            housekeeping = now;
            for port in st.relay.expire(now) {
                st.relay_socks.remove(&port);
            }
            st.fac.expire(now);
            let idle: Vec<PublicKey> =
                st.by_addr
                    .values()
                    .filter(|k| {
                        device.peer(k).is_none_or(|p| match p.last_handshake {
                            Some(t) => now.saturating_duration_since(t) > NODE_IDLE,
                            None => st.admitted_at.get(*k).is_none_or(|t| {
                                now.saturating_duration_since(*t) > UNCONFIRMED_GRACE
                            }),
                        })
                    })
                    .copied()
                    .collect();
            for k in idle {
                device.remove_peer(&k);
                st.fac.forget(&k);
                st.by_addr.remove(&addr::node(&k));
                st.admitted_at.remove(&k);
            }
            write_stats(dirs, &device, &st);
        }
    }
    tracing::info!("facilitator: stopping");
    Ok(())
}

/// Gives each newly admitted key its one AllowedIP.
fn admit(device: &mut Device, st: &mut State, now: Instant, io: &mut FacIo<'_>) {
    for k in device.take_admitted() {
        let a = addr::node(&k);
        device.apply(
            now,
            &ConfigChange {
                peers: vec![PeerChange {
                    public_key: k,
                    replace_allowed_ips: true,
                    allowed_ips: vec![AllowedIpChange {
                        addr: IpAddr::V6(a),
                        cidr: 128,
                        remove: false,
                    }],
                    ..PeerChange::new(k)
                }],
                ..ConfigChange::default()
            },
            io,
        );
        st.by_addr.insert(a, k);
        st.admitted_at.insert(k, now);
        tracing::debug!("facilitator: admitted {}", k.to_base64());
    }
}

/// Answers the requests that came through the tunnel.
fn answer(device: &mut Device, st: &mut State, now: Instant, io: &mut FacIo<'_>) {
    let packets = std::mem::take(&mut io.inner);
    let mut outs = Vec::new();
    for p in &packets {
        let Some(d) = inner::parse(p) else {
            st.dropped_inner += 1;
            continue;
        };
        if d.dst != (addr::FACILITATOR, addr::PORT) {
            st.dropped_inner += 1;
            continue;
        }
        let (Some(k), true) = (st.by_addr.get(&d.src.0).copied(), d.src.1 == addr::PORT) else {
            st.dropped_inner += 1;
            continue;
        };
        let Some(endpoint) = device.peer(&k).and_then(|p| p.endpoint).map(|e| e.addr) else {
            st.dropped_inner += 1;
            continue;
        };
        st.fac.handle(now, k, endpoint, d.payload, &mut outs);
    }
    let mut i = 0;
    while i < outs.len() {
        match outs[i].clone() {
            Out::Send(k, msg) => send(device, now, io, &k, &msg),
            Out::Relay(a, b) => outs.extend(allocate(st, now, a, b)),
        }
        i += 1;
    }
}

fn send(device: &mut Device, now: Instant, io: &mut FacIo<'_>, to: &PublicKey, msg: &Message) {
    let p = inner::build(
        (addr::FACILITATOR, addr::PORT),
        (addr::node(to), addr::PORT),
        &msg.emit(),
    );
    device.handle_tun_packet(now, &p, io);
    // An introduction or relay is pushed to a node that may not ask again before
    // its window: twice, so that one lost datagram does not lose it (a node takes
    // the second as the same window or relay).
    if matches!(msg, Message::Introduce { .. } | Message::Relay { .. }) {
        device.handle_tun_packet(now, &p, io);
    }
}

/// The pair's relay allocation (a new one when it has none), as the two messages.
fn allocate(st: &mut State, now: Instant, a: PublicKey, b: PublicKey) -> Vec<Out> {
    let Some(ip) = st.relay_ip else {
        return Vec::new();
    };
    if let Some([x, y]) = st.relay.pair(&a, &b) {
        return relay_messages(
            (x.key, SocketAddr::new(ip, x.port), x.token),
            (y.key, SocketAddr::new(ip, y.port), y.token),
        )
        .into();
    }
    let refuse = |st: &mut State| {
        st.relay.stats.full += 1;
        [a, b]
            .map(|k| {
                Out::Send(
                    k,
                    Message::Refused {
                        peer: if k == a { b.0 } else { a.0 },
                        reason: portdistrict_control_core::nat::wire::Refusal::RelayFull,
                    },
                )
            })
            .into()
    };
    if !st.relay.has_room() {
        return refuse(st);
    }
    let Some((sa, pa)) = bind_relay_port(st, ip) else {
        return refuse(st);
    };
    let Some((sb, pb)) = bind_relay_port(st, ip) else {
        return refuse(st);
    };
    let mut tokens = [[0u8; 16]; 2];
    for t in &mut tokens {
        rand_core::OsRng.fill_bytes(t);
    }
    let side = |key, port, token| Side {
        key,
        port,
        token,
        source: None,
    };
    if !st
        .relay
        .insert(now, side(a, pa, tokens[0]), side(b, pb, tokens[1]))
    {
        return refuse(st);
    }
    st.relay_socks.insert(pa, sa);
    st.relay_socks.insert(pb, sb);
    tracing::info!(
        "facilitator: relay {}:{pa} <-> {}:{pb} for {} and {}",
        ip,
        ip,
        a.to_base64(),
        b.to_base64()
    );
    relay_messages(
        (a, SocketAddr::new(ip, pa), tokens[0]),
        (b, SocketAddr::new(ip, pb), tokens[1]),
    )
    .into()
}

/// Binds the next free port of the relay range (round robin; ports in use by us or
/// anyone else are skipped).
fn bind_relay_port(st: &mut State, ip: IpAddr) -> Option<(UdpSocket, u16)> {
    let (lo, hi) = st.relay_ports?;
    for _ in lo..=hi {
        let p = st.next_port;
        st.next_port = if p >= hi { lo } else { p + 1 };
        if st.relay_socks.contains_key(&p) {
            continue;
        }
        if let Ok(s) = UdpSocket::bind(SocketAddr::new(ip, p)) {
            if s.set_nonblocking(true).is_ok() {
                return Some((s, p));
            }
        }
    }
    None
}

/// Forwards what arrived on relay port `port`.
fn forward(st: &mut State, port: u16, now: Instant, buf: &mut [u8]) {
    for _ in 0..256 {
        let Some(sock) = st.relay_socks.get(&port) else {
            return;
        };
        let (n, from) = match sock.recv_from(buf) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        match st.relay.datagram(now, port, from, &buf[..n]) {
            Verdict::Forward { from_port, to } => {
                if let Some(out) = st.relay_socks.get(&from_port) {
                    let _ = out.send_to(&buf[..n], to);
                }
            }
            Verdict::Bound { key } => st.fac.seen(&key, from),
            Verdict::Drop => {}
        }
    }
}

fn write_stats(dirs: &Dirs, device: &Device, st: &State) {
    let f = &st.fac.stats;
    let r = &st.relay.stats;
    let wg: serde_json::Map<String, serde_json::Value> = device
        .stats
        .iter()
        .map(|(k, v)| (k.to_owned(), v.into()))
        .collect();
    let v = serde_json::json!({
        "nodes": st.by_addr.len(),
        "relay_allocations": st.relay.len(),
        "requests": f.requests,
        "malformed": f.malformed,
        "rate_limited": f.rate_limited,
        "introductions": f.introductions,
        "waiting": f.waiting,
        "relays": f.relays,
        "no_relay": f.no_relay,
        "repeated": f.repeated,
        "inner_dropped": st.dropped_inner,
        "relay_forwarded": r.forwarded,
        "relay_forwarded_bytes": r.forwarded_bytes,
        "relay_bound": r.bound,
        "relay_unregistered": r.unregistered,
        "relay_unbound_peer": r.unbound_peer,
        "relay_rate_limited": r.rate_limited,
        "relay_unknown_port": r.unknown_port,
        "relay_expired": r.expired,
        "relay_full": r.full,
        "wireguard": wg,
    });
    let path = dirs.run.join("facilitator-stats.json");
    let r = private_dir(&dirs.run).and_then(|()| write_atomic(&path, v.to_string().as_bytes()));
    if let Err(e) = r {
        tracing::warn!("writing {}: {e}", path.display());
    }
}
