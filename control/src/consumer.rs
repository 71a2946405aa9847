//! `portdistrict use`: consumer system mode. All IPv4 (and IPv6 when the provider
//! offers it) goes through the provider behind the kill switch of
//! [`portdistrict_exitnode::policy::ConsumerPolicy`].
//!
//! `use INVITE --mode system` runs, in this order, and returns once traffic flows:
//!
//! 1. the invite is decoded and checked (signature, version, transport, expiry);
//! 2. **blocked first**: the state file `STATE_DIR/use/state.json` is written with the
//!    way back (delete the kill-switch table), then the kill switch goes in, allowing
//!    only the marked WireGuard UDP to the provider's endpoints and the tunnel;
//! 3. the dataplane starts on the tunnel interface as the invite's negotiation
//!    identity (fwmark on its socket) and the exit request goes through the tunnel;
//!    a refusal is reported with the provider's reason and everything is taken back;
//! 4. on the ack: our own WireGuard key (`STATE_DIR/use/wg.key`), our inner
//!    addresses, the write-ahead undo of the full plan saved, then the plan applied
//!    (kill switch with our addresses, `src_valid_mark`, fwmark policy routing), and
//!    DNS pointed at the tunnel resolver ([`resolver`]: resolvectl, resolvconf, or the
//!    resolver file rewritten after its previous content was saved into the state);
//! 5. the exit request is sent again as ourselves through the default route: the
//!    answer proves that traffic flows through the provider.
//!
//! Nothing here holds the machine open: the state file is written before each change,
//! so `use off` takes back exactly what was applied, after any crash. If the
//! dataplane dies, the kill switch stays and the machine is blocked; `use` again with
//! the same invite brings the tunnel back without opening anything, and says so when
//! it is already up. `use off` restores the rules, routes, sysctls, nftables ruleset
//! and resolver file as they were; without `use` it is a no-op with a message.
//!
//! A first `use` that fails takes everything back and says the machine is open (or,
//! under lockdown, still blocked); a repair that fails keeps the kill switch, checks
//! that it is really there, and says so. The state outlives a reboot (it lives in the
//! state directory); [`boot`] has `use restore`, which the boot unit runs before the
//! network comes up, and lockdown mode.

mod boot;
mod resolver;
mod status;

pub use boot::{lockdown, restore, LockdownCommand};
pub use status::status;

use crate::dataplane::{Dataplane as _, UapiClient};
use crate::serve::{dataplane_binary, NEGOTIATION_PORT, PROVIDER_V4};
use crate::{run_cmd, Dirs};
use anyhow::{bail, Context as _};
use portdistrict_exitnode::apply::{
    apply_nft, apply_planned, plan_undo, reapply, undo_plan, undo_routing, verify_nft, Undo,
};
use portdistrict_exitnode::invite::Invite;
use portdistrict_exitnode::policy::{lockdown_plan, ConsumerPolicy, KILL_SWITCH_TABLE};
use portdistrict_exitnode::state::{private_dir, write_atomic_mode};
use portdistrict_exitnode::wire::Message;
use portdistrict_wg::config::{AllowedIpChange, ConfigChange, PeerChange};
use portdistrict_wg::{PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The firewall mark on the dataplane's socket, and the routing table (wg-quick's).
pub const FWMARK: u32 = 0xca6c;
/// The routing table of the default routes into the tunnel.
pub const TABLE: u32 = 51820;
/// The default tunnel interface of system mode.
pub const DEFAULT_INTERFACE: &str = "pduse0";
/// The longest `--timeout` for bringing the tunnel up.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Options of `use`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UseOptions {
    invite: String,
    allow_lan: bool,
    interface: String,
    resolv_conf: Option<PathBuf>,
    dns: resolver::Want,
    timeout: Duration,
}

