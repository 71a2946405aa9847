//! How system mode points the machine's resolver at the tunnel, and how `use off`
//! takes it back. In order of preference:
//!
//! 1. **resolvectl**, when systemd-resolved is what the machine resolves with
//!    (`/etc/resolv.conf` links into `/run/systemd/resolve/` or names its stub
//!    127.0.0.53): the tunnel link gets the resolver and the routing domain `~.`. The
//!    setting belongs to the link, so it goes with the tunnel (and with a reboot);
//!    `use off` reverts it.
//! 2. **resolvconf** (openresolv or Debian's), when it manages `/etc/resolv.conf`: the
//!    resolver is added as interface `tun.IFACE` (exclusive, first); `use off` deletes
//!    it and resolvconf writes the file again.
//! 3. **rewrite**: the file is saved into the state (content or symbolic link) and
//!    replaced by one naming the tunnel resolver; `use off` puts the saved one back.
//!
//! The choice is [`choose`], a pure function of what was found ([`Facts`]).

use crate::run_cmd;
use anyhow::{bail, Context as _};
use portdistrict_exitnode::state::write_atomic_public;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// What `--dns` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Want {
    /// Detect (the default).
    Auto,
    /// systemd-resolved through `resolvectl`.
    Resolvectl,
    /// `resolvconf`.
    Resolvconf,
    /// Rewrite the resolver file.
    File,
    /// Leave DNS alone.
    None,
}

impl Want {
    pub(crate) fn parse(s: &str) -> anyhow::Result<Want> {
        Ok(match s {
            "auto" => Want::Auto,
            "resolvectl" => Want::Resolvectl,
            "resolvconf" => Want::Resolvconf,
            "file" => Want::File,
            "none" => Want::None,
            _ => bail!("--dns {s:?}: use auto, resolvectl, resolvconf, file or none"),
        })
    }
}

/// What the machine has, as far as the choice goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    /// `resolvectl` is on the `PATH`.
    pub(crate) resolvectl: bool,
    /// `resolvconf` is on the `PATH`.
    pub(crate) resolvconf: bool,
    /// The resolver file is a symbolic link to this target.
    pub(crate) link: Option<PathBuf>,
    /// The resolver file's text (empty when absent or a dangling link).
    pub(crate) content: String,
}

impl Facts {
    /// Looks at the `PATH` and at `file`.
    pub(crate) fn gather(file: &Path) -> Facts {
        Facts {
            resolvectl: on_path("resolvectl"),
            resolvconf: on_path("resolvconf"),
            link: std::fs::read_link(file).ok(),
            content: std::fs::read_to_string(file).unwrap_or_default(),
        }
    }

    fn resolved_manages(&self) -> bool {
        self.link
            .as_deref()
            .is_some_and(|l| l.to_string_lossy().contains("/run/systemd/resolve/"))
            || self
                .content
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["nameserver", "127.0.0.53"])
    }

    fn resolvconf_manages(&self) -> bool {
        self.link
            .as_deref()
            .is_some_and(|l| l.to_string_lossy().contains("resolvconf"))
            || self
                .content
                .lines()
                .take_while(|l| l.starts_with('#'))
                .any(|l| l.contains("resolvconf"))
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::metadata(d.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// How the resolver is set, decided once by `use` and kept in the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Via {
    /// `resolvectl` on the tunnel link.
    Resolvectl,
    /// `resolvconf -a tun.IFACE`.
    Resolvconf,
    /// The resolver file rewritten (its backup is kept in the state).
    File,
    /// DNS left alone.
    None,
}

/// Picks the method: an explicit `want` if its tool is there, otherwise (auto)
/// resolvectl when systemd-resolved manages the file, resolvconf when resolvconf does,
/// else the rewrite.
pub(crate) fn choose(want: &Want, facts: &Facts) -> anyhow::Result<Via> {
    Ok(match want {
        Want::Resolvectl if !facts.resolvectl => {
            bail!("--dns resolvectl: resolvectl is not installed (try --dns file)")
        }
        Want::Resolvconf if !facts.resolvconf => {
            bail!("--dns resolvconf: resolvconf is not installed (try --dns file)")
        }
        Want::Resolvectl => Via::Resolvectl,
        Want::Resolvconf => Via::Resolvconf,
        Want::File => Via::File,
        Want::None => Via::None,
        Want::Auto if facts.resolvectl && facts.resolved_manages() => Via::Resolvectl,
        Want::Auto if facts.resolvconf && facts.resolvconf_manages() => Via::Resolvconf,
        Want::Auto => Via::File,
    })
}

/// A saved resolver file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResolvBackup {
    pub(crate) path: PathBuf,
    /// `None`: there was no file.
    pub(crate) content: Option<Vec<u8>>,
    /// It was a symbolic link to this target (then `content` is `None`).
    pub(crate) symlink: Option<PathBuf>,
}

