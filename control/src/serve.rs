//! `portdistrict exit serve`: the provider process. It starts the dataplane on the
//! tunnel interface with the provider's WireGuard key, registers every authorized
//! consumer (its inner addresses) and every live invite's negotiation identity as
//! peers, addresses the tunnel (100.64.0.1/10), applies the provider plan (forwarding
//! and masquerade for authorized consumers only) and answers exit requests on
//! 100.64.0.1:51821 until SIGTERM or SIGINT, when it takes the plan back and deletes
//! the interface.
//!
//! An exit request is answered by [`negotiate::check`] (its proof of key ownership)
//! and [`negotiate::decide`]; on a grant the store is saved first (a crash never
//! forgets a grant it sent), then the consumer becomes a peer, the firewall's
//! consumer set is replaced, and only then is the ack sent. The negotiation and DNS
//! sockets are bound to the tunnel interface; negotiation datagrams are rate limited
//! per source and in all ([`RateLimiter`]); a store that cannot be read or written
//! for a moment is logged and answered "unavailable", never fatal.

use crate::exit::{now, ExitDir};
use crate::{dnsfwd, run_cmd, uapi, Dirs};
use anyhow::{bail, Context as _};
use portdistrict_exitnode::apply::{apply_nft, apply_planned, plan_undo, undo_plan, Undo};
use portdistrict_exitnode::negotiate::{self, Answer, Verified};
use portdistrict_exitnode::policy::{Cidr, ProviderPolicy};
use portdistrict_exitnode::ratelimit::{Limits, RateLimiter};
use portdistrict_exitnode::state::{private_dir, write_atomic};
use portdistrict_exitnode::store::{Refusal, Store};
use portdistrict_exitnode::wire::Message;
use portdistrict_wg::uapi::{AllowedIpChange, PeerChange, SetRequest};
use portdistrict_wg::{PrivateKey, PublicKey};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The provider's own address inside the tunnel.
pub const PROVIDER_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
/// The UDP port of exit negotiation inside the tunnel.
pub const NEGOTIATION_PORT: u16 = 51821;

/// Whether to offer IPv6 to consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Mode {
    /// When the uplink has an IPv6 address beyond link-local.
    Auto,
    /// Always.
    On,
    /// Never (consumers then block IPv6).
    Off,
}

/// Options of `exit serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    uplink: String,
    interface: String,
    listen_port: u16,
    endpoints: Vec<SocketAddr>,
    ipv6: Ipv6Mode,
    dns_upstream: Option<SocketAddr>,
    allow_dest: Vec<Cidr>,
    control_group: Option<u32>,
}

