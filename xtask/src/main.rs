//! `cargo xtask` — build orchestration for portdistrict.
//!
//! - `cargo xtask setup`: installs the tools the demo and the tests run.
//! - `cargo xtask demo`: two namespaces, two `portdistrict-dataplane`s configured with
//!   `wg`, pings and iperf3 through the tunnel; then an exit node (`portdistrict exit
//!   serve`, `portdistrict use`) between a consumer and an "internet".
//! - `cargo xtask test [--skip-fuzz] [--skip-netns] [--skip-bench] [--only-netns]`: the
//!   whole suite (fmt, clippy, build, unit tests, fuzz smoke, netns suite, pd-bench
//!   `--quick`), as CI runs it.
//! - `cargo xtask bench [PD_BENCH_ARGS...]`: the end-to-end throughput harness
//!   (pd-bench) against bare veth and the other userspace WireGuards.
//!
//! - `cargo xtask dist [--check]`: the Debian package (binaries, systemd units, man
//!   pages, completions), checked by lintian; `--check` installs and purges it in a
//!   Debian chroot.
//!
//! All of them need root (packages, network namespaces).

mod bench;
mod debian_peer;
mod demo;
mod demo_exit;
mod dist;
mod guards;
mod proc;
mod setup;
mod suite;

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
Usage: cargo xtask setup
       cargo xtask demo
       cargo xtask test [--skip-fuzz] [--skip-netns] [--skip-bench] [--only-netns]
       cargo xtask bench [PD_BENCH_ARGS...]
       cargo xtask dist [--check]

  setup   install the tools the demo, the tests and the benchmark run (apt packages,
          boringtun-cli, gotatun-cli, cargo-fuzz) and fetch Debian 13's wireguard-go into
          the bench cache (no install); skips what is already there
  demo    two network namespaces, a portdistrict-dataplane in each configured with wg,
          pings and iperf3 through the tunnel; then an exit node: a consumer in system
          mode reaches an \"internet\" through a provider, behind its kill switch;
          cleans up after itself
  test    fmt, clippy, release build, unit tests, fuzz smoke, netns suite, pd-bench
          --quick; stops at the first failing step and ends with
          `xtask: N passed, M failed`; --only-netns runs setup, build and the netns suite
  bench   setup, release build of portdistrict-dataplane and pd-bench, then
          `pd-bench --dataplane target/release/portdistrict-dataplane PD_BENCH_ARGS...`
          (e.g. --quick, or --duration 10 --repeat 5; see benches/harness/README.md):
          bare veth, portdistrict, wireguard-go (Debian 13's, fetched by setup into
          /var/cache/portdistrict-bench, and the one on PATH), boringtun and gotatun;
          exits with pd-bench's exit code
  dist    the Debian package in target/dist/ (binaries, systemd units, man pages,
          completions; cargo-deb), checked by lintian; --check also installs it in a
          fresh Debian chroot (debootstrap), runs it and purges it, and fails if
          anything is left behind

All of them run as root.";

/// A parsed command line.
#[derive(Debug, PartialEq, Eq)]
enum Task {
    Setup,
    Demo,
    Test(suite::Options),
    /// pd-bench's arguments, passed on as they are.
    Bench(Vec<String>),
    /// `--check`: install and purge in a chroot too.
    Dist {
        check: bool,
    },
    Help,
}

