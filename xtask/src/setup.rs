//! `cargo xtask setup`: installs, idempotently and without prompts, the tools that the
//! demo and the test suite run: Debian packages (skipped entirely when every tool is
//! already on the PATH), the peers from crates.io that the netns suite and pd-bench run
//! against (`boringtun-cli`, `gotatun-cli`) and, for the fuzz smoke, the nightly
//! toolchain (`rustup toolchain install nightly --profile minimal` when it is missing)
//! and `cargo-fuzz`. Where rustup cannot install nightly (no rustup, or its server out of
//! reach), setup says so in a warning and the suite runs without the fuzz smoke.
//! With the peers it also fetches Debian 13's `wireguard-go` into the bench cache
//! ([`crate::debian_peer`]); where it cannot, it says so in a warning and pd-bench runs
//! without that column.

use crate::debian_peer;
use crate::proc::{capture, cmd, output, require_root, run_streamed, which};
use anyhow::{bail, Context as _, Result};
use portdistrict_testkit::bench_cache::{self, CachedPeer};
use std::process::Command;
use std::time::Duration;

/// The tools (executable, Debian package) that the demo and the netns suite invoke.
const APT_TOOLS: &[(&str, &str)] = &[
    ("wg", "wireguard-tools"),
    ("wg-quick", "wireguard-tools"),
    ("wireguard-go", "wireguard-go"),
    ("iperf3", "iperf3"),
    ("ping", "iputils-ping"),
    ("ncat", "ncat"),
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("nft", "nftables"),
    ("iptables", "iptables"),
    ("tcpdump", "tcpdump"),
    ("ps", "procps"),
    ("sysctl", "procps"),
    ("pkill", "procps"),
    ("kill", "procps"),
    ("killall", "psmisc"),
    ("fuser", "psmisc"),
    ("ethtool", "ethtool"),
    ("modprobe", "kmod"),
    ("sha256sum", "coreutils"),
    ("timeout", "coreutils"),
    ("env", "coreutils"),
    ("python3", "python3"),
    // uapi_limits.rs: holds the dataplane's chmod back, connects as another user.
    ("strace", "strace"),
    ("setpriv", "util-linux"),
    ("knotd", "knot"),
    ("knotc", "knot"),
    ("kdig", "knot-dnsutils"),
    // netns-tests/tests/metrics.rs, exit_serve.rs and control_dns.rs check the
    // metrics endpoints' text with `promtool check metrics`. Only promtool is used; on
    // a machine that runs systemd the package also starts its server (`systemctl
    // disable --now prometheus` stops it), in a container policy-rc.d keeps it stopped.
    ("promtool", "prometheus"),
    // systemd_units.rs: verify and the exposure of dist/systemd/ (a path: the
    // binary the test runs).
    ("/usr/bin/systemd-analyze", "systemd"),
    // The XDP program (ebpf/) is compiled by clang with libbpf's and the kernel's
    // headers; a path stands for a file the package installs.
    ("clang", "clang"),
    ("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
    ("/usr/include/linux/bpf.h", "linux-libc-dev"),
    ("bpftool", "bpftool"),
];

/// What the fuzz smoke needs besides cargo-fuzz: libFuzzer is C++, built by `cc`.
const FUZZ_APT_TOOLS: &[(&str, &str)] = &[("c++", "g++")];

const APT_UPDATE_LIMIT: Duration = Duration::from_secs(10 * 60);
const APT_INSTALL_LIMIT: Duration = Duration::from_secs(20 * 60);
const CARGO_INSTALL_LIMIT: Duration = Duration::from_secs(20 * 60);
const VERSION_LIMIT: Duration = Duration::from_secs(60);
/// Upper bound for `rustup toolchain install` (a minimal toolchain is ~100 MB).
const RUSTUP_LIMIT: Duration = Duration::from_secs(15 * 60);
/// The toolchain the fuzz smoke runs on.
const NIGHTLY: &str = "nightly";

/// What setup could not make ready, for the suite to leave out with a warning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ready {
    /// Why the fuzz smoke cannot run here (`None`: it can, or it was not asked for).
    pub(crate) fuzz_unavailable: Option<String>,
    /// Why pd-bench's Debian 13 wireguard-go column will be missing (`None`: it is
    /// cached, or the peers were not asked for).
    pub(crate) current_wireguard_go_unavailable: Option<String>,
}

/// Which optional tool sets to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Needs {
    /// The userspace WireGuards from crates.io ([`PEERS`]): interop peers of the netns
    /// suite and columns of pd-bench.
    pub(crate) peers: bool,
    /// The nightly toolchain, `cargo-fuzz` and a C++ compiler.
    pub(crate) fuzz: bool,
}

impl Needs {
    /// Everything (`cargo xtask setup`).
    pub(crate) const ALL: Needs = Needs {
        peers: true,
        fuzz: true,
    };
    /// The Debian tools only (the demo).
    pub(crate) const APT_ONLY: Needs = Needs {
        peers: false,
        fuzz: false,
    };
    /// The Debian tools and the peers (`cargo xtask bench`).
    pub(crate) const BENCH: Needs = Needs {
        peers: true,
        fuzz: false,
    };
}