impl ServeOptions {
    /// Parses `--uplink IFACE` (required), `--interface NAME` (default `pdexit0`),
    /// `--listen-port N` (default 51820), `--endpoint HOST:PORT` (repeatable; what
    /// invites carry from now on), `--ipv6 auto|on|off`, `--dns-upstream IP[:PORT]`
    /// (default: the first nameserver of /etc/resolv.conf), `--allow-dest CIDR`
    /// (repeatable: a blocked destination consumers may reach nonetheless),
    /// `--control-group GROUP` (who besides root may use the control socket).
    pub fn parse(opts: &[&str]) -> anyhow::Result<ServeOptions> {
        let mut o = ServeOptions {
            uplink: String::new(),
            interface: "pdexit0".to_owned(),
            listen_port: 51820,
            endpoints: Vec::new(),
            ipv6: Ipv6Mode::Auto,
            dns_upstream: None,
            allow_dest: Vec::new(),
            control_group: None,
        };
        let mut it = opts.iter();
        while let Some(&flag) = it.next() {
            let value = *it.next().with_context(|| format!("{flag} needs a value"))?;
            match flag {
                "--uplink" => o.uplink = crate::ifname(flag, value)?,
                "--interface" => o.interface = crate::ifname(flag, value)?,
                "--listen-port" => {
                    o.listen_port =
                        value.parse().ok().filter(|&p| p > 0).with_context(|| {
                            format!("--listen-port {value}: expected 1 to 65535")
                        })?
                }
                "--endpoint" => {
                    let first = value
                        .to_socket_addrs()
                        .with_context(|| format!("--endpoint {value}: expected HOST:PORT"))?
                        .next()
                        .with_context(|| format!("--endpoint {value}: no address"))?;
                    o.endpoints.push(first);
                }
                "--ipv6" => {
                    o.ipv6 = match value {
                        "auto" => Ipv6Mode::Auto,
                        "on" => Ipv6Mode::On,
                        "off" => Ipv6Mode::Off,
                        _ => bail!("--ipv6 {value}: expected auto, on or off"),
                    }
                }
                "--dns-upstream" => {
                    o.dns_upstream = Some(
                        value
                            .parse::<SocketAddr>()
                            .or_else(|_| value.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                            .map_err(|_| {
                                anyhow::anyhow!("--dns-upstream {value}: expected IP or IP:PORT")
                            })?,
                    );
                }
                "--allow-dest" => o.allow_dest.push(
                    value
                        .parse::<Cidr>()
                        .map_err(|e| anyhow::anyhow!("--allow-dest {e}"))?,
                ),
                "--control-group" => o.control_group = Some(crate::ctl::parse_group(value)?),
                _ => bail!("exit serve: unknown option {flag}"),
            }
        }
        if o.uplink.is_empty() {
            bail!("exit serve needs --uplink IFACE: the interface towards the internet");
        }
        if o.endpoints.len() > portdistrict_exitnode::invite::MAX_ENDPOINTS {
            bail!(
                "exit serve takes at most {} endpoints",
                portdistrict_exitnode::invite::MAX_ENDPOINTS
            );
        }
        Ok(o)
    }
}

/// The dataplane binary: `PD_DATAPLANE`, else `portdistrict-dataplane` next to this
/// executable, else on the `PATH`.
pub(crate) fn dataplane_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PD_DATAPLANE") {
        return PathBuf::from(p);
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("portdistrict-dataplane")));
    sibling
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("portdistrict-dataplane"))
}

fn key_of(base64: &str) -> anyhow::Result<PublicKey> {
    PublicKey::from_base64(base64)
        .map_err(|e| anyhow::anyhow!("bad key {base64:?} in the store: {e}"))
}

fn host(addr: IpAddr) -> AllowedIpChange {
    AllowedIpChange {
        addr,
        cidr: if addr.is_ipv4() { 32 } else { 128 },
        remove: false,
    }
}

/// The peers the store implies: consumers with their inner addresses, live invites'
/// negotiation identities with theirs.
fn peers_of(store: &Store, now: u64) -> anyhow::Result<Vec<PeerChange>> {
    let mut peers = Vec::new();
    for c in &store.consumers {
        let mut p = PeerChange::new(key_of(&c.wg_key)?);
        p.allowed_ips.push(host(IpAddr::V4(c.inner_v4)));
        if let Some(v6) = c.inner_v6 {
            p.allowed_ips.push(host(IpAddr::V6(v6)));
        }
        peers.push(p);
    }
    // Spent and revoked invites keep their negotiation identity until they expire, so
    // that a consumer hears why it is refused (the firewall confines it to the
    // negotiation port).
    for i in store.invites.iter().filter(|i| now < i.expires) {
        let mut p = PeerChange::new(key_of(&i.negotiation_key)?);
        p.allowed_ips.push(host(IpAddr::V4(i.negotiation_addr)));
        peers.push(p);
    }
    Ok(peers)
}

/// What the provider's firewall needs to know of the machine: the uplink's prefixes
/// (re-read at every sync) and the forwarding the host did before the provider
/// started (read once, before the plan).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Host {
    uplink_prefixes: Vec<Cidr>,
    uplink_forwarded_v4: bool,
    forwarded_v6: bool,
}

