//! `cargo xtask test`: the whole test suite, as CI runs it. Steps run in order, each
//! with a header and its duration; the first failing step stops the run. The last line
//! is `xtask: N passed, M failed` (plus `, K skipped` when steps were skipped).

use crate::bench;
use crate::guards::TempDir;
use crate::proc::{capture, output, require_root, run_streamed, secs};
use crate::setup::{self, nightly_cargo, Needs};
use anyhow::{bail, Context as _, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// Upper bound for one cargo step (fresh builds on 2 cores included).
const STEP_LIMIT: Duration = Duration::from_secs(40 * 60);
/// Upper bound for one fuzz target's run (`-max_total_time` plus start-up).
const FUZZ_RUN_LIMIT: Duration = Duration::from_secs(5 * 60);
/// How long each fuzz target runs.
const FUZZ_SECONDS: u32 = 8;
/// The fuzz crate, relative to the workspace root.
const FUZZ_DIR: &str = "fuzz";

/// Options of `cargo xtask test`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Options {
    /// Leave out the fuzz smoke.
    pub(crate) skip_fuzz: bool,
    /// Leave out the netns suite.
    pub(crate) skip_netns: bool,
    /// Leave out the pd-bench `--quick` run.
    pub(crate) skip_bench: bool,
    /// Run only setup, the release build and the netns suite.
    pub(crate) only_netns: bool,
}

/// One step of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Setup,
    Fmt,
    Clippy,
    Build,
    Unit,
    Fuzz,
    Netns,
    Dist,
    Bench,
}

const ALL_STEPS: [Step; 9] = [
    Step::Setup,
    Step::Fmt,
    Step::Clippy,
    Step::Build,
    Step::Unit,
    Step::Fuzz,
    Step::Netns,
    Step::Dist,
    Step::Bench,
];

impl Step {
    fn title(self) -> &'static str {
        match self {
            Step::Setup => "setup (tools the suite runs)",
            Step::Fmt => "cargo fmt --all -- --check",
            Step::Clippy => "cargo clippy --workspace --all-targets -- -D warnings",
            Step::Build => "cargo build --release --workspace",
            Step::Unit => "cargo test --workspace --exclude portdistrict-netns-tests",
            Step::Fuzz => "fuzz smoke (cargo +nightly fuzz run, each target)",
            Step::Netns => "netns suite (cargo test --profile netns -p portdistrict-netns-tests)",
            Step::Dist => "cargo xtask dist --check (the Debian package, lintian, install and purge in a chroot)",
            Step::Bench => "pd-bench --quick (every scenario runs; numbers are not checked)",
        }
    }
}

/// The steps `o` selects, in order.
fn plan(o: Options) -> Result<Vec<Step>> {
    if o.only_netns && o.skip_netns {
        bail!("--only-netns and --skip-netns contradict each other");
    }
    if o.only_netns {
        return Ok(vec![Step::Setup, Step::Build, Step::Netns]);
    }
    Ok(ALL_STEPS
        .into_iter()
        .filter(|&s| match s {
            Step::Fuzz => !o.skip_fuzz,
            Step::Netns => !o.skip_netns,
            Step::Bench => !o.skip_bench,
            _ => true,
        })
        .collect())
}

/// The closing line: `xtask: N passed, M failed[, K skipped]`.
fn summary(passed: usize, failed: usize, skipped: usize) -> String {
    let mut s = format!("xtask: {passed} passed, {failed} failed");
    if skipped > 0 {
        s.push_str(&format!(", {skipped} skipped"));
    }
    s
}

/// Runs the suite; returns whether every selected step passed.
pub(crate) fn run(o: Options) -> Result<bool> {
    require_root("test")?;
    let steps = plan(o)?;
    let skipped_by_options = ALL_STEPS.len() - steps.len();
    let start = Instant::now();
    let mut results: Vec<(Step, Duration, bool)> = Vec::new();
    let mut ready = setup::Ready::default();
    let mut warnings = Vec::new();
    for (i, &step) in steps.iter().enumerate() {
        println!("\n==> [{}/{}] {}", i + 1, steps.len(), step.title());
        if let Some(w) = skipped_for(step, &ready) {
            println!("<== [{}/{}] {:?}: {w}", i + 1, steps.len(), step);
            warnings.push(w);
            continue;
        }
        let t = Instant::now();
        let outcome = run_step(step, &steps).map(|r| {
            if let Some(r) = r {
                warnings.extend(r.current_wireguard_go_unavailable.clone());
                ready = r;
            }
        });
        let took = t.elapsed();
        match &outcome {
            Ok(()) => println!(
                "<== [{}/{}] {:?}: ok in {}",
                i + 1,
                steps.len(),
                step,
                secs(took)
            ),
            Err(e) => println!(
                "<== [{}/{}] {:?}: FAILED after {}: {e:#}",
                i + 1,
                steps.len(),
                step,
                secs(took)
            ),
        }
        results.push((step, took, outcome.is_ok()));
        if outcome.is_err() {
            break;
        }
    }
    println!("\nsteps:");
    for (step, took, ok) in &results {
        println!(
            "  {:<8} {:<6} {:>8}",
            format!("{step:?}"),
            if *ok { "ok" } else { "FAILED" },
            secs(*took)
        );
    }
    println!("  total {}", secs(start.elapsed()));
    for w in &warnings {
        println!("{w}");
    }
    let passed = results.iter().filter(|r| r.2).count();
    let failed = results.len() - passed;
    let skipped = skipped_by_options + steps.len() - results.len();
    println!("{}", summary(passed, failed, skipped));
    Ok(failed == 0)
}