/// The peers installed from crates.io: (crate, executable it installs).
const PEERS: &[(&str, &str)] = &[
    ("boringtun-cli", "boringtun-cli"),
    ("gotatun-cli", "gotatun"),
];

/// Installs what `needs` asks for; prints what it found and did, and returns what it
/// could not make ready (the nightly toolchain where rustup cannot install it).
pub(crate) fn run(needs: Needs) -> Result<Ready> {
    require_root("setup")?;
    apt(needs)?;
    let mut ready = Ready::default();
    if needs.peers {
        for (krate, executable) in PEERS {
            cargo_tool(
                krate,
                &mut cmd(&[executable, "--version"]),
                &mut cargo_install(false, krate),
            )?;
        }
        let peer = CachedPeer::wireguard_go_debian13(&bench_cache::root());
        if let Err(why) = debian_peer::ensure(&peer) {
            let w = format!(
                "WARNING: could not fetch Debian {}'s {} ({why}); pd-bench runs WITHOUT its column",
                peer.release, peer.package
            );
            println!("setup: {w}");
            ready.current_wireguard_go_unavailable = Some(w);
        }
    }
    if needs.fuzz {
        match ensure_toolchain(NIGHTLY, &[]) {
            Ok(()) => cargo_tool(
                "cargo-fuzz",
                &mut nightly_cargo(&["fuzz", "--version"]),
                &mut cargo_install(true, "cargo-fuzz"),
            )?,
            Err(why) => {
                println!(
                    "setup: WARNING: the nightly toolchain is missing and {why}; the fuzz smoke will NOT run (the rest does)"
                );
                ready.fuzz_unavailable = Some(format!("no nightly toolchain: {why}"));
            }
        }
    }
    Ok(ready)
}