impl Host {
    /// Reads it now (before the plan switches forwarding on).
    fn read(uplink: &str) -> anyhow::Result<Host> {
        if uplink.is_empty() || uplink.contains('/') || uplink == "." || uplink == ".." {
            bail!("--uplink {uplink:?}: not an interface name");
        }
        let flag = |path: String| -> anyhow::Result<bool> {
            let v = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            Ok(v.trim() != "0")
        };
        Ok(Host {
            uplink_prefixes: uplink_prefixes(uplink)?,
            uplink_forwarded_v4: flag(format!("/proc/sys/net/ipv4/conf/{uplink}/forwarding"))?,
            forwarded_v6: flag("/proc/sys/net/ipv6/conf/all/forwarding".to_owned())
                .unwrap_or(false),
        })
    }
}

/// The prefixes of the uplink's addresses (IPv4 and IPv6, from `ip -j addr`), and
/// the peer prefixes of point-to-point addresses.
fn uplink_prefixes(uplink: &str) -> anyhow::Result<Vec<Cidr>> {
    let out = Command::new("ip")
        .args(["-j", "addr", "show", "dev", uplink])
        .stdin(std::process::Stdio::null())
        .output()
        .context("running ip -j addr")?;
    if !out.status.success() {
        bail!(
            "reading the uplink {uplink}'s addresses: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    prefixes_of(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("reading the uplink {uplink}'s addresses"))
}

/// The prefixes in an `ip -j addr` listing.
fn prefixes_of(json: &str) -> anyhow::Result<Vec<Cidr>> {
    let v: serde_json::Value = serde_json::from_str(json).context("unreadable ip -j output")?;
    let mut out = Vec::new();
    for link in v.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            let Some(len) = a["prefixlen"].as_u64().and_then(|l| u8::try_from(l).ok()) else {
                continue;
            };
            for key in ["local", "address"] {
                if let Some(ip) = a[key].as_str().and_then(|s| s.parse::<IpAddr>().ok()) {
                    let p = Cidr::containing(ip, len);
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
            }
        }
    }
    Ok(out)
}

fn policy_of(o: &ServeOptions, store: &Store, ipv6: bool, host: &Host) -> ProviderPolicy {
    ProviderPolicy {
        tunnel: o.interface.clone(),
        uplink: o.uplink.clone(),
        provider_v4: PROVIDER_V4,
        provider_v6: store.v6_prefix.filter(|_| ipv6).map(provider_v6),
        uplink_prefixes: host.uplink_prefixes.clone(),
        allow_dest: o.allow_dest.clone(),
        uplink_forwarded_v4: host.uplink_forwarded_v4,
        forwarded_v6: host.forwarded_v6,
        consumers_v4: store.consumers.iter().map(|c| c.inner_v4).collect(),
        consumers_v6: if ipv6 {
            store.consumers.iter().filter_map(|c| c.inner_v6).collect()
        } else {
            Vec::new()
        },
        ipv6,
        negotiation_port: NEGOTIATION_PORT,
    }
}

/// Whether `ifname` has an IPv6 address beyond link-local.
fn has_global_v6(ifname: &str) -> bool {
    Command::new("ip")
        .args(["-6", "-o", "addr", "show", "dev", ifname, "scope", "global"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

/// A random unique local /64 (RFC 4193: fd00::/8 + 40 random bits + subnet 0).
fn random_ula() -> anyhow::Result<Ipv6Addr> {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b[1..6])
        .map_err(|_| anyhow::anyhow!("no randomness for the IPv6 prefix"))?;
    b[0] = 0xfd;
    Ok(Ipv6Addr::from(b))
}

/// The provider's own IPv6 address in the tunnel: the prefix's ::1.
fn provider_v6(prefix: Ipv6Addr) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(prefix) | 1)
}

/// What the provider last gave the dataplane and the firewall.
struct Applied {
    /// Peer key -> its allowed addresses.
    peers: BTreeMap<String, Vec<IpAddr>>,
    consumers: Vec<(Ipv4Addr, Option<Ipv6Addr>)>,
    /// The machine as the firewall knows it (the uplink's prefixes follow it).
    host: Host,
}

impl Applied {
    /// The firewall went in with the store's consumers and `host`; no peers yet.
    fn new(store: &Store, host: &Host) -> Applied {
        Applied {
            peers: BTreeMap::new(),
            consumers: store
                .consumers
                .iter()
                .map(|c| (c.inner_v4, c.inner_v6))
                .collect(),
            host: host.clone(),
        }
    }
}

/// Brings the dataplane's peers and the firewall's consumer sets in line with the
/// store: revoked consumers and spent or expired invites' negotiation identities are
/// removed at once. The uplink's prefixes are read again: when its addresses changed,
/// the firewall blocks the new ones (when they cannot be read, the last ones stay).
fn sync(o: &ServeOptions, store: &Store, ipv6: bool, applied: &mut Applied) -> anyhow::Result<()> {
    let mut want = BTreeMap::new();
    for p in peers_of(store, now())? {
        want.insert(
            p.public_key.to_base64(),
            p.allowed_ips.iter().map(|a| a.addr).collect::<Vec<_>>(),
        );
    }
    let mut changes = Vec::new();
    for key in applied.peers.keys().filter(|k| !want.contains_key(*k)) {
        let mut p = PeerChange::new(key_of(key)?);
        p.remove = true;
        changes.push(p);
    }
    for (key, addrs) in &want {
        if applied.peers.get(key) != Some(addrs) {
            let mut p = PeerChange::new(key_of(key)?);
            p.replace_allowed_ips = true;
            p.allowed_ips = addrs.iter().map(|a| host(*a)).collect();
            changes.push(p);
        }
    }
    if !changes.is_empty() {
        uapi::set(
            Path::new(uapi::SOCKET_DIR),
            &o.interface,
            &SetRequest {
                private_key: None,
                listen_port: None,
                fwmark: None,
                replace_peers: false,
                peers: changes,
            },
        )?;
        applied.peers = want;
    }
    let consumers: Vec<_> = store
        .consumers
        .iter()
        .map(|c| (c.inner_v4, c.inner_v6))
        .collect();
    let mut host = applied.host.clone();
    match uplink_prefixes(&o.uplink) {
        Ok(p) => host.uplink_prefixes = p,
        Err(e) => eprintln!("portdistrict: {e:#}; the firewall keeps blocking the last ones"),
    }
    if consumers != applied.consumers || host != applied.host {
        apply_nft(&policy_of(o, store, ipv6, &host).plan()?, &[])?;
        applied.consumers = consumers;
        applied.host = host;
    }
    Ok(())
}

/// Takes back a plan a crashed `exit serve` left (its undo file in the run dir) and
/// deletes the tunnel interface it left (its dataplane exits with it).
fn recover(undo_path: &Path, ifname: &str) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(undo_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", undo_path.display())),
    };
    let undo: Undo = serde_json::from_str(&text)
        .with_context(|| format!("{} is damaged", undo_path.display()))?;
    eprintln!(
        "portdistrict: a previous exit serve did not stop cleanly; taking back its plan ({})",
        undo_path.display()
    );
    undo_plan(&undo, &[])?;
    if Path::new("/sys/class/net").join(ifname).exists() {
        run_cmd(&["ip", "link", "del", ifname])?;
    }
    std::fs::remove_file(undo_path).with_context(|| format!("removing {}", undo_path.display()))
}

