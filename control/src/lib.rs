//! The control side of portdistrict: the `portdistrict` CLI's commands as a library
//! (the binary in `main.rs` only parses arguments), so that tests and, later, the
//! control daemon use the same code.
//!
//! - [`exit`]: the provider's offline exit commands (invite, list, revoke).
//! - [`serve`]: `exit serve`, the provider process.
//! - [`consumer`]: `use`, `use status`, `use off`: consumer system mode.
//! - [`identity`], [`trust`]: identities, bundles and the trust lifecycle, and
//!   [`records`]: master and device records, signed, encrypted to their readers,
//!   chunked into TXT — all pure, in `portdistrict-control-core` (`control/core`) and
//!   re-exported here under these names; [`node`]: the `identity` and `peer` commands
//!   around them.
//! - [`device`]: this machine's device and the roster; [`daemon`]: `portdistrictd`;
//!   [`freshness`]: its rollback protection and grace periods (pure, from the core),
//!   kept in the state directory.
//! - [`tunnels`]: `tunnel list|show|connect|disconnect` and `status`.
//! - [`dns`]: publication (RFC 2136 + TSIG) and resolution (hickory-resolver).
//! - [`dnsfwd`]: the provider's DNS forwarder on its tunnel address.
//! - [`dataplane`]: the one client of the dataplane (its shared-memory region or its
//!   WireGuard UAPI socket) that every command programs a tunnel through.
//! - [`ctl`]: the control socket between the CLI and a running daemon.
//! - [`facilitator`]: `facilitator serve|show`, the NAT-traversal facilitator and
//!   relay (its decisions are the core's `nat` module).
#![forbid(unsafe_code)]

mod args;
pub mod attest;
pub mod bugreport;
pub mod cli;
pub mod consumer;
pub mod ctl;
pub mod daemon;
pub mod dataplane;
pub mod device;
pub mod dns;
pub mod dnsfwd;
pub mod exit;
pub mod facilitator;
pub mod freshness;
pub mod netcheck;
pub mod node;
pub mod ping;
pub mod serve;
pub mod status;
pub mod tunnels;

pub use portdistrict_control_core::{identity, records, trust};

use anyhow::{bail, Context as _};
use std::path::PathBuf;
use std::time::Duration;

/// The directories every command works in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    /// Persistent state (`--state-dir`, default `/var/lib/portdistrict`).
    pub state: PathBuf,
    /// Runtime files (`--run-dir`, default `/run/portdistrict`).
    pub run: PathBuf,
}

/// The WireGuard private key kept in `path` (base64, mode 0600), made on first use.
pub(crate) fn wg_key_file(path: &std::path::Path) -> anyhow::Result<portdistrict_wg::PrivateKey> {
    use portdistrict_wg::PrivateKey;
    if !path.exists() {
        let key = PrivateKey::generate(&mut rand_core::OsRng);
        portdistrict_exitnode::state::write_atomic_mode(
            path,
            format!("{}\n", key.to_base64()).as_bytes(),
            0o600,
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    PrivateKey::from_base64(text.trim())
        .map_err(|e| anyhow::anyhow!("{}: not a WireGuard key ({e})", path.display()))
}

/// Marks an error as a usage error (an option's value that does not check out): the
/// CLI exits with status 2 for these, 1 for failures.
#[derive(Debug, Clone, Copy)]
pub struct UsageError;

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("usage")
    }
}

/// Fails with what to do when this process may not administer the network
/// (CAP_NET_ADMIN, which root has): `what` changes interfaces, routes or the firewall.
pub fn need_root(what: &str) -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if has_net_admin(&status) {
        return Ok(());
    }
    bail!("not root: `{what}` changes interfaces, routes and the firewall; run it as root (sudo {what} ...) or with CAP_NET_ADMIN")
}

/// Whether `/proc/self/status` text shows CAP_NET_ADMIN (bit 12) in `CapEff`.
fn has_net_admin(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 12) != 0)
}

