//! `cargo xtask bench [PD_BENCH_ARGS...]`: the end-to-end throughput harness
//! (`benches/harness/`, crate `pd-bench`) with everything it needs: setup (Debian tools
//! and the peers), a release build of the dataplane and of pd-bench, then pd-bench with
//! our dataplane and the caller's arguments, its output streamed and its exit code kept.
//! The test suite's last step runs [`pd_bench`] with `--quick`.

use crate::proc::{describe, require_root, run_streamed};
use crate::setup::{self, Needs};
use anyhow::{Context as _, Result};
use portdistrict_testkit::Guard;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

/// Upper bound for the release build (fresh builds on 2 cores included).
const BUILD_LIMIT: Duration = Duration::from_secs(40 * 60);
/// How long pd-bench gets to unwind (namespaces, daemons) after SIGTERM.
const UNWIND_GRACE: Duration = Duration::from_secs(60);
/// Columns pd-bench measures when `--impl` does not say (bare veth, portdistrict with
/// and without XDP, two wireguard-go builds, boringtun, gotatun).
const ALL_IMPLS: u64 = 7;
/// Measurements per column and repeat that last `--duration` (TCP 1 and 4 streams, UDP
/// 1420 and 64 bytes).
const TIMED_SCENARIOS: u64 = 4;
/// Seconds per column and repeat besides the timed runs (iperf3 start-up, pings, the
/// loaded ping's TCP stream), generously.
const FIXED_PER_REPEAT: u64 = 15;
/// Seconds to build and tear down one column's namespaces and daemons, generously.
const PER_COLUMN: u64 = 30;
/// The largest `--duration` and `--repeat` pd-bench accepts.
const MAX_NUMBER: u64 = 3600;
/// Slack on top of twice the estimate.
const SLACK: Duration = Duration::from_secs(10 * 60);

/// Runs the whole task; returns pd-bench's exit code.
pub(crate) fn run(args: &[String]) -> Result<u8> {
    require_root("bench")?;
    setup::run(Needs::BENCH)?;
    build()?;
    let status = pd_bench(args)?;
    Ok(exit_code(status))
}

/// `cargo build --release -p portdistrict-dataplane -p pd-bench`.
fn build() -> Result<()> {
    let mut c = crate::cargo(&[
        "build",
        "--release",
        "-p",
        "portdistrict-dataplane",
        "-p",
        "pd-bench",
    ]);
    run_streamed(&mut c, BUILD_LIMIT)
}

/// Runs the release pd-bench with our release dataplane and `args` (after ours, so a
/// `--dataplane` of the caller wins), output streamed; waits at most [`limit`] of
/// `args`. Returns its exit status.
pub(crate) fn pd_bench(args: &[String]) -> Result<ExitStatus> {
    let release = crate::target_dir().join("release");
    let mut c = command(
        &existing(&release, "pd-bench")?,
        &existing(&release, "portdistrict-dataplane")?,
        args,
    );
    let what = describe(&c);
    println!("{what}");
    // On Ctrl-C or timeout it gets SIGTERM and UNWIND_GRACE to remove its namespaces
    // and daemons before its group is killed (its next run sweeps what is left then).
    let mut child = Guard::spawn_group(c.stdin(Stdio::null()))?.with_grace(UNWIND_GRACE);
    Ok(child.wait(limit(args))?)
}

/// The absolute path of `release/name` (a binary named like its crate), or what is
/// wrong.
fn existing(release: &Path, name: &str) -> Result<PathBuf> {
    let path = release.join(name);
    path.canonicalize().with_context(|| {
        format!(
            "{} missing: build it with `cargo build --release -p {name}`",
            path.display()
        )
    })
}

/// `PD_BENCH --dataplane DATAPLANE ARGS...`, run from the workspace root.
fn command(pd_bench: &Path, dataplane: &Path, args: &[String]) -> Command {
    let mut c = Command::new(pd_bench);
    c.arg("--dataplane")
        .arg(dataplane)
        .args(args)
        .current_dir(crate::workspace_root());
    c
}

/// How long pd-bench may run with `args`: twice an estimate from `--quick`,
/// `--duration`, `--repeat` and `--impl` (pd-bench's defaults when absent or not
/// understood; pd-bench itself rejects bad values), plus [`SLACK`].
fn limit(args: &[String]) -> Duration {
    let value = |flag: &str| {
        args.iter()
            .rposition(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    // pd-bench takes 1..=3600; clamping keeps the arithmetic small for any input.
    let number = |flag: &str| {
        value(flag)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|n| n.clamp(1, MAX_NUMBER))
    };
    let quick = args.iter().any(|a| a == "--quick");
    let (duration, repeat) = if quick { (1, 1) } else { (5, 3) };
    let duration = number("--duration").unwrap_or(duration);
    let repeat = number("--repeat").unwrap_or(repeat);
    let impls = value("--impl").map_or(ALL_IMPLS, |l| l.split(',').count() as u64);
    let per_repeat = TIMED_SCENARIOS * duration + FIXED_PER_REPEAT;
    let estimate = impls * (PER_COLUMN + repeat * per_repeat);
    Duration::from_secs(2 * estimate) + SLACK
}

/// The exit code to hand on: the child's, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt as _;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn command_puts_our_dataplane_before_the_callers_arguments() {
        let c = command(
            Path::new("/t/release/pd-bench"),
            Path::new("/t/release/portdistrict-dataplane"),
            &args("--quick --impl bare-veth"),
        );
        assert_eq!(c.get_program(), "/t/release/pd-bench");
        let argv: Vec<_> = c.get_args().collect();
        assert_eq!(
            argv,
            [
                "--dataplane",
                "/t/release/portdistrict-dataplane",
                "--quick",
                "--impl",
                "bare-veth"
            ]
        );
        assert_eq!(c.get_current_dir(), Some(crate::workspace_root().as_path()));
    }

    #[test]
    fn limit_follows_duration_repeat_and_impls() {
        let secs = |s: &str| limit(&args(s)).as_secs();
        // Defaults: 7 columns x (30 + 3 x (4 x 5 + 15)) = 945 s, twice, plus 600.
        assert_eq!(secs(""), 2 * 945 + 600);
        // --quick: 7 x (30 + 1 x (4 + 15)) = 343.
        assert_eq!(secs("--quick"), 2 * 343 + 600);
        // 2 columns x (30 + 5 x (40 + 15)) = 610.
        assert_eq!(
            secs("--duration 10 --repeat 5 --impl portdistrict,gotatun"),
            2 * 610 + 600
        );
        // The last occurrence counts, as in pd-bench; nonsense falls back to defaults.
        assert_eq!(secs("--repeat 1 --repeat 3"), secs(""));
        assert_eq!(secs("--duration x"), secs(""));
        assert!(secs("--duration 3600 --repeat 3600") > 3600 * 3600);
        // Out-of-range numbers (pd-bench rejects them) must not overflow here.
        let huge = "--duration 18446744073709551615 --repeat 18446744073709551615";
        assert_eq!(secs(huge), secs("--duration 3600 --repeat 3600"));
    }

    #[test]
    fn exit_code_is_the_childs_or_128_plus_the_signal() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 128 + 9);
    }

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let err = existing(Path::new("/nonexistent-pd-xtask"), "pd-bench").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("cargo build --release -p pd-bench"), "{msg}");
    }
}
