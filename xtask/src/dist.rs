//! `cargo xtask dist [--check]`: the Debian package `portdistrict`.
//!
//! 1. Installs what it needs when missing: `cargo-deb` (crates.io), `lintian` and
//!    `dpkg-dev` (apt; `debootstrap` too with `--check`).
//! 2. Builds the release binaries, then has them write their man pages and shell
//!    completions (`portdistrict dist-files DIR`, `portdistrict-dataplane --dist-files
//!    DIR`) into `TARGET/release/dist/`, gzipped as Debian wants, beside the systemd
//!    units of `dist/systemd/` with their binaries at `/usr/bin`.
//! 3. `cargo deb` packs them as `control/Cargo.toml`'s `[package.metadata.deb]` says,
//!    into `TARGET/dist/`.
//! 4. `lintian` checks the package: any error fails.
//! 5. With `--check`: a Debian chroot (`debootstrap --variant=minbase`) in which the
//!    package is installed with apt (its dependencies come from the mirror), its
//!    binaries run, and `apt-get purge --autoremove` takes everything back: the file
//!    list of the chroot after the purge must equal the one before the install, but for
//!    apt's and dpkg's own bookkeeping.

use crate::proc::{cmd, output, run_streamed, which};
use crate::{cargo, target_dir, workspace_root};
use anyhow::{bail, Context as _, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

const INSTALL_LIMIT: Duration = Duration::from_secs(20 * 60);
const BUILD_LIMIT: Duration = Duration::from_secs(40 * 60);
const STEP_LIMIT: Duration = Duration::from_secs(10 * 60);
/// The Debian release of the chroot (this machine's).
const SUITE: &str = "bookworm";

/// Builds the package; returns its path.
pub(crate) fn run(check: bool) -> Result<PathBuf> {
    crate::proc::require_root("dist")?;
    run_streamed(
        &mut cargo(&[
            "build",
            "--release",
            "-p",
            "portdistrict-control",
            "-p",
            "portdistrict-dataplane",
        ]),
        BUILD_LIMIT,
    )?;
    package(check)
}

/// The package from the release binaries already built (the suite's build step):
/// tools, staging, `cargo deb`, lintian, and with `check` the chroot.
pub(crate) fn package(check: bool) -> Result<PathBuf> {
    tools(check)?;
    let release = target_dir().join("release");
    stage(&release)?;
    let out = target_dir().join("dist");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    run_streamed(
        &mut cargo(&[
            "deb",
            "-p",
            "portdistrict-control",
            "--no-build",
            "--strip",
            "--output",
            &out.to_string_lossy(),
        ]),
        STEP_LIMIT,
    )?;
    let deb = std::fs::read_dir(&out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("cargo deb made no .deb")?;
    println!("dist: {}", deb.display());
    lintian(&deb)?;
    if check {
        chroot_check(&deb)?;
    }
    Ok(deb)
}

/// `apt-get install` of `packages` when one of `tools` is missing; `cargo-deb`.
fn tools(check: bool) -> Result<()> {
    let mut need: Vec<(&str, &str)> = vec![("lintian", "lintian"), ("dpkg-shlibdeps", "dpkg-dev")];
    if check {
        need.push(("debootstrap", "debootstrap"));
    }
    let missing: Vec<&str> = need
        .iter()
        .filter(|(tool, _)| which(tool).is_none())
        .map(|(_, p)| *p)
        .collect();
    if !missing.is_empty() {
        println!("dist: apt-get install {}", missing.join(" "));
        let apt = |args: &[&str]| {
            let mut c = cmd(&["apt-get", "-q", "-y"]);
            c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            c
        };
        run_streamed(&mut apt(&["update"]), INSTALL_LIMIT)?;
        let mut install = apt(&["install", "--no-install-recommends"]);
        install.args(&missing);
        run_streamed(&mut install, INSTALL_LIMIT)?;
    }
    if output(&mut cargo(&["deb", "--version"]), STEP_LIMIT).is_err() {
        println!("dist: installing cargo-deb");
        run_streamed(
            &mut cmd(&["cargo", "install", "--locked", "cargo-deb"]),
            INSTALL_LIMIT,
        )?;
    }
    Ok(())
}

/// `release/dist/{man,completions,systemd}` for `[package.metadata.deb]`'s assets.
fn stage(release: &Path) -> Result<()> {
    let dist = release.join("dist");
    let _ = std::fs::remove_dir_all(&dist);
    let generated = dist.join("generated");
    for d in ["man", "completions", "systemd"] {
        std::fs::create_dir_all(dist.join(d))?;
    }
    let dir = generated.to_string_lossy().into_owned();
    output(
        &mut cmd(&[
            &release.join("portdistrict").to_string_lossy(),
            "dist-files",
            &dir,
        ]),
        STEP_LIMIT,
    )?;
    output(
        &mut cmd(&[
            &release.join("portdistrict-dataplane").to_string_lossy(),
            "--dist-files",
            &dir,
        ]),
        STEP_LIMIT,
    )?;
    let mut pages = 0;
    for e in std::fs::read_dir(&generated)? {
        let path = e?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("a generated file name")?
            .to_owned();
        let to = completion_name(&name).map_or_else(
            || dist.join("man").join(&name),
            |c| dist.join("completions").join(c),
        );
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(&path, &to)
            .with_context(|| format!("moving {} to {}", path.display(), to.display()))?;
        if name.ends_with(".1") {
            // Debian's man pages are compressed, reproducibly (no name, no time).
            output(
                &mut cmd(&["gzip", "-9n", &to.to_string_lossy()]),
                STEP_LIMIT,
            )?;
            pages += 1;
        }
    }
    let mut units = 0;
    for e in std::fs::read_dir(workspace_root().join("dist/systemd"))? {
        let path = e?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !(name.ends_with(".service") || name.ends_with(".socket") || name.ends_with(".timer")) {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        std::fs::write(dist.join("systemd").join(name), packaged_unit(&text))?;
        units += 1;
    }
    let _ = std::fs::remove_dir_all(&generated);
    println!("dist: {pages} man pages, {units} systemd units, completions staged");
    if pages == 0 || units == 0 {
        bail!("nothing to package: {pages} man pages, {units} units");
    }
    Ok(())
}

/// Where a completion script clap wrote goes, by the file name Debian's shells load.
fn completion_name(generated: &str) -> Option<String> {
    if let Some(bin) = generated.strip_suffix(".bash") {
        Some(format!("bash/{bin}"))
    } else if let Some(bin) = generated.strip_prefix('_') {
        Some(format!("zsh/_{bin}"))
    } else {
        generated
            .strip_suffix(".fish")
            .map(|bin| format!("fish/{bin}.fish"))
    }
}

/// A unit of `dist/systemd` as the package installs it: binaries in `/usr/bin`, and
/// without the install notes meant for a source install.
fn packaged_unit(text: &str) -> String {
    text.replace("/usr/local/bin/", "/usr/bin/")
}

/// `lintian` on the package: its tags shown, an error fails.
fn lintian(deb: &Path) -> Result<()> {
    let out = std::process::Command::new("lintian")
        .args(["--fail-on", "error", "--tag-display-limit", "0"])
        .arg(deb)
        .output()
        .context("running lintian")?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let (e, w) = (
        text.lines().filter(|l| l.starts_with("E: ")).count(),
        text.lines().filter(|l| l.starts_with("W: ")).count(),
    );
    println!("dist: lintian: {e} errors, {w} warnings");
    if !out.status.success() || e > 0 {
        bail!("lintian found {e} errors in {}", deb.display());
    }
    Ok(())
}

/// Install, run and purge in a fresh chroot; nothing of the package may remain.
fn chroot_check(deb: &Path) -> Result<()> {
    let root = std::env::temp_dir().join(format!("pd-dist-chroot-{}", std::process::id()));
    let _guard = Cleanup(root.clone());
    let mirror = mirror();
    println!(
        "dist: debootstrap {SUITE} into {} from {mirror}",
        root.display()
    );
    run_streamed(
        &mut cmd(&[
            "debootstrap",
            "--variant=minbase",
            SUITE,
            &root.to_string_lossy(),
            &mirror,
        ]),
        INSTALL_LIMIT,
    )?;
    let in_root = |args: &[&str]| {
        let mut c = cmd(&["chroot", &root.to_string_lossy()]);
        c.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        c
    };
    let before = files(&root)?;
    std::fs::copy(deb, root.join("tmp/portdistrict.deb"))?;
    run_streamed(
        &mut in_root(&[
            "apt-get",
            "-q",
            "-y",
            "install",
            "--no-install-recommends",
            "/tmp/portdistrict.deb",
        ]),
        INSTALL_LIMIT,
    )?;
    std::fs::remove_file(root.join("tmp/portdistrict.deb"))?;
    for bin in ["portdistrict", "portdistrictd", "portdistrict-dataplane"] {
        let v = output(&mut in_root(&[bin, "--version"]), STEP_LIMIT)?;
        println!("dist: in the chroot: {}", v.trim());
    }
    let installed = files(&root)?;
    for want in [
        "usr/bin/portdistrict",
        "usr/share/man/man1/portdistrict-exit-serve.1.gz",
        "usr/share/bash-completion/completions/portdistrict",
        "lib/systemd/system/portdistrict-killswitch.service",
    ] {
        // With merged /usr, /lib is a link to /usr/lib.
        if !installed.contains(want) && !installed.contains(&format!("usr/{want}")) {
            bail!("the package did not install {want}");
        }
    }
    run_streamed(
        &mut in_root(&[
            "apt-get",
            "-q",
            "-y",
            "purge",
            "--autoremove",
            "portdistrict",
        ]),
        INSTALL_LIMIT,
    )?;
    let after = files(&root)?;
    let left: Vec<&String> = after
        .difference(&before)
        .filter(|p| !bookkeeping(p))
        .collect();
    let gone: Vec<&String> = before
        .difference(&after)
        .filter(|p| !bookkeeping(p))
        .collect();
    println!(
        "dist: chroot: {} files installed, {} left after purge, {} missing",
        installed.len().saturating_sub(before.len()),
        left.len(),
        gone.len()
    );
    if !left.is_empty() || !gone.is_empty() {
        bail!("install and purge changed the chroot: left {left:?}, removed {gone:?}");
    }
    Ok(())
}

/// The machine's Debian mirror (its apt sources), else deb.debian.org.
fn mirror() -> String {
    let text = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .or_else(|_| std::fs::read_to_string("/etc/apt/sources.list"))
        .unwrap_or_default();
    mirror_of(&text).unwrap_or_else(|| "http://deb.debian.org/debian".to_owned())
}

/// The first main archive URI of a sources file (deb822 `URIs:` or one-line `deb`).
fn mirror_of(text: &str) -> Option<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| {
            let l = l.trim();
            let uri = l.strip_prefix("URIs:").map(str::trim).or_else(|| {
                l.strip_prefix("deb ")
                    .and_then(|r| r.split_whitespace().find(|w| w.contains("://")))
            })?;
            (!uri.contains("security"))
                .then(|| uri.split_whitespace().next().unwrap_or(uri).to_owned())
        })
}

/// Every path under `root` (relative), directories included.
fn files(root: &Path) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e?;
            let path = e.path();
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            if matches!(rel.as_str(), "proc" | "sys" | "dev") {
                continue;
            }
            if e.file_type()?.is_dir() {
                stack.push(path);
            }
            out.insert(rel);
        }
    }
    Ok(out)
}

