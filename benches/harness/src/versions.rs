//! What exactly was compared: each column's version, for the report's header, read
//! once before the run. Peers say it themselves (`--version`, its first line); where a
//! Debian package owns the binary, its package version is added (`dpkg-query`); the
//! cached Debian 13 wireguard-go has its package version in the bench cache; ours is
//! the git revision of the checkout the harness runs in. Each line is comma-separated,
//! its first field the short name the headline uses ([`short`]).

use std::path::Path;
use std::time::Duration;

use portdistrict_testkit::bench_cache::CachedPeer;

use crate::impls::Impl;
use crate::proc::{capture, cmd};

/// Upper bound for each `--version`, `dpkg-query` or `git` call.
const LIMIT: Duration = Duration::from_secs(10);

/// The version of column `i` whose daemon is `binary`, as one line; `None` for bare veth.
pub(crate) fn describe(i: Impl, binary: Option<&Path>, revision: &str) -> Option<String> {
    let binary = binary?;
    if matches!(i, Impl::Portdistrict | Impl::PortdistrictXdpOff) {
        return Some(format!("portdistrict {revision}, {}", binary.display()));
    }
    let said = first_line_of(&mut cmd(&[&binary.to_string_lossy(), "--version"]));
    if let Some(peer) = i.cached() {
        let version = peer.cached_version().unwrap_or_default();
        return Some(cached_label(&peer, &version, said.as_deref(), binary));
    }
    let package = debian_package(binary);
    Some(peer_label(said.as_deref(), package.as_deref(), binary))
}

/// `wireguard-go 0.0.20231211 (Debian 13), package 0.0.20231211-1+b9, --version says
/// "wireguard-go v0.0.20230223", PATH`.
fn cached_label(peer: &CachedPeer, version: &str, said: Option<&str>, binary: &Path) -> String {
    let mut s = format!("{}, package {version}", peer.label(version));
    if let Some(said) = said {
        s.push_str(&format!(", --version says \"{said}\""));
    }
    format!("{s}, {}", binary.display())
}

/// `SAID, Debian package PACKAGE, PATH`, each part when known.
fn peer_label(said: Option<&str>, package: Option<&str>, binary: &Path) -> String {
    let mut s = said.unwrap_or("version unknown").to_owned();
    if let Some(p) = package {
        s.push_str(&format!(", Debian package {p}"));
    }
    format!("{s}, {}", binary.display())
}

/// The first field of a version line: `wireguard-go 0.0.20231211 (Debian 13)`.
pub(crate) fn short(line: &str) -> &str {
    line.split_once(", ").map_or(line, |(first, _)| first)
}

/// `PACKAGE VERSION` of the Debian package that installed `binary`, if one did.
fn debian_package(binary: &Path) -> Option<String> {
    let path = binary.canonicalize().ok()?;
    let owner = first_line_of(&mut cmd(&["dpkg-query", "-S", &path.to_string_lossy()]))?;
    let package = owning_package(&owner)?;
    let version = first_line_of(&mut cmd(&["dpkg-query", "-W", "-f=${Version}", package]))?;
    Some(format!("{package} {version}"))
}

/// The package in a `dpkg-query -S` line: `wireguard-go: /usr/bin/wireguard-go` or
/// `libc6:amd64: /lib/...` → the name without the architecture; `None` for a diversion
/// or several owners (`a, b: PATH`).
fn owning_package(line: &str) -> Option<&str> {
    let (owners, _path) = line.split_once(": ")?;
    if owners.contains(',') || owners.starts_with("diversion") {
        return None;
    }
    let name = owners.split(':').next()?.trim();
    (!name.is_empty()).then_some(name)
}

/// Ours: `git describe --always --dirty` of the current directory (xtask runs the
/// harness from the workspace root), e.g. `eab969b1c2d3-dirty`; `unknown` outside a
/// checkout.
pub(crate) fn revision() -> String {
    // `safe.directory`: run as root in a checkout that another user owns.
    let mut c = cmd(&[
        "git",
        "-c",
        "safe.directory=*",
        "describe",
        "--always",
        "--dirty",
        "--abbrev=12",
    ]);
    first_line_of(&mut c).map_or_else(
        || "unknown (not in a git checkout)".to_owned(),
        |r| format!("git {r}"),
    )
}

/// The first non-empty line of a command's output when it exits 0 within [`LIMIT`].
fn first_line_of(c: &mut std::process::Command) -> Option<String> {
    let out = capture(c, LIMIT).ok()?;
    if !out.status.success() {
        return None;
    }
    format!("{}\n{}", out.stdout, out.stderr)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owning_package_comes_from_dpkg_query() {
        assert_eq!(
            owning_package("wireguard-go: /usr/bin/wireguard-go"),
            Some("wireguard-go")
        );
        assert_eq!(
            owning_package("libc6:amd64: /usr/lib/x86_64-linux-gnu/libc.so.6"),
            Some("libc6")
        );
        assert_eq!(owning_package("a, b: /usr/share/x"), None);
        assert_eq!(owning_package("diversion by dash from: /bin/sh"), None);
        assert_eq!(owning_package("no colon"), None);
    }

    #[test]
    fn labels_name_version_package_and_path() {
        let peer = CachedPeer::wireguard_go_debian13(Path::new("/c"));
        assert_eq!(
            cached_label(
                &peer,
                "0.0.20231211-1+b9",
                Some("wireguard-go v0.0.20230223"),
                Path::new("/c/bin")
            ),
            "wireguard-go 0.0.20231211 (Debian 13), package 0.0.20231211-1+b9, \
             --version says \"wireguard-go v0.0.20230223\", /c/bin"
        );
        assert_eq!(
            peer_label(
                Some("wireguard-go v0.0.20220316"),
                Some("wireguard-go 0.0.20220316-1+b4"),
                Path::new("/usr/bin/wireguard-go")
            ),
            "wireguard-go v0.0.20220316, Debian package wireguard-go 0.0.20220316-1+b4, /usr/bin/wireguard-go"
        );
        assert_eq!(
            peer_label(None, None, Path::new("/x")),
            "version unknown, /x"
        );
    }

    #[test]
    fn bare_veth_has_no_version() {
        assert_eq!(describe(Impl::Bare, None, "git x"), None);
        let ours = describe(Impl::Portdistrict, Some(Path::new("/t/dp")), "git abc").unwrap();
        assert_eq!(ours, "portdistrict git abc, /t/dp");
        assert_eq!(short(&ours), "portdistrict git abc");
        assert_eq!(
            short("wireguard-go 0.0.20231211 (Debian 13), package 0.0.20231211-1+b9, /c"),
            "wireguard-go 0.0.20231211 (Debian 13)"
        );
        assert_eq!(short("x"), "x");
    }
}