/// Runs `argv` and fails with its stderr when it fails.
pub(crate) fn run_cmd(argv: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Dirs {
    /// Takes `--state-dir DIR` and `--run-dir DIR` (anywhere on the line) off `args`,
    /// with the defaults `/var/lib/portdistrict` and `/run/portdistrict`; returns the
    /// directories and the other arguments.
    pub fn from_args(args: &[String]) -> anyhow::Result<(Dirs, Vec<String>)> {
        let mut dirs = Dirs {
            state: PathBuf::from("/var/lib/portdistrict"),
            run: PathBuf::from("/run/portdistrict"),
        };
        let mut rest = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--state-dir" | "--run-dir" => {
                    let v = it
                        .next()
                        .with_context(|| format!("{a} needs a directory"))?;
                    if a == "--state-dir" {
                        dirs.state = PathBuf::from(v);
                    } else {
                        dirs.run = PathBuf::from(v);
                    }
                }
                _ => rest.push(a.clone()),
            }
        }
        Ok((dirs, rest))
    }
}

/// An interface name given with `flag`, checked once where it is taken (see
/// [`portdistrict_exitnode::policy::check_ifname`]: no nftables wildcards such as `*`).
pub(crate) fn ifname(flag: &str, value: &str) -> anyhow::Result<String> {
    portdistrict_exitnode::policy::check_ifname(value)
        .map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
    Ok(value.to_owned())
}

/// `90s`, `30m`, `24h`, `7d`: above zero and at most `max` (each option has its own
/// bound, so that no deadline or expiry computed from it can overflow).
pub fn parse_duration(s: &str, max: Duration) -> anyhow::Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("duration {s:?}: expected a number and a unit, like 24h"))?;
    let scale: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("duration {s:?}: the unit must be s, m, h or d"),
    };
    if n == 0 {
        bail!("duration {s:?} must be above zero");
    }
    match n.checked_mul(scale) {
        Some(secs) if secs <= max.as_secs() => Ok(Duration::from_secs(secs)),
        _ => bail!("duration {s:?} is too long: at most {}", human(max)),
    }
}

/// `max` as the largest whole unit that states it exactly (`1h`, `3650d`, `90s`).
fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Whether a socket read only timed out or was interrupted (nothing arrived; try
/// again), rather than failed.
pub(crate) fn nothing_arrived(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_admin_is_read_from_the_effective_set() {
        assert!(has_net_admin("Name:\tx\nCapEff:\t000001ffffffffff\n"));
        assert!(has_net_admin("CapEff:\t0000000000001000\n"));
        assert!(!has_net_admin("CapEff:\t0000000000000000\n"));
        assert!(!has_net_admin("CapInh:\t0000000000001000\n"));
        assert!(!has_net_admin(""));
    }

    #[test]
    fn durations() {
        let max = Duration::from_secs(10 * 86_400);
        assert_eq!(
            parse_duration("24h", max).unwrap(),
            Duration::from_secs(86_400)
        );
        assert_eq!(parse_duration("90s", max).unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("7d", max).unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("10d", max).unwrap(), max);
        for bad in ["", "h", "10", "10y", "0h", "-1h", "11d", "241h"] {
            assert!(parse_duration(bad, max).is_err(), "{bad}");
        }
    }

    #[test]
    fn huge_durations_are_refused_not_wrapped() {
        let max = Duration::from_secs(3600);
        for huge in [
            "99999999999999s",
            "18446744073709551615s",
            "18446744073709551615d",
            "307445734561825861m",
            "99999999999999999999999s",
        ] {
            let e = parse_duration(huge, max).unwrap_err().to_string();
            assert!(
                e.contains("too long") || e.contains("expected a number"),
                "{huge}: {e}"
            );
        }
        assert!(parse_duration("18446744073709551615d", Duration::MAX)
            .unwrap_err()
            .to_string()
            .contains("too long"));
        assert_eq!(
            parse_duration("2h", max).unwrap_err().to_string(),
            "duration \"2h\" is too long: at most 1h"
        );
    }

    #[test]
    fn interface_names_with_wildcards_are_refused_where_taken() {
        for bad in ["*", "x*", "pd?", "a b", ""] {
            let e = ifname("--interface", bad).unwrap_err().to_string();
            assert!(e.starts_with("--interface: interface name"), "{bad}: {e}");
        }
        assert_eq!(ifname("--interface", "pduse0").unwrap(), "pduse0");
    }
}