/// Runs the provider until SIGTERM/SIGINT.
pub fn serve(dirs: &Dirs, o: &ServeOptions) -> anyhow::Result<()> {
    let dir = ExitDir::open(dirs)?;
    let wg = dir.wg_key()?;
    private_dir(&dirs.run)
        .with_context(|| format!("creating {} (mode 0700)", dirs.run.display()))?;
    let undo_path = dirs.run.join("exit-undo.json");
    recover(&undo_path, &o.interface)?;
    // Before the plan switches forwarding on: what the host forwarded stays its own.
    let host = Host::read(&o.uplink)?;
    let ipv6 = match o.ipv6 {
        Ipv6Mode::On => true,
        Ipv6Mode::Off => false,
        Ipv6Mode::Auto => has_global_v6(&o.uplink),
    };
    let upstream = match o.dns_upstream {
        Some(u) => u,
        None => std::fs::read_to_string("/etc/resolv.conf")
            .ok()
            .and_then(|t| dnsfwd::upstream_from_resolv_conf(&t))
            .context(
                "no DNS server for consumers: /etc/resolv.conf names none; pass --dns-upstream IP",
            )?,
    };
    let store = {
        let _lock = dir.lock()?;
        let mut store = dir.store()?;
        let mut changed = false;
        if !o.endpoints.is_empty() && store.endpoints != o.endpoints {
            store.endpoints = o.endpoints.clone();
            changed = true;
        }
        if ipv6 && store.v6_prefix.is_none() {
            store.v6_prefix = Some(random_ula()?);
            changed = true;
        }
        if changed {
            dir.save(&store)?;
        }
        store
    };
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term)).context("signal handler")?;
    }
    if Path::new("/sys/class/net").join(&o.interface).exists() {
        bail!(
            "interface {} exists already: another exit serve runs, or delete it (ip link del {})",
            o.interface,
            o.interface
        );
    }
    let bin = dataplane_binary();
    run_cmd(&[&bin.to_string_lossy(), &o.interface])
        .with_context(|| format!("starting the dataplane {}", bin.display()))?;
    let access = crate::ctl::Access {
        group: o.control_group,
    };
    let ctl = crate::ctl::Control::bind(dirs, crate::ctl::Daemon::Exit, access)?;
    let ctx = Serving {
        ctl: &ctl,
        o,
        dir: &dir,
        ipv6,
        upstream,
        term: &term,
        host,
    };
    let result = ctx.run(&wg, store, &undo_path);
    // The interface goes in any case; the dataplane exits with it.
    let _ = run_cmd(&["ip", "link", "del", &o.interface]);
    result
}

