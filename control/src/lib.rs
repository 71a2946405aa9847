//! The control side of portdistrict: the `portdistrict` CLI's commands as a library
//! (the binary in `main.rs` only parses arguments), so that tests and, later, the
//! control daemon use the same code.
//!
//! - [`exit`]: the provider's offline exit commands (invite, list, revoke).
//! - [`serve`]: `exit serve`, the provider process.
//! - [`consumer`]: `use`, `use status`, `use off`: consumer system mode.
//! - [`identity`], [`trust`]: identities, bundles and the trust lifecycle (pure);
//!   [`node`]: the `identity` and `peer` commands around them; [`records`]: master
//!   and device records, signed, encrypted to their readers, chunked into TXT.
//! - [`device`]: this machine's device and the roster; [`daemon`]: `portdistrictd`;
//!   [`freshness`]: its rollback protection and grace periods (pure).
//! - [`tunnels`]: `tunnel list|show|connect|disconnect` and `status`.
//! - [`dns`]: publication (RFC 2136 + TSIG) and resolution (hickory-resolver).
//! - [`dnsfwd`]: the provider's DNS forwarder on its tunnel address.
//! - [`uapi`]: a client of the dataplane's WireGuard UAPI socket.
#![forbid(unsafe_code)]

pub mod consumer;
pub mod daemon;
pub mod device;
pub mod dns;
pub mod dnsfwd;
pub mod exit;
pub mod freshness;
pub mod identity;
pub mod node;
pub mod records;
pub mod serve;
pub mod trust;
pub mod tunnels;
pub mod uapi;

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

/// `90s`, `30m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("duration {s:?}: expected a number and a unit, like 24h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("duration {s:?}: the unit must be s, m, h or d"),
    };
    if secs == 0 {
        bail!("duration {s:?} must be above zero");
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        for bad in ["", "h", "10", "10y", "0h", "-1h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