impl UseOptions {
    /// Parses `INVITE --mode system [--allow-lan] [--interface NAME]
    /// [--dns auto|resolvectl|resolvconf|file|none] [--resolv-conf PATH|none]
    /// [--timeout 20s]` (`--resolv-conf` alone means `--dns file` with that file).
    pub fn parse(opts: &[&str]) -> anyhow::Result<UseOptions> {
        let mut o = UseOptions {
            invite: String::new(),
            allow_lan: false,
            interface: DEFAULT_INTERFACE.to_owned(),
            resolv_conf: Some(PathBuf::from("/etc/resolv.conf")),
            dns: resolver::Want::Auto,
            timeout: Duration::from_secs(20),
        };
        let mut mode = None;
        let mut file_given = false;
        let mut it = opts.iter();
        while let Some(&a) = it.next() {
            if a == "--allow-lan" {
                o.allow_lan = true;
                continue;
            }
            if !a.starts_with("--") {
                if !o.invite.is_empty() {
                    bail!("use takes one invite; {a:?} is a second one");
                }
                o.invite = a.to_owned();
                continue;
            }
            let value = *it.next().with_context(|| format!("{a} needs a value"))?;
            match a {
                "--mode" => mode = Some(value),
                "--interface" => o.interface = crate::ifname(a, value)?,
                "--resolv-conf" => {
                    o.resolv_conf = (value != "none").then(|| PathBuf::from(value));
                    file_given = true;
                }
                "--dns" => o.dns = resolver::Want::parse(value)?,
                "--timeout" => {
                    o.timeout = crate::parse_duration(value, MAX_TIMEOUT).context("--timeout")?
                }
                _ => bail!("use: unknown option {a}"),
            }
        }
        match (&o.dns, &o.resolv_conf) {
            (resolver::Want::File, None) => {
                bail!("--dns file needs a file, not --resolv-conf none")
            }
            (resolver::Want::Auto, None) => o.dns = resolver::Want::None,
            (resolver::Want::Auto, Some(_)) if file_given => o.dns = resolver::Want::File,
            _ => {}
        }
        if o.invite.is_empty() {
            bail!("use needs an invite: portdistrict use portdistrict-invite1:... --mode system");
        }
        match mode {
            Some("system") => {}
            Some(m) => {
                bail!("--mode {m}: the only mode is `system` (all traffic through the provider)")
            }
            None => bail!(
                "use needs --mode system (all traffic through the provider, behind a kill switch)"
            ),
        }
        Ok(o)
    }
}

/// The addresses the provider granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Granted {
    inner_v4: Ipv4Addr,
    inner_v6: Option<Ipv6Addr>,
    resolver: IpAddr,
}

/// `STATE_DIR/use/state.json`: what system mode applied, written before each change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct UseState {
    invite: String,
    interface: String,
    allow_lan: bool,
    /// The provider's endpoint that answered (first: the invite's first).
    endpoint: SocketAddr,
    /// `None` while the exit request is not answered yet.
    granted: Option<Granted>,
    /// The way back from everything applied or about to be.
    undo: Undo,
    /// The resolver file as it was (with [`resolver::Via::File`]).
    resolv: Option<resolver::ResolvBackup>,
    /// How DNS was pointed at the tunnel; absent in states written before the choice
    /// existed (then: the file when `resolv` is set).
    #[serde(default)]
    dns_via: Option<resolver::Via>,
}

impl UseState {
    fn dns_via(&self) -> resolver::Via {
        self.dns_via.unwrap_or(if self.resolv.is_some() {
            resolver::Via::File
        } else {
            resolver::Via::None
        })
    }
}

/// `STATE_DIR/use/` (0700): the state, the lockdown flag, our WireGuard key and the
/// lock. Everything here must outlive a reboot; `RUN_DIR` (a tmpfs) holds nothing of
/// system mode.
struct UseDir {
    /// `RUN_DIR`, where versions before this one kept `use.json`.
    run: PathBuf,
    state: PathBuf,
}

impl UseDir {
    fn new(dirs: &Dirs) -> anyhow::Result<UseDir> {
        let state = dirs.state.join("use");
        private_dir(&state).with_context(|| format!("creating {} (mode 0700)", state.display()))?;
        Ok(UseDir {
            run: dirs.run.clone(),
            state,
        })
    }

    /// Serializes `use`, `use off`, `use restore` and `use lockdown`.
    fn lock(&self) -> anyhow::Result<File> {
        let path = self.state.join("lock");
        let f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        f.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(f)
    }

