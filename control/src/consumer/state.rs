//! System mode's state: `STATE_DIR/use/` (the state file, the lockdown flag, our
//! WireGuard key, the lock), the policy it stands for, and the way back.

use super::{netlink, resolver, UseOptions, FWMARK, TABLE};
use crate::serve::PROVIDER_V4;
use crate::Dirs;
use anyhow::Context as _;
use portdistrict_exitnode::apply::{apply_nft, undo_plan, undo_routing, verify_nft, Undo};
use portdistrict_exitnode::invite::Invite;
use portdistrict_exitnode::policy::{lockdown_plan, ConsumerPolicy, KILL_SWITCH_TABLE};
use portdistrict_exitnode::state::{private_dir, write_atomic_mode};
use portdistrict_exitnode::store::INNER_V4_BASE;
use portdistrict_wg::PrivateKey;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The addresses the provider granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granted {
    /// Our inner IPv4 address.
    pub inner_v4: Ipv4Addr,
    /// Our inner IPv6 address, when the provider offers IPv6.
    pub inner_v6: Option<Ipv6Addr>,
    /// The resolver inside the tunnel.
    pub resolver: IpAddr,
}

/// `STATE_DIR/use/state.json`: what system mode applied, written before each change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct UseState {
    pub(super) invite: String,
    pub(super) interface: String,
    pub(super) allow_lan: bool,
    /// The provider's endpoint that answered (first: the invite's first).
    pub(super) endpoint: SocketAddr,
    /// `None` while the exit request is not answered yet.
    pub(super) granted: Option<Granted>,
    /// The way back from everything applied or about to be.
    pub(super) undo: Undo,
    /// The resolver file as it was (with [`resolver::Via::File`]).
    pub(super) resolv: Option<resolver::ResolvBackup>,
    /// How DNS was pointed at the tunnel; absent in states written before the choice
    /// existed (then: the file when `resolv` is set).
    #[serde(default)]
    pub(super) dns_via: Option<resolver::Via>,
    /// The grants (`portdistrict-grant1:` lines) the exit's attestation must satisfy,
    /// judged again whenever the grant is asked for again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) grants: Vec<String>,
    /// ARK fingerprints accepted besides AMD's (hex).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) attestation_roots: Vec<String>,
}