impl ResolvBackup {
    pub(crate) fn take(path: &Path) -> anyhow::Result<ResolvBackup> {
        let meta = std::fs::symlink_metadata(path);
        let mut b = ResolvBackup {
            path: path.to_owned(),
            content: None,
            symlink: None,
        };
        match meta {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            Ok(m) if m.file_type().is_symlink() => {
                b.symlink = Some(
                    std::fs::read_link(path)
                        .with_context(|| format!("reading the link {}", path.display()))?,
                );
            }
            Ok(_) => {
                b.content = Some(
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
                );
            }
        }
        Ok(b)
    }

    pub(crate) fn restore(&self) -> anyhow::Result<()> {
        let p = &self.path;
        if let Some(target) = &self.symlink {
            let tmp = p.with_extension("pd-restore");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(target, &tmp)
                .with_context(|| format!("re-creating the link {}", p.display()))?;
            std::fs::rename(&tmp, p).with_context(|| format!("restoring {}", p.display()))?;
        } else if let Some(content) = &self.content {
            write_atomic_public(p, content)
                .with_context(|| format!("restoring {}", p.display()))?;
        } else {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", p.display()))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The interface name resolvconf records the tunnel's resolver under (wg-quick's).
fn resolvconf_name(ifname: &str) -> String {
    format!("tun.{ifname}")
}

/// Points DNS at `resolver` through `ifname` by `via`; `file` is the file to rewrite.
pub(crate) fn apply(
    via: Via,
    ifname: &str,
    resolver: IpAddr,
    file: Option<&Path>,
) -> anyhow::Result<()> {
    match via {
        Via::None => Ok(()),
        Via::Resolvectl => {
            let r = resolver.to_string();
            run_cmd(&["resolvectl", "dns", ifname, &r])?;
            run_cmd(&["resolvectl", "domain", ifname, "~."])?;
            run_cmd(&["resolvectl", "default-route", ifname, "true"])
        }
        Via::Resolvconf => {
            let name = resolvconf_name(ifname);
            let mut child = std::process::Command::new("resolvconf")
                .args(["-a", &name, "-m", "0", "-x"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .context("running resolvconf -a")?;
            if let Some(mut stdin) = child.stdin.take() {
                use std::io::Write as _;
                writeln!(stdin, "nameserver {resolver}").context("writing to resolvconf")?;
            }
            let status = child.wait().context("waiting for resolvconf")?;
            if !status.success() {
                bail!("resolvconf -a {name} failed ({status})");
            }
            Ok(())
        }
        Via::File => {
            let Some(path) = file else {
                bail!("no resolver file to rewrite");
            };
            let text = format!(
                "# Written by `portdistrict use` (system mode): DNS goes through the tunnel.\n# `portdistrict use off` puts the previous file back.\nnameserver {resolver}\n"
            );
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
                let _ = std::fs::remove_file(path);
            }
            write_atomic_public(path, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))
        }
    }
}

/// Takes back what [`apply`] did by `via` (the file's backup is restored by the
/// caller). Settings that went with the link (a reboot, a deleted tunnel) are no error.
pub(crate) fn revert(via: Via, ifname: &str) -> anyhow::Result<()> {
    match via {
        Via::None | Via::File => Ok(()),
        Via::Resolvectl => {
            if Path::new("/sys/class/net").join(ifname).exists() {
                run_cmd(&["resolvectl", "revert", ifname])?;
            }
            Ok(())
        }
        Via::Resolvconf => run_cmd(&["resolvconf", "-d", &resolvconf_name(ifname), "-f"]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_resolved_then_resolvconf_then_the_rewrite() {
        let stub = Facts {
            resolvectl: true,
            resolvconf: true,
            link: Some("../run/systemd/resolve/stub-resolv.conf".into()),
            content: "nameserver 127.0.0.53\n".into(),
        };
        assert_eq!(choose(&Want::Auto, &stub).unwrap(), Via::Resolvectl);
        // resolved's stub named in a plain file counts too.
        let plain_stub = Facts {
            link: None,
            ..stub.clone()
        };
        assert_eq!(choose(&Want::Auto, &plain_stub).unwrap(), Via::Resolvectl);
        // resolvectl installed but the file is not resolved's: the rewrite.
        let static_file = Facts {
            resolvectl: true,
            resolvconf: false,
            link: None,
            content: "nameserver 192.0.2.53\n".into(),
        };
        assert_eq!(choose(&Want::Auto, &static_file).unwrap(), Via::File);
        let openresolv = Facts {
            resolvectl: false,
            resolvconf: true,
            link: None,
            content: "# Generated by resolvconf\nnameserver 192.0.2.53\n".into(),
        };
        assert_eq!(choose(&Want::Auto, &openresolv).unwrap(), Via::Resolvconf);
        let debian = Facts {
            resolvectl: false,
            resolvconf: true,
            link: Some("/run/resolvconf/resolv.conf".into()),
            content: String::new(),
        };
        assert_eq!(choose(&Want::Auto, &debian).unwrap(), Via::Resolvconf);
        // resolvconf managing the file but not installed (left over): the rewrite.
        let gone = Facts {
            resolvconf: false,
            ..openresolv.clone()
        };
        assert_eq!(choose(&Want::Auto, &gone).unwrap(), Via::File);
        assert_eq!(choose(&Want::Auto, &Facts::default()).unwrap(), Via::File);
    }

    #[test]
    fn explicit_choices_need_their_tool() {
        let none = Facts::default();
        assert_eq!(choose(&Want::File, &none).unwrap(), Via::File);
        assert_eq!(choose(&Want::None, &none).unwrap(), Via::None);
        for (want, needle) in [
            (Want::Resolvectl, "resolvectl is not installed"),
            (Want::Resolvconf, "resolvconf is not installed"),
        ] {
            let e = choose(&want, &none).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
        }
        let all = Facts {
            resolvectl: true,
            resolvconf: true,
            ..Facts::default()
        };
        assert_eq!(choose(&Want::Resolvconf, &all).unwrap(), Via::Resolvconf);
        assert_eq!(choose(&Want::Resolvectl, &all).unwrap(), Via::Resolvectl);
        assert!(Want::parse("bogus")
            .unwrap_err()
            .to_string()
            .contains("auto"));
        assert_eq!(Want::parse("file").unwrap(), Want::File);
    }

    #[test]
    fn resolver_file_backup_restores_content_links_and_absence() {
        let base = std::env::temp_dir().join(format!("pd-resolv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let f = base.join("resolv.conf");
        // A file.
        std::fs::write(&f, "nameserver 192.0.2.53\n").unwrap();
        let b = ResolvBackup::take(&f).unwrap();
        std::fs::write(&f, "changed").unwrap();
        b.restore().unwrap();
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "nameserver 192.0.2.53\n"
        );
        // A link.
        std::fs::remove_file(&f).unwrap();
        std::os::unix::fs::symlink("../run/stub.conf", &f).unwrap();
        let b = ResolvBackup::take(&f).unwrap();
        std::fs::remove_file(&f).unwrap();
        std::fs::write(&f, "changed").unwrap();
        b.restore().unwrap();
        assert_eq!(
            std::fs::read_link(&f).unwrap(),
            PathBuf::from("../run/stub.conf")
        );
        // Nothing.
        std::fs::remove_file(&f).unwrap();
        let b = ResolvBackup::take(&f).unwrap();
        std::fs::write(&f, "changed").unwrap();
        b.restore().unwrap();
        assert!(!f.exists());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn the_rewrite_replaces_a_link_by_a_file_naming_the_resolver() {
        let base = std::env::temp_dir().join(format!("pd-dns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let f = base.join("resolv.conf");
        std::os::unix::fs::symlink("stub.conf", &f).unwrap();
        apply(Via::File, "pd0", "100.64.0.1".parse().unwrap(), Some(&f)).unwrap();
        assert!(!std::fs::symlink_metadata(&f)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(std::fs::read_to_string(&f)
            .unwrap()
            .contains("nameserver 100.64.0.1\n"));
        let _ = std::fs::remove_dir_all(&base);
    }
}