struct Serving<'a> {
    ctl: &'a crate::ctl::Control,
    o: &'a ServeOptions,
    dir: &'a ExitDir,
    ipv6: bool,
    upstream: SocketAddr,
    term: &'a Arc<AtomicBool>,
    host: Host,
}

impl Serving<'_> {
    fn run(&self, wg: &PrivateKey, store: Store, undo_path: &Path) -> anyhow::Result<()> {
        let o = self.o;
        uapi::set(
            Path::new(uapi::SOCKET_DIR),
            &o.interface,
            &SetRequest {
                private_key: Some(Some(wg.clone())),
                listen_port: Some(o.listen_port),
                fwmark: None,
                replace_peers: true,
                peers: Vec::new(),
            },
        )?;
        run_cmd(&[
            "ip",
            "addr",
            "add",
            &format!("{PROVIDER_V4}/10"),
            "dev",
            &o.interface,
        ])?;
        if let (true, Some(prefix)) = (self.ipv6, store.v6_prefix) {
            run_cmd(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{}/64", provider_v6(prefix)),
                "dev",
                &o.interface,
                "nodad",
            ])?;
        }
        run_cmd(&["ip", "link", "set", &o.interface, "up"])?;
        let plan = policy_of(o, &store, self.ipv6, &self.host).plan()?;
        // The way back is on disk before the plan is applied.
        let undo = plan_undo(&plan, &[])?;
        write_atomic(undo_path, serde_json::to_string(&undo)?.as_bytes())
            .with_context(|| format!("writing {}", undo_path.display()))?;
        let result = apply_planned(&plan, &undo, &[])
            .map_err(anyhow::Error::from)
            .and_then(|()| self.serving(store, wg));
        let restored = undo_plan(&undo, &[]);
        if restored.is_ok() {
            let _ = std::fs::remove_file(undo_path);
        }
        result.and(restored.map_err(Into::into))
    }

    fn serving(&self, store: Store, wg: &PrivateKey) -> anyhow::Result<()> {
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
        eprintln!(
            "portdistrict: exit node up on {} (uplink {}, UDP {}, IPv6 {}), negotiation on {PROVIDER_V4}:{NEGOTIATION_PORT}, DNS {PROVIDER_V4}:53 -> {}",
            o.interface,
            o.uplink,
            o.listen_port,
            if self.ipv6 { "offered" } else { "not offered" },
            self.upstream
        );
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
                        eprintln!("portdistrict: the store is in line with the tunnel again");
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        eprintln!("portdistrict: cannot bring the tunnel in line with the store (retrying): {e:#}");
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    eprintln!("portdistrict: negotiation socket: {e}");
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
                eprintln!("portdistrict: an exit request cannot be answered now: {e:#}");
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
                    eprintln!(
                        "portdistrict: authorized {wg_key} as {}{v6}",
                        grant.inner_v4
                    );
                    Ok(reply)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = ServeOptions::parse(&["--uplink", "eth0", "--listen-port", "4500"]).unwrap();
        assert_eq!(
            (o.uplink.as_str(), o.interface.as_str(), o.listen_port),
            ("eth0", "pdexit0", 4500)
        );
        assert!(ServeOptions::parse(&[])
            .unwrap_err()
            .to_string()
            .contains("--uplink"));
        assert!(ServeOptions::parse(&["--uplink", "e", "--listen-port", "0"]).is_err());
        assert!(ServeOptions::parse(&["--uplink", "e", "--what", "1"]).is_err());
        for bad in [
            &["--uplink", "eth*"][..],
            &["--uplink", "eth0", "--interface", "*"][..],
        ] {
            let e = ServeOptions::parse(bad).unwrap_err().to_string();
            assert!(e.contains("wildcards"), "{bad:?}: {e}");
        }
        let o = ServeOptions::parse(&[
            "--uplink",
            "e",
            "--allow-dest",
            "169.254.169.254",
            "--allow-dest",
            "10.0.0.0/8",
        ])
        .unwrap();
        let want: Vec<Cidr> = vec![
            "169.254.169.254/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        assert_eq!(o.allow_dest, want);
        let e = ServeOptions::parse(&["--uplink", "e", "--allow-dest", "10.1.2.3/8"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--allow-dest") && e.contains("10.0.0.0/8"),
            "{e}"
        );
        assert!(ServeOptions::parse(&["--uplink", "e", "--allow-dest", "nope"]).is_err());
    }

    #[test]
    fn uplink_prefixes_from_ip_json() {
        let json = r#"[{"ifindex":2,"ifname":"eth0","addr_info":[
            {"family":"inet","local":"10.77.42.1","prefixlen":24,"scope":"global"},
            {"family":"inet","local":"192.0.2.1","address":"198.51.100.9","prefixlen":32},
            {"family":"inet6","local":"2001:db8:5::1","prefixlen":64,"scope":"global"},
            {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]}]"#;
        let got: Vec<String> = prefixes_of(json)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "10.77.42.0/24",
                "192.0.2.1/32",
                "198.51.100.9/32",
                "2001:db8:5::/64",
                "fe80::/64"
            ]
        );
        assert!(prefixes_of("[]").unwrap().is_empty());
        assert!(prefixes_of("not json").is_err());
    }

    #[test]
    fn peers_follow_the_store() {
        let mut s = Store::default();
        let neg = PrivateKey::from_bytes([3; 32]).public_key().to_base64();
        s.issue(&[1; 16], &neg, 1000, 1).unwrap();
        let consumer = PrivateKey::from_bytes([4; 32]).public_key().to_base64();
        s.authorize(10, &[1; 16], &consumer).unwrap();
        // Used up: the negotiation identity stays (to say "used up") until expiry.
        let peers = peers_of(&s, 20).unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].public_key.to_base64(), consumer);
        assert_eq!(peers[0].allowed_ips[0].cidr, 32);
        assert_eq!(
            peers_of(&s, 1000).unwrap().len(),
            1,
            "expired invites are no peers"
        );
    }
}
