//! The boot path and lockdown mode.
//!
//! After a reboot the nftables table, the rules and the sysctls of system mode are
//! gone, but its state (in the state directory) is not. `use restore`, run by
//! `portdistrict-killswitch.service` before the network comes up, puts the kill switch
//! back from that state: the table, `src_valid_mark` and the `ip rule`s (the routes
//! need the tunnel interface, which only `use` creates; until then the table blocks
//! everything but WireGuard to the provider). It needs no tunnel, no dataplane and no
//! network. When the state cannot be read or applied, it blocks everything (lockdown's
//! ruleset) and fails.
//!
//! Lockdown (`use lockdown on`) is a flag in the state directory: without system mode
//! the kill switch's table holds [`lockdown_plan`] (only loopback and the link's own
//! configuration: DHCP, DHCPv6, neighbour discovery); `use` replaces it with its kill
//! switch, and `use off` puts lockdown's ruleset back instead of opening the machine.
//! Only `use lockdown off` opens it.

use super::{link_exists, policy, table_present, UseDir, UseState};
use crate::Dirs;
use anyhow::{bail, Context as _};
use portdistrict_exitnode::apply::{apply_nft, reapply, remove_nft, verify_nft};
use portdistrict_exitnode::invite::Invite;
use portdistrict_exitnode::policy::{lockdown_plan, KILL_SWITCH_TABLE};
use portdistrict_exitnode::state::write_atomic_mode;

/// `use lockdown on|off|status`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockdownCommand {
    /// Block everything but the tunnel, from now on and after every boot.
    On,
    /// Stop blocking when system mode is off.
    Off,
    /// Report.
    Status,
}

impl LockdownCommand {
    /// `on`, `off` or `status`.
    pub fn parse(s: &str) -> anyhow::Result<LockdownCommand> {
        Ok(match s {
            "on" => LockdownCommand::On,
            "off" => LockdownCommand::Off,
            "status" => LockdownCommand::Status,
            _ => bail!("use lockdown {s:?}: use on, off or status"),
        })
    }
}

/// `use restore`: the kill switch (or lockdown) back from the saved state.
pub fn restore(dirs: &Dirs) -> anyhow::Result<String> {
    let dir = UseDir::new(dirs)?;
    let _lock = dir.lock()?;
    let restored = dir.load().and_then(|s| match s {
        Some(s) => restore_state(&s).map(Some),
        None => Ok(None),
    });
    match restored {
        Ok(Some(said)) => Ok(said),
        Ok(None) if dir.lockdown() => {
            apply_nft(&lockdown_plan()).context("applying lockdown")?;
            Ok("lockdown restored: everything is blocked until `portdistrict use INVITE --mode system` (or `portdistrict use lockdown off`)".to_owned())
        }
        Ok(None) => Ok("nothing to restore: system mode and lockdown are off".to_owned()),
        Err(e) => {
            // Fail closed: what cannot be restored as it was is blocked entirely.
            match apply_nft(&lockdown_plan()) {
                Ok(()) => Err(e.context(
                    "restoring system mode failed; everything is blocked instead (`portdistrict use off` takes the rest back)",
                )),
                Err(b) => Err(e.context(format!(
                    "restoring system mode failed, and blocking everything failed too ({b}): the machine may be OPEN"
                ))),
            }
        }
    }
}

fn restore_state(s: &UseState) -> anyhow::Result<String> {
    let invite = Invite::decode(&s.invite).context("the saved invite is unreadable")?;
    let plan = policy(s, &invite).plan()?;
    if s.granted.is_some() {
        reapply(&plan, link_exists(&s.interface))
            .context("putting the kill switch and its rules back")?;
    } else {
        // A `use` that never got its answer applied only the table.
        apply_nft(&plan).context("putting the kill switch back")?;
    }
    Ok(format!(
        "kill switch restored: nothing leaves but WireGuard to {}; `portdistrict use INVITE --mode system` brings the tunnel back, `portdistrict use off` opens the machine",
        s.endpoint
    ))
}

/// What the kill switch's table holds, for a report without system mode.
pub(super) fn lockdown_firewall() -> &'static str {
    if verify_nft(&lockdown_plan()).is_ok() {
        "the firewall blocks"
    } else if table_present() {
        "the firewall's table is not lockdown's: run `portdistrict use restore`"
    } else {
        "the firewall is MISSING: run `portdistrict use restore`"
    }
}

/// `use lockdown on|off|status`.
pub fn lockdown(dirs: &Dirs, cmd: LockdownCommand) -> anyhow::Result<String> {
    let dir = UseDir::new(dirs)?;
    let _lock = dir.lock()?;
    let system = dir.load()?.is_some();
    let path = dir.lockdown_path();
    match cmd {
        LockdownCommand::On => {
            // Recorded first: a crash before the table is in still blocks at boot.
            write_atomic_mode(&path, b"on\n", 0o600)
                .with_context(|| format!("writing {}", path.display()))?;
            if system {
                return Ok("lockdown on: system mode's kill switch blocks now; `use off` will keep everything blocked".to_owned());
            }
            apply_nft(&lockdown_plan()).context(
                "lockdown is recorded (it applies at boot) but its ruleset could not be applied now",
            )?;
            Ok("lockdown on: everything is blocked (also after a reboot, with portdistrict-killswitch.service) until `portdistrict use INVITE --mode system` or `portdistrict use lockdown off`".to_owned())
        }
        LockdownCommand::Off => {
            if !system {
                remove_nft(KILL_SWITCH_TABLE).context("removing lockdown's ruleset")?;
            }
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", path.display()))
                }
                _ => {}
            }
            Ok(if system {
                "lockdown off: system mode stays on (`portdistrict use off` now opens the machine)"
            } else {
                "lockdown off: the machine is open"
            }
            .to_owned())
        }
        LockdownCommand::Status => Ok(match (dir.lockdown(), system) {
            (true, true) => {
                "lockdown: on (system mode is on; `use off` keeps everything blocked)".to_owned()
            }
            (true, false) => format!("lockdown: on ({})", lockdown_firewall()),
            (false, _) => "lockdown: off".to_owned(),
        }),
    }
}