/// apt's and dpkg's own records, caches and logs, which any install changes.
fn bookkeeping(path: &str) -> bool {
    [
        "var/lib/dpkg/",
        "var/lib/apt/",
        "var/cache/",
        "var/log/",
        "var/lib/systemd/deb-systemd",
        "etc/ld.so.cache",
        "tmp/",
    ]
    .iter()
    .any(|p| path.starts_with(p) || *p == format!("{path}/"))
}

/// Removes the chroot however `chroot_check` ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for sub in ["proc", "sys", "dev/pts", "dev"] {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0.join(sub))
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_go_where_the_shells_look() {
        assert_eq!(
            completion_name("portdistrict.bash").as_deref(),
            Some("bash/portdistrict")
        );
        assert_eq!(
            completion_name("_portdistrictd").as_deref(),
            Some("zsh/_portdistrictd")
        );
        assert_eq!(
            completion_name("portdistrict-dataplane.fish").as_deref(),
            Some("fish/portdistrict-dataplane.fish")
        );
        assert_eq!(completion_name("portdistrict-use.1"), None);
    }

    #[test]
    fn packaged_units_run_the_packaged_binaries() {
        assert_eq!(
            packaged_unit("ExecStart=/usr/local/bin/portdistrict use restore\n"),
            "ExecStart=/usr/bin/portdistrict use restore\n"
        );
    }

    #[test]
    fn the_mirror_is_read_from_the_sources() {
        let deb822 = "Types: deb\n# http://snapshot.debian.org/x\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\nURIs: http://deb.debian.org/debian-security\n";
        assert_eq!(
            mirror_of(deb822).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let one_line = "deb [arch=amd64] http://mirror.example/debian bookworm main\n";
        assert_eq!(
            mirror_of(one_line).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(mirror_of(""), None);
    }

    #[test]
    fn bookkeeping_is_apt_and_dpkg_only() {
        assert!(bookkeeping("var/lib/dpkg/status"));
        assert!(bookkeeping("var/cache"));
        assert!(!bookkeeping("usr/bin/portdistrict"));
        assert!(!bookkeeping("etc/portdistrict"));
        assert!(!bookkeeping("var/lib/portdistrict"));
    }
}