/// The toolchain `name` is there, or rustup installs it (`--profile minimal`);
/// `Err` says why it could not (no rustup, or rustup failed: its server out of reach).
/// `env` goes to both rustup calls (tests point them at a server that is not there).
fn ensure_toolchain(name: &str, env: &[(&str, &str)]) -> Result<(), String> {
    let present = |env: &[(&str, &str)]| {
        let mut c = toolchain_cargo(name, &["--version"]);
        // Never let the proxy install it behind our back: that is rustup's job below.
        c.env("RUSTUP_AUTO_INSTALL", "0").envs(env.iter().copied());
        capture(&mut c, VERSION_LIMIT).is_ok_and(|o| o.status.success())
    };
    if present(env) {
        println!("setup: the {name} toolchain is present");
        return Ok(());
    }
    let Some(rustup) = which("rustup") else {
        return Err(format!(
            "there is no rustup to install it (install the {name} toolchain by hand)"
        ));
    };
    println!("setup: installing the {name} toolchain (rustup toolchain install {name} --profile minimal)");
    let mut c = Command::new(rustup);
    c.args(["toolchain", "install", name, "--profile", "minimal"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("RUST_BACKTRACE", "0")
        .envs(env.iter().copied());
    match capture(&mut c, RUSTUP_LIMIT) {
        Ok(o) if o.status.success() && present(env) => {
            println!("setup: installed the {name} toolchain");
            Ok(())
        }
        Ok(o) => Err(format!(
            "rustup could not install it (is its server reachable?): {}",
            reason(&o.stderr)
        )),
        Err(e) => Err(format!("rustup did not finish: {e}")),
    }
}

/// What rustup's `text` (stderr) says went wrong: its last `error:` line, else its
/// last line.
fn reason(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("error:"))
        .or(lines.last())
        .map_or_else(|| "(it said nothing)".to_owned(), |l| (*l).to_owned())
}

/// `cargo +nightly <args>` through rustup's proxy, without the toolchain selection
/// that `cargo run` put into xtask's environment.
pub(crate) fn nightly_cargo(args: &[&str]) -> Command {
    toolchain_cargo(NIGHTLY, args)
}

/// `cargo +TOOLCHAIN <args>`, likewise.
fn toolchain_cargo(toolchain: &str, args: &[&str]) -> Command {
    let mut c = Command::new("cargo");
    c.arg(format!("+{toolchain}"))
        .args(args)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    c
}

fn cargo_install(nightly: bool, krate: &str) -> Command {
    let mut c = if nightly {
        nightly_cargo(&[])
    } else {
        Command::new("cargo")
    };
    c.args(["install", "--locked", krate]);
    c
}

/// The distinct Debian packages of `tools`, in first-seen order.
fn packages(tools: &[(&str, &'static str)]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for (_, package) in tools {
        if !out.contains(package) {
            out.push(package);
        }
    }
    out
}

/// An executable on the PATH, or (for an absolute path) a file that exists.
fn present(tool: &str) -> bool {
    if tool.starts_with('/') {
        std::path::Path::new(tool).exists()
    } else {
        which(tool).is_some()
    }
}

fn apt(needs: Needs) -> Result<()> {
    let tools: Vec<(&str, &'static str)> = APT_TOOLS
        .iter()
        .chain(if needs.fuzz { FUZZ_APT_TOOLS } else { &[] })
        .copied()
        .collect();
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(bin, _)| !present(bin))
        .map(|(bin, _)| *bin)
        .collect();
    if missing.is_empty() {
        println!("setup: all {} tools present, apt skipped", tools.len());
        return Ok(());
    }
    if which("apt-get").is_none() {
        bail!(
            "missing tools {} and no apt-get to install them: install them by hand",
            missing.join(" ")
        );
    }
    let packages = packages(&tools);
    println!(
        "setup: missing {}; apt-get install {}",
        missing.join(" "),
        packages.join(" ")
    );
    let apt = |args: &[&str]| {
        let mut c = cmd(&["apt-get", "-q", "-y"]);
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run_streamed(&mut apt(&["update"]), APT_UPDATE_LIMIT)?;
    let mut install = apt(&["install", "--no-install-recommends"]);
    install.args(&packages);
    run_streamed(&mut install, APT_INSTALL_LIMIT)?;
    let still: Vec<&str> = tools
        .iter()
        .filter(|(bin, _)| !present(bin))
        .map(|(bin, _)| *bin)
        .collect();
    if !still.is_empty() {
        bail!("after apt-get install, still missing: {}", still.join(" "));
    }
    println!("setup: installed {}", packages.join(" "));
    Ok(())
}

/// Skips `install` when `version` runs and succeeds; otherwise installs and checks again.
fn cargo_tool(name: &str, version: &mut Command, install: &mut Command) -> Result<()> {
    if let Ok(found) = output(version, VERSION_LIMIT) {
        println!("setup: {name} present ({})", found.trim());
        return Ok(());
    }
    println!("setup: installing {name}");
    run_streamed(install, CARGO_INSTALL_LIMIT)?;
    let found = output(version, VERSION_LIMIT)
        .with_context(|| format!("{name} does not run after `cargo install`"))?;
    println!("setup: installed {name} ({})", found.trim());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toolchain that is not installed, with rustup's server out of reach: not an
    /// error of setup, but a reason that names rustup's failure (or, without rustup,
    /// says so).
    #[test]
    fn a_toolchain_rustup_cannot_fetch_is_a_reason_not_a_failure() {
        let unreachable = [
            ("RUSTUP_DIST_SERVER", "http://127.0.0.1:9"),
            ("RUSTUP_UPDATE_ROOT", "http://127.0.0.1:9/rustup"),
            ("RUSTUP_MAX_RETRIES", "0"),
        ];
        let why = ensure_toolchain("nightly-2001-02-03", &unreachable).unwrap_err();
        if which("rustup").is_some() {
            assert!(why.starts_with("rustup could not install it"), "{why}");
            assert!(
                why.contains("127.0.0.1:9"),
                "names what it could not reach: {why}"
            );
        } else {
            assert!(why.contains("no rustup"), "{why}");
        }
    }

    #[test]
    fn the_reason_is_rustups_error_line() {
        assert_eq!(
            reason("info: x\nerror: no net\n  1: frame\n"),
            "error: no net"
        );
        assert_eq!(reason("a\n\nb\n"), "b");
        assert_eq!(reason(""), "(it said nothing)");
    }

    #[test]
    fn packages_are_deduplicated_in_order() {
        assert_eq!(
            packages(&[
                ("wg", "wireguard-tools"),
                ("wg-quick", "wireguard-tools"),
                ("ip", "iproute2")
            ]),
            ["wireguard-tools", "iproute2"]
        );
    }

    #[test]
    fn the_brief_packages_are_all_listed() {
        let listed = packages(APT_TOOLS);
        for p in [
            "wireguard-tools",
            "wireguard-go",
            "iperf3",
            "iputils-ping",
            "ncat",
            "iproute2",
            "nftables",
            "iptables",
            "tcpdump",
            "procps",
            "psmisc",
            "ethtool",
            "kmod",
        ] {
            assert!(listed.contains(&p), "{p} missing from APT_TOOLS");
        }
    }

    #[test]
    fn peers_are_the_crates_with_their_executables() {
        assert_eq!(
            PEERS,
            [
                ("boringtun-cli", "boringtun-cli"),
                ("gotatun-cli", "gotatun")
            ]
        );
    }

    #[test]
    fn nightly_cargo_drops_the_pinned_toolchain() {
        let c = nightly_cargo(&["fuzz", "list"]);
        let args: Vec<_> = c.get_args().collect();
        assert_eq!(args, ["+nightly", "fuzz", "list"]);
        assert!(c
            .get_envs()
            .any(|(k, v)| k == "RUSTUP_TOOLCHAIN" && v.is_none()));
    }
}