fn parse(args: &[String]) -> Result<Task> {
    let Some((first, rest)) = args.split_first() else {
        return Ok(Task::Help);
    };
    let task = match first.as_str() {
        "setup" => Task::Setup,
        "demo" => Task::Demo,
        "test" => {
            let mut o = suite::Options::default();
            for a in rest {
                match a.as_str() {
                    "--skip-fuzz" => o.skip_fuzz = true,
                    "--skip-netns" => o.skip_netns = true,
                    "--skip-bench" => o.skip_bench = true,
                    "--only-netns" => o.only_netns = true,
                    "-h" | "--help" => return Ok(Task::Help),
                    other => bail!("unknown option {other} for `cargo xtask test`\n\n{USAGE}"),
                }
            }
            return Ok(Task::Test(o));
        }
        "bench" => return Ok(Task::Bench(rest.to_vec())),
        "dist" => match rest {
            [] => return Ok(Task::Dist { check: false }),
            [c] if c == "--check" => return Ok(Task::Dist { check: true }),
            _ => bail!("`cargo xtask dist` takes only --check\n\n{USAGE}"),
        },
        "help" | "-h" | "--help" => Task::Help,
        other => bail!("unknown task {other}\n\n{USAGE}"),
    };
    if let Some(extra) = rest.first() {
        bail!("unexpected argument {extra} for `cargo xtask {first}`\n\n{USAGE}");
    }
    Ok(task)
}

/// The workspace root (the parent of this crate's directory).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Where cargo puts build outputs: `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub(crate) fn target_dir() -> PathBuf {
    target_dir_from(
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from),
        &workspace_root(),
    )
}

fn target_dir_from(env: Option<PathBuf>, root: &Path) -> PathBuf {
    match env {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// `cargo ARGS...` run from the workspace root.
pub(crate) fn cargo(args: &[&str]) -> Command {
    let mut c = Command::new("cargo");
    c.args(args).current_dir(workspace_root());
    c
}

fn main() -> ExitCode {
    portdistrict_logging::init("xtask", tracing::Level::INFO);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = match parse(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            return ExitCode::from(2);
        }
    };
    proc::install_interrupt_handler();
    proc::complete_path();
    let result = match task {
        Task::Help => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Task::Setup => setup::run(setup::Needs::ALL).map(|_| ExitCode::SUCCESS),
        Task::Demo => demo::run().map(|()| ExitCode::SUCCESS),
        Task::Test(o) => suite::run(o).map(|ok| {
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }),
        Task::Bench(args) => bench::run(&args).map(ExitCode::from),
        Task::Dist { check } => dist::run(check).map(|_| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn parses_tasks_and_test_options() {
        assert_eq!(parse(&args(&["demo"])).unwrap(), Task::Demo);
        assert_eq!(parse(&args(&["setup"])).unwrap(), Task::Setup);
        assert_eq!(parse(&args(&[])).unwrap(), Task::Help);
        let o = suite::Options {
            skip_fuzz: true,
            only_netns: true,
            ..suite::Options::default()
        };
        assert_eq!(
            parse(&args(&["test", "--skip-fuzz", "--only-netns"])).unwrap(),
            Task::Test(o)
        );
        let o = suite::Options {
            skip_bench: true,
            ..suite::Options::default()
        };
        assert_eq!(
            parse(&args(&["test", "--skip-bench"])).unwrap(),
            Task::Test(o)
        );
        assert_eq!(parse(&args(&["test", "--help"])).unwrap(), Task::Help);
    }

    #[test]
    fn bench_passes_every_argument_on_as_is() {
        assert_eq!(parse(&args(&["bench"])).unwrap(), Task::Bench(vec![]));
        assert_eq!(
            parse(&args(&["bench", "--quick"])).unwrap(),
            Task::Bench(args(&["--quick"]))
        );
        let rest = ["--duration", "10", "--repeat", "5", "--anything", "--help"];
        assert_eq!(
            parse(&args(&[&["bench"][..], &rest[..]].concat())).unwrap(),
            Task::Bench(args(&rest))
        );
    }

    #[test]
    fn rejects_unknown_tasks_and_options() {
        assert!(parse(&args(&["benchmark"])).is_err());
        assert!(parse(&args(&["test", "--fast"])).is_err());
        assert!(parse(&args(&["demo", "extra"])).is_err());
    }

    #[test]
    fn target_dir_honours_cargo_target_dir() {
        let root = Path::new("/repo");
        assert_eq!(target_dir_from(None, root), Path::new("/repo/target"));
        assert_eq!(target_dir_from(Some("/t".into()), root), Path::new("/t"));
        assert_eq!(
            target_dir_from(Some("out".into()), root),
            Path::new("/repo/out")
        );
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }
}