/// The warning for `step` when setup could not make it ready (it is then skipped).
fn skipped_for(step: Step, ready: &setup::Ready) -> Option<String> {
    match (step, &ready.fuzz_unavailable) {
        (Step::Fuzz, Some(why)) => Some(format!("WARNING: the fuzz smoke was SKIPPED: {why}")),
        _ => None,
    }
}

/// Runs `step`; setup returns what it could not make ready.
fn run_step(step: Step, steps: &[Step]) -> Result<Option<setup::Ready>> {
    match step {
        Step::Setup => return setup::run(needs(steps)).map(Some),
        Step::Fmt => cargo(&["fmt", "--all", "--", "--check"]),
        Step::Clippy => cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
        Step::Build => cargo(&["build", "--release", "--workspace"]),
        Step::Unit => cargo(&[
            "test",
            "--workspace",
            "--exclude",
            "portdistrict-netns-tests",
        ]),
        Step::Fuzz => fuzz_smoke(),
        Step::Netns => netns(),
        Step::Dist => crate::dist::package(true).map(|_| ()),
        Step::Bench => quick_bench(),
    }
    .map(|()| None)
}

/// What setup installs for `steps`: the peers for the netns suite and pd-bench, the
/// fuzz tools for the fuzz smoke.
fn needs(steps: &[Step]) -> Needs {
    Needs {
        peers: steps.contains(&Step::Netns) || steps.contains(&Step::Bench),
        fuzz: steps.contains(&Step::Fuzz),
    }
}

fn cargo(args: &[&str]) -> Result<()> {
    run_streamed(&mut crate::cargo(args), STEP_LIMIT)
}

/// The netns suite's cargo command. `--profile netns` (the workspace's Cargo.toml):
/// release optimizations without cross-crate LTO. Its test binaries cannot reuse the
/// release build's dependencies, whatever the flags: tests are always built with
/// `panic = "unwind"`, the release build with `"abort"` (cargo's unit graph: 169 of the
/// 205 units this step adds differ from the release build's in `panic` alone, 6 in
/// `panic` and features, 30 are the suite's own targets). What the profile saves is a
/// thin-LTO link per test binary.
const NETNS_TEST: [&str; 7] = [
    "test",
    "--profile",
    "netns",
    "-p",
    "portdistrict-netns-tests",
    "--",
    "--test-threads=2",
];

fn netns() -> Result<()> {
    let binary = crate::target_dir().join("release/portdistrict-dataplane");
    let binary = binary.canonicalize().with_context(|| {
        format!(
            "{} missing: the release build did not produce it",
            binary.display()
        )
    })?;
    println!("PD_DATAPLANE={}", binary.display());
    let mut c = crate::cargo(&NETNS_TEST);
    c.env("PD_DATAPLANE", &binary);
    run_streamed(&mut c, STEP_LIMIT)
}

/// pd-bench `--quick` on the release build: it fails unless every scenario gave a
/// figure for every implementation.
fn quick_bench() -> Result<()> {
    let status = bench::pd_bench(&["--quick".to_owned()])?;
    if !status.success() {
        bail!("pd-bench --quick failed ({status})");
    }
    Ok(())
}

