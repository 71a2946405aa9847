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
mod bring_up;
pub mod channel;
mod negotiation;
mod resolver;
mod state;
mod status;
mod tunnel;

pub use boot::{lockdown, restore, LockdownCommand};
use bring_up::bring_up;
use negotiation::probe;
pub use state::Granted;
use state::{
    ensure_kill_switch, first_state, kill_switch_in_place, link_exists, policy, table_present,
    take_back, UseDir, UseState,
};
pub use status::{provider_probe, status, SystemMode, UseStatus};

use crate::Dirs;
use anyhow::{bail, Context as _};
use portdistrict_exitnode::invite::Invite;
use std::path::PathBuf;
use std::time::Duration;

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
    grants: Vec<PathBuf>,
    attestation_roots: Vec<[u8; 32]>,
}

/// `use INVITE --mode system ...` on the command line (checked into [`UseOptions`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct UseArgs {
    /// The invite the provider gave (portdistrict-invite1:...)
    #[arg(value_name = "INVITE")]
    pub invite: Option<String>,
    /// `system`: all traffic goes through the provider, behind a kill switch
    #[arg(long, value_name = "MODE")]
    pub mode: Option<String>,
    /// Keep reaching the local networks (the LAN) outside the tunnel
    #[arg(long)]
    pub allow_lan: bool,
    /// The tunnel interface
    #[arg(long, value_name = "NAME", default_value = DEFAULT_INTERFACE)]
    pub interface: String,
    /// How to point DNS at the tunnel: auto, resolvectl, resolvconf, file or none
    #[arg(long, value_name = "HOW", default_value = "auto")]
    pub dns: String,
    /// The resolver file to rewrite (`none`: leave it); alone it means --dns file
    #[arg(long, value_name = "PATH|none")]
    pub resolv_conf: Option<String>,
    /// How long to wait for traffic to flow (at most 1h)
    #[arg(long, value_name = "DURATION", default_value = "20s")]
    pub timeout: String,
    /// Require the exit's attestation to match this grant (a file from `exit grant`),
    /// repeatable
    #[arg(long, value_name = "FILE")]
    pub grant: Vec<PathBuf>,
    /// Another pinned AMD root key fingerprint (SHA-256, 64 hex digits), repeatable
    #[arg(long, value_name = "HEX")]
    pub attestation_root: Vec<String>,
}

impl UseOptions {
    /// Parses the options of `use` (see [`UseArgs`]), as on the command line.
    pub fn parse(opts: &[&str]) -> anyhow::Result<UseOptions> {
        UseOptions::from_args(crate::args::parse_args("use", opts)?)
    }