impl UseState {
    pub(super) fn dns_via(&self) -> resolver::Via {
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
pub(super) struct UseDir {
    /// `RUN_DIR`, where versions before this one kept `use.json`.
    pub(super) run: PathBuf,
    pub(super) state: PathBuf,
}

impl UseDir {
    pub(super) fn new(dirs: &Dirs) -> anyhow::Result<UseDir> {
        let state = dirs.state.join("use");
        private_dir(&state).with_context(|| format!("creating {} (mode 0700)", state.display()))?;
        Ok(UseDir {
            run: dirs.run.clone(),
            state,
        })
    }

    /// Serializes `use`, `use off`, `use restore` and `use lockdown`.
    pub(super) fn lock(&self) -> anyhow::Result<File> {
        let path = self.state.join("lock");
        let f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        f.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(f)
    }

    pub(super) fn state_path(&self) -> PathBuf {
        self.state.join("state.json")
    }

    /// Where versions before this one kept the state (lost at reboot).
    pub(super) fn legacy_path(&self) -> PathBuf {
        self.run.join("use.json")
    }

    pub(super) fn lockdown_path(&self) -> PathBuf {
        self.state.join("lockdown")
    }

    pub(super) fn lockdown(&self) -> bool {
        self.lockdown_path().exists()
    }

    /// The state, moved here first from the run directory if an older version left
    /// it there.
    pub(super) fn load(&self) -> anyhow::Result<Option<UseState>> {
        let path = self.state_path();
        let legacy = self.legacy_path();
        if !path.exists() && legacy.exists() {
            let s = parse_state(&legacy)?;
            if let Some(s) = &s {
                self.save(s)?;
            }
            std::fs::remove_file(&legacy)
                .with_context(|| format!("removing {}", legacy.display()))?;
            tracing::info!(
                "moved the system-mode state from {} to {} (it must outlive a reboot)",
                legacy.display(),
                path.display()
            );
            return Ok(s);
        }
        parse_state(&path)
    }

    pub(super) fn save(&self, s: &UseState) -> anyhow::Result<()> {
        let path = self.state_path();
        write_atomic_mode(&path, serde_json::to_string_pretty(s)?.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Our WireGuard key as a consumer, made on first use.
    pub(super) fn wg_key(&self) -> anyhow::Result<PrivateKey> {
        crate::wg_key_file(&self.state.join("wg.key"))
    }

    /// Our exit channel Noise static key as a consumer, made on first use (never our
    /// WireGuard key).
    pub(super) fn noise_key(
        &self,
    ) -> anyhow::Result<portdistrict_exitnode::channel::NoiseSecretKey> {
        crate::exit::attestation::noise_key(&self.state.join("noise.key"))
    }
}

pub(super) fn parse_state(path: &Path) -> anyhow::Result<Option<UseState>> {
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

pub(super) fn policy(s: &UseState, invite: &Invite) -> ConsumerPolicy {
    let (inner_v4, inner_v6, resolver) = match s.granted {
        Some(g) => (g.inner_v4, g.inner_v6, g.resolver),
        // Not granted yet (asked through the kill switch under lockdown, or a state
        // of a version before the exit channel): nothing goes into the tunnel
        // (100.64.0.0 is never a consumer's).
        None => (INNER_V4_BASE, None, IpAddr::V4(PROVIDER_V4)),
    };
    ConsumerPolicy {
        tunnel: s.interface.clone(),
        fwmark: FWMARK,
        table: TABLE,
        endpoints: invite.endpoints.clone(),
        channel_port: invite.channel.map(|c| c.port),
        inner_v4,
        inner_v6,
        resolver,
        allow_lan: s.allow_lan,
    }
}

/// The kill switch's table exists (whatever it holds).
pub(super) fn table_present() -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", KILL_SWITCH_TABLE])
        .env("LC_ALL", "C")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|st| st.success())
}

pub(super) fn link_exists(ifname: &str) -> bool {
    Path::new("/sys/class/net").join(ifname).exists()
}

/// The state of a first `use` (granted already, or to be asked through the kill
/// switch under lockdown), saved: the way back on disk before the first change.
pub(super) fn first_state(
    dir: &UseDir,
    o: &UseOptions,
    granted: Option<Granted>,
    endpoint: SocketAddr,
    grants: Vec<String>,
) -> anyhow::Result<UseState> {
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
        endpoint,
        granted,
        undo: Undo {
            nft_table: KILL_SWITCH_TABLE.to_owned(),
            sysctls: Vec::new(),
            ip: Vec::new(),
        },
        resolv,
        dns_via: Some(via),
        grants,
        attestation_roots: o.attestation_roots.iter().map(hex::encode).collect(),
    };
    dir.save(&s)?;
    Ok(s)
}

/// The kill switch of `s` is in place as planned (read back).
pub(super) fn kill_switch_in_place(s: &UseState, invite: &Invite) -> bool {
    policy(s, invite)
        .plan()
        .is_ok_and(|p| verify_nft(&p).is_ok())
}

/// Puts the kill switch of `s` back if it is not in place as planned.
pub(super) fn ensure_kill_switch(s: &UseState, invite: &Invite) -> anyhow::Result<()> {
    let plan = policy(s, invite).plan()?;
    if verify_nft(&plan).is_err() {
        apply_nft(&plan).context("applying the kill switch")?;
    }
    Ok(())
}

/// Deletes the tunnel, takes the plan back, restores the resolver file and removes
/// the state file (last, so that a failure can be retried).
pub(super) fn take_back(dir: &UseDir, s: &UseState) -> anyhow::Result<()> {
    let mut first: Option<anyhow::Error> = None;
    // Under lockdown the kill switch becomes lockdown's table (one replacement, no
    // gap) before anything else is taken back.
    let lockdown = dir.lockdown();
    if lockdown {
        if let Err(e) = apply_nft(&lockdown_plan()) {
            return Err(e).context("lockdown is on but its ruleset could not replace the kill switch; nothing taken back");
        }
    }
    // resolvectl's setting belongs to the link: reverted while the link is there.
    if let Err(e) = resolver::revert(s.dns_via(), &s.interface) {
        first.get_or_insert(e);
    }
    if link_exists(&s.interface) {
        let deleted = netlink().and_then(|mut nl| {
            nl.link_del(&s.interface)
                .with_context(|| format!("deleting {}", s.interface))
        });
        if let Err(e) = deleted {
            first.get_or_insert(e);
        }
    }
    if let Some(r) = &s.resolv {
        if let Err(e) = r.restore() {
            first.get_or_insert(e);
        }
    }
    let undone = if lockdown {
        undo_routing(&s.undo)
    } else {
        undo_plan(&s.undo)
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