    fn state_path(&self) -> PathBuf {
        self.state.join("state.json")
    }

    /// Where versions before this one kept the state (lost at reboot).
    fn legacy_path(&self) -> PathBuf {
        self.run.join("use.json")
    }

    fn lockdown_path(&self) -> PathBuf {
        self.state.join("lockdown")
    }

    fn lockdown(&self) -> bool {
        self.lockdown_path().exists()
    }

    /// The state, moved here first from the run directory if an older version left
    /// it there.
    fn load(&self) -> anyhow::Result<Option<UseState>> {
        let path = self.state_path();
        let legacy = self.legacy_path();
        if !path.exists() && legacy.exists() {
            let s = parse_state(&legacy)?;
            if let Some(s) = &s {
                self.save(s)?;
            }
            std::fs::remove_file(&legacy)
                .with_context(|| format!("removing {}", legacy.display()))?;
            eprintln!(
                "portdistrict: moved the system-mode state from {} to {} (it must outlive a reboot)",
                legacy.display(),
                path.display()
            );
            return Ok(s);
        }
        parse_state(&path)
    }

    fn save(&self, s: &UseState) -> anyhow::Result<()> {
        let path = self.state_path();
        write_atomic_mode(&path, serde_json::to_string_pretty(s)?.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Our WireGuard key as a consumer, made on first use.
    fn wg_key(&self) -> anyhow::Result<PrivateKey> {
        crate::wg_key_file(&self.state.join("wg.key"))
    }
}

fn parse_state(path: &Path) -> anyhow::Result<Option<UseState>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).with_context(|| {
            format!(
                "{} is damaged: the kill switch (nftables table inet {KILL_SWITCH_TABLE}) may still be on; inspect it and delete the file to start over",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn policy(s: &UseState, invite: &Invite) -> ConsumerPolicy {
    let (inner_v4, inner_v6, resolver) = match s.granted {
        Some(g) => (g.inner_v4, g.inner_v6, g.resolver),
        None => (invite.negotiation_addr, None, IpAddr::V4(PROVIDER_V4)),
    };
    ConsumerPolicy {
        tunnel: s.interface.clone(),
        fwmark: FWMARK,
        table: TABLE,
        endpoints: invite.endpoints.clone(),
        inner_v4,
        inner_v6,
        resolver,
        allow_lan: s.allow_lan,
    }
}

/// The kill switch's table exists (whatever it holds).
fn table_present() -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", KILL_SWITCH_TABLE])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|st| st.success())
}

fn link_exists(ifname: &str) -> bool {
    Path::new("/sys/class/net").join(ifname).exists()
}

/// `use INVITE --mode system`: returns a one-line summary once traffic flows.
pub fn use_exit(dirs: &Dirs, o: &UseOptions) -> anyhow::Result<String> {
    let invite = Invite::decode(o.invite.trim()).context("the invite is not usable")?;
    let dir = UseDir::new(dirs)?;
    let _lock = dir.lock()?;
    let key = dir.wg_key()?;
    let (state, first) = match dir.load()? {
        Some(s) if s.invite.trim() != o.invite.trim() => bail!(
            "system mode is already on with another invite (through {}); run `portdistrict use off` first",
            s.endpoint
        ),
        Some(s) if s.allow_lan != o.allow_lan || s.interface != o.interface => bail!(
            "system mode is already on with this invite but other options (--allow-lan {}, --interface {}); run `portdistrict use off` first",
            s.allow_lan, s.interface
        ),
        Some(s) => {
            if let Some(g) = s.granted {
                if link_exists(&s.interface)
                    && kill_switch_in_place(&s, &invite)
                    && probe(g.inner_v4, &invite, &key, Duration::from_secs(3)).is_ok()
                {
                    return Ok(format!(
                        "system mode is already on: {}",
                        summary(&s, &g)
                    ));
                }
            }
            eprintln!("portdistrict: system mode was on but the tunnel is down; bringing it back (the kill switch stays on)");
            (s, false)
        }
        None => (first_state(&dir, o, &invite)?, true),
    };
    match bring_up(&dir, state, &invite, &key, o.timeout) {
        Ok(s) => {
            let g = s.granted.context("granted after bring-up")?;
            Ok(format!("system mode on: {}", summary(&s, &g)))
        }
        Err(e) if first => {
            // A first `use` that failed changes nothing: all of it is taken back, and
            // the message says what the machine is now.
            let taken = dir.load().and_then(|s| match s {
                Some(s) => take_back(&dir, &s),
                None => Ok(()),
            });
            match taken {
                Ok(()) if dir.lockdown() => eprintln!("portdistrict: system mode is not on; lockdown is on, so everything stays blocked (`portdistrict use lockdown off` opens the machine)"),
                Ok(()) => eprintln!("portdistrict: nothing of `use` stays applied: the machine is as it was before, NOT protected by the kill switch"),
                Err(undo) => eprintln!("portdistrict: taking back after the failure also failed: {undo:#}; see `portdistrict use status`, and `portdistrict use off` to retry"),
            }
            Err(e)
        }
        Err(e) => {
            // A repair that failed keeps the machine blocked (as after a crash): make
            // sure the kill switch is really there before saying so.
            match dir.load().map(|s| s.map(|s| ensure_kill_switch(&s, &invite))) {
                Ok(Some(Ok(()))) => eprintln!("portdistrict: the kill switch stays on (traffic is blocked); `portdistrict use off` opens the machine again"),
                Ok(Some(Err(ks))) => eprintln!("portdistrict: the kill switch could not be put back ({ks:#}): the machine may be OPEN; `portdistrict use off` takes the rest back"),
                Ok(None) => eprintln!("portdistrict: system mode is not on"),
                Err(st) => eprintln!("portdistrict: {st:#}"),
            }
            Err(e)
        }
    }
}

/// The state of a first `use`, saved (the way back on disk before the first change).
fn first_state(dir: &UseDir, o: &UseOptions, invite: &Invite) -> anyhow::Result<UseState> {
    invite
        .check_expiry(crate::exit::now())
        .context("the invite is not usable")?;
    let facts = resolver::Facts::gather(
        o.resolv_conf
            .as_deref()
            .unwrap_or(Path::new("/etc/resolv.conf")),
    );
    let via = resolver::choose(&o.dns, &facts)?;
    let resolv = match (&o.resolv_conf, via) {
        (Some(p), resolver::Via::File) => Some(resolver::ResolvBackup::take(p)?),
        _ => None,
    };
    let s = UseState {
        invite: o.invite.trim().to_owned(),
        interface: o.interface.clone(),
        allow_lan: o.allow_lan,
        endpoint: invite.endpoints[0],
        granted: None,
        undo: Undo {
            nft_table: KILL_SWITCH_TABLE.to_owned(),
            sysctls: Vec::new(),
            ip: Vec::new(),
        },
        resolv,
        dns_via: Some(via),
    };
    dir.save(&s)?;
    Ok(s)
}

/// The kill switch of `s` is in place as planned (read back).
fn kill_switch_in_place(s: &UseState, invite: &Invite) -> bool {
    policy(s, invite)
        .plan()
        .is_ok_and(|p| verify_nft(&p, &[]).is_ok())
}

/// Puts the kill switch of `s` back if it is not in place as planned.
fn ensure_kill_switch(s: &UseState, invite: &Invite) -> anyhow::Result<()> {
    let plan = policy(s, invite).plan()?;
    if verify_nft(&plan, &[]).is_err() {
        apply_nft(&plan, &[]).context("applying the kill switch")?;
    }
    Ok(())
}

fn summary(s: &UseState, g: &Granted) -> String {
    let v6 = g.inner_v6.map(|a| format!(" and {a}")).unwrap_or_default();
    let v6note = if g.inner_v6.is_none() {
        "; the provider offers no IPv6, so IPv6 is blocked"
    } else {
        ""
    };
    format!(
        "all traffic goes through {} on {} as {}{v6}, DNS {}{v6note}",
        s.endpoint, s.interface, g.inner_v4, g.resolver
    )
}

/// Applies the kill switch, starts the dataplane, negotiates if needed, applies the
/// full plan and proves traffic flows. Saves the state before each change.
fn bring_up(
    dir: &UseDir,
    mut s: UseState,
    invite: &Invite,
    key: &PrivateKey,
    timeout: Duration,
) -> anyhow::Result<UseState> {
    // 1. Blocked before anything else: the kill switch of the current stage.
    let plan = policy(&s, invite).plan()?;
    apply_nft(&plan, &[]).context("applying the kill switch")?;
    // 2. A fresh tunnel interface and dataplane.
    if link_exists(&s.interface) {
        run_cmd(&["ip", "link", "del", &s.interface])?;
    }
    let bin = dataplane_binary();
    run_cmd(&[&bin.to_string_lossy(), &s.interface])
        .with_context(|| format!("starting the dataplane {}", bin.display()))?;
    let provider = PublicKey(invite.wg_key);
    // A first `use` negotiates; a repair asks again while the invite's negotiation
    // identity still lives (until its expiry), so that a revocation is reported as
    // such; the provider answers a known consumer with the same grant.
    let renegotiate = s.granted.is_none() || invite.check_expiry(crate::exit::now()).is_ok();
    if renegotiate {
        let g = negotiate(&mut s, invite, key, timeout)?;
        match s.granted {
            None => {
                // 3. The full plan's way back on disk before it is applied.
                s.granted = Some(g);
                let full = policy(&s, invite).plan()?;
                s.undo = plan_undo(&full, &[])?;
                dir.save(&s)?;
                apply_planned(&full, &s.undo, &[]).context("applying system mode")?;
            }
            Some(had) if had != g => bail!(
                "the provider now grants {} instead of {}: run `portdistrict use off`, then `use` again",
                g.inner_v4,
                had.inner_v4
            ),
            Some(_) => {}
        }
    }
    let granted = s.granted.context("granted after negotiation")?;
    // 4. As ourselves, everything through the provider.
    let mut allowed = vec![AllowedIpChange {
        addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        cidr: 0,
        remove: false,
    }];
    if granted.inner_v6.is_some() {
        allowed.push(AllowedIpChange {
            addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            cidr: 0,
            remove: false,
        });
    }
    configure(&s.interface, key, &provider, s.endpoint, &allowed)?;
    set_addresses(
        &s.interface,
        IpAddr::V4(granted.inner_v4),
        granted.inner_v6.map(IpAddr::V6),
    )?;
    // The routes into the tunnel went with an earlier interface, and the rules with a
    // reboot: the whole plan back in place (idempotent), then DNS.
    let full = policy(&s, invite).plan()?;
    reapply(&full, true, &[]).context("putting the kill switch, rules and routes back")?;
    resolver::apply(
        s.dns_via(),
        &s.interface,
        granted.resolver,
        s.resolv.as_ref().map(|r| r.path.as_path()),
    )?;
    dir.save(&s)?;
    // 5. Proof: the provider answers us through the default route.
    probe(granted.inner_v4, invite, key, timeout)
        .context("the tunnel does not carry traffic to the provider (the kill switch stays on)")?;
    Ok(s)
}

/// The exit request as the invite's negotiation identity, trying each endpoint in
/// turn; records the endpoint that answered.
fn negotiate(
    s: &mut UseState,
    invite: &Invite,
    key: &PrivateKey,
    timeout: Duration,
) -> anyhow::Result<Granted> {
    let provider = PublicKey(invite.wg_key);
    let neg = PrivateKey::from_bytes(invite.negotiation_key);
    let mut answer = None;
    let per = timeout / u32::try_from(invite.endpoints.len()).unwrap_or(1);
    for ep in &invite.endpoints {
        configure(
            &s.interface,
            &neg,
            &provider,
            *ep,
            &[host(IpAddr::V4(PROVIDER_V4))],
        )?;
        set_addresses(&s.interface, IpAddr::V4(invite.negotiation_addr), None)?;
        run_cmd(&[
            "ip",
            "route",
            "replace",
            &format!("{PROVIDER_V4}/32"),
            "dev",
            &s.interface,
        ])?;
        match exchange(
            IpAddr::V4(invite.negotiation_addr),
            &request(invite, key),
            per,
        ) {
            Ok(m) => {
                s.endpoint = *ep;
                answer = Some(m);
                break;
            }
            Err(e) => eprintln!("portdistrict: {ep}: {e:#}"),
        }
    }
    match answer {
        Some(Message::Ack {
            inner_v4,
            inner_v6,
            resolver,
        }) => Ok(Granted {
            inner_v4,
            inner_v6,
            resolver,
        }),
        Some(Message::Nak(reason)) => bail!("the provider refused: {reason}"),
        Some(other) => bail!("the provider answered {other:?}, not an ack"),
        None => bail!(
            "no answer from the provider at {} within {}s: is `portdistrict exit serve` running there, and UDP to it open?",
            invite
                .endpoints
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            timeout.as_secs()
        ),
    }
}

fn host(addr: IpAddr) -> AllowedIpChange {
    AllowedIpChange {
        addr,
        cidr: if addr.is_ipv4() { 32 } else { 128 },
        remove: false,
    }
}

/// The tunnel as `key` with the provider as its one peer for `allowed`.
fn configure(
    ifname: &str,
    key: &PrivateKey,
    provider: &PublicKey,
    endpoint: SocketAddr,
    allowed: &[AllowedIpChange],
) -> anyhow::Result<()> {
    let mut p = PeerChange::new(*provider);
    p.endpoint = Some(endpoint);
    p.persistent_keepalive_interval = Some(25);
    p.replace_allowed_ips = true;
    p.allowed_ips = allowed.to_vec();
    Ok(UapiClient::new(ifname).apply(&ConfigChange {
        private_key: Some(Some(key.clone())),
        listen_port: None,
        fwmark: Some(FWMARK),
        replace_peers: true,
        peers: vec![p],
    })?)
}

fn set_addresses(ifname: &str, v4: IpAddr, v6: Option<IpAddr>) -> anyhow::Result<()> {
    run_cmd(&["ip", "addr", "flush", "dev", ifname])?;
    run_cmd(&["ip", "addr", "add", &format!("{v4}/32"), "dev", ifname])?;
    if let Some(v6) = v6 {
        run_cmd(&[
            "ip",
            "addr",
            "add",
            &format!("{v6}/128"),
            "dev",
            ifname,
            "nodad",
        ])?;
    }
    run_cmd(&["ip", "link", "set", ifname, "up"])
}

/// The exit request for `invite` as `key`, with the proof that we hold `key`.
fn request(invite: &Invite, key: &PrivateKey) -> Message {
    portdistrict_exitnode::negotiate::request(invite.token, key.as_bytes(), &invite.wg_key)
}

/// Sends `msg` from `src` to the provider's negotiation port every half second until
/// a negotiation message comes back or `timeout` passes.
fn exchange(src: IpAddr, msg: &Message, timeout: Duration) -> anyhow::Result<Message> {
    let sock = UdpSocket::bind(SocketAddr::new(src, 0))
        .with_context(|| format!("binding a UDP socket to {src}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let to = SocketAddr::new(IpAddr::V4(PROVIDER_V4), NEGOTIATION_PORT);
    let bytes = msg.emit();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        // Sends fail while the kernel has no route yet; keep trying.
        let _ = sock.send_to(&bytes, to);
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from == to => match Message::parse(&buf[..n]) {
                Ok(m) => return Ok(m),
                Err(e) => bail!("the provider's answer is unreadable: {e}"),
            },
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e).context("receiving the provider's answer"),
        }
    }
    bail!("no answer within {}s", timeout.as_secs())
}

/// Asks the provider again as ourselves from our inner address: an ack proves the
/// tunnel carries our traffic.
fn probe(
    inner_v4: Ipv4Addr,
    invite: &Invite,
    key: &PrivateKey,
    timeout: Duration,
) -> anyhow::Result<()> {
    match exchange(IpAddr::V4(inner_v4), &request(invite, key), timeout)? {
        Message::Ack { .. } => Ok(()),
        Message::Nak(r) => bail!("the provider refused us: {r}"),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// Deletes the tunnel, takes the plan back, restores the resolver file and removes
/// the state file (last, so that a failure can be retried).
fn take_back(dir: &UseDir, s: &UseState) -> anyhow::Result<()> {
    let mut first: Option<anyhow::Error> = None;
    // Under lockdown the kill switch becomes lockdown's table (one replacement, no
    // gap) before anything else is taken back.
    let lockdown = dir.lockdown();
    if lockdown {
        if let Err(e) = apply_nft(&lockdown_plan(), &[]) {
            return Err(e).context("lockdown is on but its ruleset could not replace the kill switch; nothing taken back");
        }
    }
    // resolvectl's setting belongs to the link: reverted while the link is there.
    if let Err(e) = resolver::revert(s.dns_via(), &s.interface) {
        first.get_or_insert(e);
    }
    if link_exists(&s.interface) {
        if let Err(e) = run_cmd(&["ip", "link", "del", &s.interface]) {
            first.get_or_insert(e);
        }
    }
    if let Some(r) = &s.resolv {
        if let Err(e) = r.restore() {
            first.get_or_insert(e);
        }
    }
    let undone = if lockdown {
        undo_routing(&s.undo, &[])
    } else {
        undo_plan(&s.undo, &[])
    };
    if let Err(e) = undone {
        first.get_or_insert(e.into());
    }
    if let Some(e) = first {
        return Err(e);
    }
    std::fs::remove_file(dir.state_path())
        .with_context(|| format!("removing {}", dir.state_path().display()))
}

/// `use off`.
pub fn off(dirs: &Dirs) -> anyhow::Result<String> {
    let dir = UseDir::new(dirs)?;
    let _lock = dir.lock()?;
    let lockdown = if dir.lockdown() {
        "; lockdown is on: everything stays blocked until `portdistrict use lockdown off`"
    } else {
        ""
    };
    let Some(s) = dir.load()? else {
        // Nothing of ours is applied; a kill switch left by hand is not ours to judge.
        return Ok(format!("system mode is not on: nothing to do{lockdown}"));
    };
    take_back(&dir, &s)?;
    let dns = match s.dns_via() {
        resolver::Via::File => " and resolver file",
        resolver::Via::Resolvectl => " and resolved's DNS",
        resolver::Via::Resolvconf => " and resolvconf's DNS",
        resolver::Via::None => "",
    };
    Ok(format!(
        "system mode off: {} deleted, routes, rules, sysctls{}{dns} restored{lockdown}",
        s.interface,
        if lockdown.is_empty() {
            ", firewall"
        } else {
            ""
        },
    ))
}

/// The plan of `s` (for tests).
#[cfg(test)]
fn plan_of(s: &UseState, invite: &Invite) -> portdistrict_exitnode::policy::Plan {
    policy(s, invite).plan().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = UseOptions::parse(&["inv", "--mode", "system", "--allow-lan"]).unwrap();
        assert!(o.allow_lan);
        assert_eq!(o.invite, "inv");
        assert_eq!(o.interface, DEFAULT_INTERFACE);
        assert_eq!(o.resolv_conf, Some(PathBuf::from("/etc/resolv.conf")));
        let o = UseOptions::parse(&["--resolv-conf", "none", "--mode", "system", "inv"]).unwrap();
        assert_eq!(o.resolv_conf, None);
        for (opts, needle) in [
            (&["inv"][..], "--mode system"),
            (&["inv", "--mode", "split"][..], "only mode"),
            (&["--mode", "system"][..], "needs an invite"),
            (&["a", "b", "--mode", "system"][..], "second"),
            (&["inv", "--mode", "system", "--bogus", "1"][..], "--bogus"),
            (&["inv", "--mode"][..], "needs a value"),
            (
                &["inv", "--mode", "system", "--timeout", "99999999999999s"][..],
                "--timeout: duration \"99999999999999s\" is too long: at most 1h",
            ),
            (
                &["inv", "--mode", "system", "--interface", "*"][..],
                "wildcards",
            ),
            (
                &["inv", "--mode", "system", "--interface", "x*"][..],
                "wildcards",
            ),
        ] {
            let e = UseOptions::parse(opts).unwrap_err();
            assert!(format!("{e:#}").contains(needle), "{opts:?}: {e:#}");
        }
    }

    #[test]
    fn state_left_in_the_run_dir_moves_to_the_state_dir() {
        let base = std::env::temp_dir().join(format!("pd-usemig-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dirs = Dirs {
            state: base.join("state"),
            run: base.join("run"),
        };
        std::fs::create_dir_all(&dirs.run).unwrap();
        // As the previous version wrote it (no `dns_via`).
        let old = r#"{"invite": "portdistrict-invite1:x", "interface": "pduse0",
            "allow_lan": false, "endpoint": "192.0.2.1:51820", "granted": null,
            "undo": {"nft_table": "portdistrict_killswitch", "sysctls": [], "ip": []},
            "resolv": {"path": "/etc/resolv.conf", "content": [110], "symlink": null}}"#;
        std::fs::write(dirs.run.join("use.json"), old).unwrap();
        let dir = UseDir::new(&dirs).unwrap();
        let s = dir.load().unwrap().expect("the old state is found");
        assert_eq!(s.interface, "pduse0");
        assert_eq!(s.dns_via(), resolver::Via::File);
        assert!(!dirs.run.join("use.json").exists());
        let moved = dirs.state.join("use/state.json");
        assert!(moved.exists());
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&moved).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The run directory (a tmpfs) can go: the state stays.
        std::fs::remove_dir_all(&dirs.run).unwrap();
        assert_eq!(dir.load().unwrap(), Some(s));
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn dns_options() {
        let o = UseOptions::parse(&["inv", "--mode", "system"]).unwrap();
        assert_eq!(o.dns, resolver::Want::Auto);
        let o = UseOptions::parse(&["inv", "--mode", "system", "--resolv-conf", "/x"]).unwrap();
        assert_eq!(o.dns, resolver::Want::File);
        let o = UseOptions::parse(&["inv", "--mode", "system", "--resolv-conf", "none"]).unwrap();
        assert_eq!(o.dns, resolver::Want::None);
        let o = UseOptions::parse(&["inv", "--mode", "system", "--dns", "resolvectl"]).unwrap();
        assert_eq!(o.dns, resolver::Want::Resolvectl);
        let e = UseOptions::parse(&[
            "inv",
            "--mode",
            "system",
            "--dns",
            "file",
            "--resolv-conf",
            "none",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("needs a file"), "{e}");
        let e = UseOptions::parse(&["inv", "--mode", "system", "--dns", "x"]).unwrap_err();
        assert!(e.to_string().contains("--dns"), "{e}");
    }

    #[test]
    fn negotiation_stage_blocks_ipv6_and_allows_only_the_provider() {
        let signer = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
        let invite = Invite {
            transport: portdistrict_exitnode::invite::Transport::WireGuardUdp,
            wg_key: [1; 32],
            signer: ring::signature::KeyPair::public_key(&signer)
                .as_ref()
                .try_into()
                .unwrap(),
            token: [2; 16],
            negotiation_key: [3; 32],
            negotiation_addr: Ipv4Addr::new(100, 127, 0, 2),
            expires: u64::MAX,
            uses: 1,
            endpoints: vec!["192.0.2.1:51820".parse().unwrap()],
        };
        let mut s = UseState {
            invite: String::new(),
            interface: "pduse0".into(),
            allow_lan: false,
            endpoint: invite.endpoints[0],
            granted: None,
            undo: Undo {
                nft_table: KILL_SWITCH_TABLE.into(),
                sysctls: vec![],
                ip: vec![],
            },
            resolv: None,
            dns_via: None,
        };
        let p = plan_of(&s, &invite);
        assert!(p
            .nft
            .contains("meta mark 0xca6c ip daddr 192.0.2.1 udp dport 51820 accept"));
        assert!(p.nft.contains("ip daddr 100.127.0.2 drop"));
        assert!(p
            .ip
            .iter()
            .all(|c| c.family == portdistrict_exitnode::policy::Family::V4));
        s.granted = Some(Granted {
            inner_v4: Ipv4Addr::new(100, 64, 0, 2),
            inner_v6: Some("fd00::2".parse().unwrap()),
            resolver: IpAddr::V4(PROVIDER_V4),
        });
        let p = plan_of(&s, &invite);
        assert!(p.nft.contains("ip6 daddr fd00::2 drop"));
        assert!(p
            .ip
            .iter()
            .any(|c| c.family == portdistrict_exitnode::policy::Family::V6));
    }
}