/// Builds every fuzz target once, then runs each for [`FUZZ_SECONDS`] on a copy of its
/// checked-in corpus (the copy receives the new inputs, so the repo stays unchanged).
fn fuzz_smoke() -> Result<()> {
    let dir = crate::workspace_root().join(FUZZ_DIR);
    let listed = output(
        nightly_cargo(&["fuzz", "list"]).current_dir(&dir),
        STEP_LIMIT,
    )?;
    let targets: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if targets.is_empty() {
        bail!("`cargo +nightly fuzz list` in {FUZZ_DIR} lists no targets");
    }
    println!("fuzz targets: {}", targets.join(" "));
    run_streamed(
        nightly_cargo(&["fuzz", "build"]).current_dir(&dir),
        STEP_LIMIT,
    )?;
    let max_time = format!("-max_total_time={FUZZ_SECONDS}");
    for target in targets {
        let corpus = TempDir::new(&format!("pd-fuzz-{}-{target}", std::process::id()))?;
        let copied = copy_files(&dir.join("corpus").join(target), corpus.path())?;
        println!("--- fuzz {target}: {copied} corpus inputs, {FUZZ_SECONDS} s");
        let corpus_arg = corpus.path().to_string_lossy().into_owned();
        let mut run = nightly_cargo(&["fuzz", "run", target, &corpus_arg, "--", &max_time]);
        let out = capture(run.current_dir(&dir), FUZZ_RUN_LIMIT)?;
        let text = format!("{}{}", out.stdout, out.stderr);
        if !out.status.success() {
            println!("{}", tail(&text, 80));
            bail!("fuzz target {target} failed ({}); the input is kept in {FUZZ_DIR}/artifacts/{target}/", out.status);
        }
        let done = text
            .lines()
            .rev()
            .find(|l| l.starts_with("Done "))
            .unwrap_or("finished");
        println!("{target}: {done}");
    }
    Ok(())
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Copies the regular files of `from` (if it exists) into `to`; how many.
fn copy_files(from: &Path, to: &Path) -> Result<usize> {
    if !from.is_dir() {
        return Ok(0);
    }
    let mut n = 0;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan_runs_everything_in_order() {
        assert_eq!(plan(Options::default()).unwrap(), ALL_STEPS);
        assert_eq!(ALL_STEPS.last(), Some(&Step::Bench));
        assert_eq!(ALL_STEPS[ALL_STEPS.len() - 2], Step::Dist);
        assert_eq!(ALL_STEPS[ALL_STEPS.len() - 3], Step::Netns);
    }

    #[test]
    fn skips_and_only_netns_select_steps() {
        let o = Options {
            skip_fuzz: true,
            skip_netns: true,
            ..Options::default()
        };
        assert_eq!(
            plan(o).unwrap(),
            [
                Step::Setup,
                Step::Fmt,
                Step::Clippy,
                Step::Build,
                Step::Unit,
                Step::Dist,
                Step::Bench
            ]
        );
        let o = Options {
            skip_bench: true,
            ..Options::default()
        };
        assert_eq!(plan(o).unwrap(), ALL_STEPS[..8]);
        let o = Options {
            only_netns: true,
            ..Options::default()
        };
        assert_eq!(plan(o).unwrap(), [Step::Setup, Step::Build, Step::Netns]);
        assert!(plan(Options {
            only_netns: true,
            skip_netns: true,
            ..Options::default()
        })
        .is_err());
    }

    #[test]
    fn a_fuzz_smoke_setup_could_not_prepare_is_skipped_with_a_warning() {
        let ready = setup::Ready {
            fuzz_unavailable: Some("no nightly toolchain: rustup could not install it".into()),
            ..setup::Ready::default()
        };
        let w = skipped_for(Step::Fuzz, &ready).expect("skipped");
        assert!(
            w.starts_with("WARNING") && w.contains("rustup could not"),
            "{w}"
        );
        for step in ALL_STEPS.into_iter().filter(|&s| s != Step::Fuzz) {
            assert_eq!(skipped_for(step, &ready), None, "{step:?}");
        }
        assert_eq!(skipped_for(Step::Fuzz, &setup::Ready::default()), None);
    }

    #[test]
    fn setup_installs_what_the_selected_steps_run() {
        assert_eq!(needs(&ALL_STEPS), Needs::ALL);
        let no_netns = plan(Options {
            skip_netns: true,
            skip_fuzz: true,
            ..Options::default()
        })
        .unwrap();
        assert_eq!(needs(&no_netns), Needs::BENCH);
        let neither = plan(Options {
            skip_netns: true,
            skip_bench: true,
            ..Options::default()
        })
        .unwrap();
        assert!(!needs(&neither).peers && needs(&neither).fuzz);
    }

    #[test]
    fn the_netns_suite_builds_with_the_netns_profile_and_runs_every_test() {
        assert_eq!(NETNS_TEST[..3], ["test", "--profile", "netns"]);
        // No test filter and no --lib/--test selection: every test of the package runs.
        let before_args: Vec<&str> = NETNS_TEST
            .iter()
            .copied()
            .take_while(|a| *a != "--")
            .collect();
        assert_eq!(
            before_args,
            [
                "test",
                "--profile",
                "netns",
                "-p",
                "portdistrict-netns-tests"
            ]
        );
        let manifest = std::fs::read_to_string(crate::workspace_root().join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains("[profile.netns]\ninherits = \"release\""),
            "the profile is defined"
        );
    }

    #[test]
    fn summary_is_the_plain_closing_line() {
        assert_eq!(summary(7, 0, 0), "xtask: 7 passed, 0 failed");
        assert_eq!(summary(3, 1, 3), "xtask: 3 passed, 1 failed, 3 skipped");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[test]
    fn copy_files_copies_regular_files_only() {
        let from = TempDir::new(&format!("pd-xtask-test-from-{}", std::process::id())).unwrap();
        let to = TempDir::new(&format!("pd-xtask-test-to-{}", std::process::id())).unwrap();
        std::fs::write(from.path().join("a"), b"1").unwrap();
        std::fs::create_dir(from.path().join("sub")).unwrap();
        assert_eq!(copy_files(from.path(), to.path()).unwrap(), 1);
        assert_eq!(std::fs::read(to.path().join("a")).unwrap(), b"1");
        assert_eq!(
            copy_files(&from.path().join("missing"), to.path()).unwrap(),
            0
        );
    }
}