    /// Checks `use`'s options; errors name the option and what it takes
    /// (`--resolv-conf` alone means `--dns file` with that file).
    pub fn from_args(a: UseArgs) -> anyhow::Result<UseOptions> {
        let file_given = a.resolv_conf.is_some();
        let mut o = UseOptions {
            invite: a.invite.unwrap_or_default(),
            allow_lan: a.allow_lan,
            interface: crate::ifname("--interface", &a.interface)?,
            resolv_conf: match a.resolv_conf.as_deref() {
                Some("none") => None,
                Some(f) => Some(PathBuf::from(f)),
                None => Some(PathBuf::from("/etc/resolv.conf")),
            },
            dns: resolver::Want::parse(&a.dns)?,
            timeout: crate::parse_duration(&a.timeout, MAX_TIMEOUT).context("--timeout")?,
            grants: a.grant,
            attestation_roots: a
                .attestation_root
                .iter()
                .map(|v| crate::args::hex_bytes::<32>("--attestation-root", v))
                .collect::<anyhow::Result<_>>()?,
        };
        let mode = a.mode.as_deref();
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

/// `use INVITE --mode system`: returns a one-line summary once traffic flows. `say`
/// shows the command's other lines to the user: a repair under way, and after a
/// failure what the machine is now (open, or still blocked).
pub fn use_exit(dirs: &Dirs, o: &UseOptions, say: &dyn Fn(&str)) -> anyhow::Result<String> {
    let invite = Invite::decode(o.invite.trim()).context("the invite is not usable")?;
    let dir = UseDir::new(dirs)?;
    let _lock = dir.lock()?;
    let key = dir.wg_key()?;
    let noise = dir.noise_key()?;
    let (state, first) = match dir.load()? {
        Some(s) if s.invite.trim() != o.invite.trim() => bail!(
            "system mode is already on with another invite (through {}); run `portdistrict use off` first",
            s.endpoint
        ),
        Some(s) if s.allow_lan != o.allow_lan || s.interface != o.interface => bail!(
            "system mode is already on with this invite but other options (--allow-lan {}, --interface {}); run `portdistrict use off` first",
            s.allow_lan, s.interface
        ),
        Some(s) if !o.grants.is_empty() && read_grants(&o.grants)? != s.grants => bail!(
            "system mode is already on with other grants ({} saved); run `portdistrict use off` first, or `use` again without --grant to keep them",
            s.grants.len()
        ),
        Some(s)
            if !o.attestation_roots.is_empty()
                && o.attestation_roots.iter().map(hex::encode).collect::<Vec<_>>()
                    != s.attestation_roots =>
        {
            bail!(
                "system mode is already on with other --attestation-root values; run `portdistrict use off` first, or `use` again without them to keep them"
            )
        }
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
            say("system mode was on but the tunnel is down; bringing it back (the kill switch stays on)");
            (s, false)
        }
        None if dir.lockdown() => {
            // Lockdown blocks everything, the exit channel too: the kill switch of
            // this invite replaces lockdown's table (as blocking, but for marked
            // traffic to the provider), and bring-up asks through it. A refusal
            // puts lockdown's table back.
            invite
                .check_expiry(crate::exit::now())
                .context("the invite is not usable")?;
            let grants = read_grants(&o.grants)?;
            channel::pins(dirs, &grants, &invite, &o.attestation_roots)?;
            (first_state(&dir, o, None, invite.endpoints[0], grants)?, true)
        }
        None => {
            // Asked and judged before anything changes: a refused exit (its
            // attestation missing, failing or measuring otherwise, or the request
            // refused) leaves the machine as it was.
            invite
                .check_expiry(crate::exit::now())
                .context("the invite is not usable")?;
            let grants = read_grants(&o.grants)?;
            let pins = channel::pins(dirs, &grants, &invite, &o.attestation_roots)?;
            let asked = channel::ask(&invite, &key, &noise, &pins, o.timeout, None)
                .context("nothing was changed on this machine")?;
            if let Some(m) = asked.measurement {
                say(&format!(
                    "the exit's attestation passed every check (measurement {})",
                    hex::encode(m)
                ));
            }
            (
                first_state(&dir, o, Some(asked.granted), asked.endpoint, grants)?,
                true,
            )
        }
    };
    let asker = Asker {
        dirs,
        noise: &noise,
        timeout: o.timeout,
    };
    match bring_up(&dir, state, &invite, &key, first, &asker) {
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
                Ok(()) if dir.lockdown() => say("system mode is not on; lockdown is on, so everything stays blocked (`portdistrict use lockdown off` opens the machine)"),
                Ok(()) => say("nothing of `use` stays applied: the machine is as it was before, NOT protected by the kill switch"),
                Err(undo) => say(&format!("taking back after the failure also failed: {undo:#}; see `portdistrict use status`, and `portdistrict use off` to retry")),
            }
            Err(e)
        }
        Err(e) => {
            // A repair that failed keeps the machine blocked (as after a crash): make
            // sure the kill switch is really there before saying so.
            match dir.load().map(|s| s.map(|s| ensure_kill_switch(&s, &invite))) {
                Ok(Some(Ok(()))) => say("the kill switch stays on (traffic is blocked); `portdistrict use off` opens the machine again"),
                Ok(Some(Err(ks))) => say(&format!("the kill switch could not be put back ({ks:#}): the machine may be OPEN; `portdistrict use off` takes the rest back")),
                Ok(None) => say("system mode is not on"),
                Err(st) => say(&format!("{st:#}")),
            }
            Err(e)
        }
    }
}

/// What a repair needs to ask for the grant again.
pub(crate) struct Asker<'a> {
    dirs: &'a Dirs,
    noise: &'a portdistrict_exitnode::channel::NoiseSecretKey,
    timeout: Duration,
}

impl Asker<'_> {
    /// The time budget of each exchange.
    fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Asks again with the pins `s` saved, through the kill switch (marked).
    fn ask(
        &self,
        s: &UseState,
        invite: &Invite,
        key: &portdistrict_wg::PrivateKey,
    ) -> anyhow::Result<channel::Asked> {
        let roots = s
            .attestation_roots
            .iter()
            .map(|h| crate::args::hex_bytes::<32>("saved attestation root", h))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let pins = channel::pins(self.dirs, &s.grants, invite, &roots)?;
        channel::ask(invite, key, self.noise, &pins, self.timeout, Some(FWMARK))
    }
}

/// The grant lines in `files` (each 0600 or not, read as given).
fn read_grants(files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f).with_context(|| format!("--grant {}", f.display()))?;
            if meta.len() > 64 * 1024 {
                bail!("--grant {}: larger than a grant can be", f.display());
            }
            let text =
                std::fs::read_to_string(f).with_context(|| format!("--grant {}", f.display()))?;
            Ok(text.trim().to_owned())
        })
        .collect()
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
/// A netlink handle of this namespace.
fn netlink() -> anyhow::Result<portdistrict_netlink::Handle> {
    use anyhow::Context as _;
    portdistrict_netlink::Handle::open().context("opening a netlink socket")
}

#[cfg(test)]
fn plan_of(s: &UseState, invite: &Invite) -> portdistrict_exitnode::policy::Plan {
    policy(s, invite).plan().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::PROVIDER_V4;
    use portdistrict_exitnode::apply::Undo;
    use portdistrict_exitnode::policy::KILL_SWITCH_TABLE;
    use std::net::{IpAddr, Ipv4Addr};

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
            (
                &["a", "b", "--mode", "system"][..],
                "unexpected argument 'b'",
            ),
            (&["inv", "--mode", "system", "--bogus", "1"][..], "--bogus"),
            (&["inv", "--mode"][..], "a value is required"),
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
    fn before_a_grant_ipv6_is_blocked_and_only_the_provider_allowed() {
        let signer = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
        let invite = Invite {
            transport: portdistrict_exitnode::invite::Transport::WireGuardUdp,
            wg_key: [1; 32],
            signer: ring::signature::KeyPair::public_key(&signer)
                .as_ref()
                .try_into()
                .unwrap(),
            token: [2; 16],
            channel: Some(portdistrict_exitnode::invite::Channel {
                noise_key: [3; 32],
                port: 443,
            }),
            pin: None,
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
            grants: Vec::new(),
            attestation_roots: Vec::new(),
        };
        let p = plan_of(&s, &invite);
        assert!(p
            .nft
            .contains("meta mark 0xca6c ip daddr 192.0.2.1 udp dport 51820 accept"));
        assert!(p
            .nft
            .contains("meta mark 0xca6c ip daddr 192.0.2.1 tcp dport 443 accept"));
        assert!(!p.nft.contains("tcp sport 443"), "replies are established");
        assert!(p
            .ip
            .iter()
            .all(|c| c.family() == portdistrict_exitnode::policy::Family::V4));
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
            .any(|c| c.family() == portdistrict_exitnode::policy::Family::V6));
    }
}
