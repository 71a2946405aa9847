//! `pd-bench`: the end-to-end throughput harness.
//!
//! One command builds, for each implementation, two network namespaces joined by a veth
//! pair with the implementation's daemon on each end (or no daemon: bare veth), then
//! measures the same scenarios on each (TCP 1 and 4 streams, UDP packet rates at 1420
//! and 64 bytes, ping idle and under load), repeating them with the implementations
//! interleaved (`for rep { for impl { all scenarios } }`). It reports every column's
//! version, leads with portdistrict's ratios to the current wireguard-go ([`headline`]),
//! then medians with min–max spread, portdistrict's ratio to every other column, the daemons' CPU seconds
//! per GB and peak RSS, as a table on stdout, a JSON file and an SVG chart. Then, for
//! each tunnel, the [`scale`] section: one daemon's memory with no peer and with 1,000
//! peers, and how long `wg setconf` took to configure them.
//!
//! Flow: [`cli`] → [`impls`] (find binaries) → [`versions`] → [`topo`] (namespaces, daemons) →
//! [`measure`] (one sample) → [`scale`] → [`report`] / [`svg`] (aggregate and render). Every
//! resource is a guard in [`proc`]'s registry, torn down on return, Ctrl-C or panic.

mod cli;
mod error;
mod headline;
mod impls;
mod measure;
mod proc;
mod report;
mod scale;
mod stats;
mod svg;
mod topo;
mod usage;
mod versions;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use error::Error;
use impls::Impl;
use measure::Scenario;
use report::{Collected, Config, Failure, Report};
use topo::Topology;

/// Programs every run needs, with their Debian packages.
const TOOLS: [(&str, &str); 5] = [
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("iperf3", "iperf3"),
    ("ping", "iputils-ping"),
    ("wg", "wireguard-tools"),
];

/// A column: implementation, daemon binary, why it is skipped.
type Column = (Impl, Option<PathBuf>, Option<String>);

fn main() -> ExitCode {
    portdistrict_logging::init("pd-bench", tracing::Level::INFO);
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pd-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode, Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match cli::parse(&args, &target_dir())? {
        cli::Command::Help => {
            println!("{}", usage::USAGE);
            return Ok(ExitCode::SUCCESS);
        }
        cli::Command::Run(o) => o,
    };
    proc::require_root()?;
    proc::install_handlers();
    check_tools()?;
    topo::sweep_stale();
    let load_average = load_average();
    let columns = resolve(&opts)?;
    let mut collected = Collected::default();
    let revision = versions::revision();
    for (i, binary, _) in &columns {
        if let Some(v) = versions::describe(*i, binary.as_deref(), &revision) {
            collected.versions.insert(*i, v);
        }
    }
    let mut topos = build_all(&columns, &mut collected)?;
    measure_all(&opts, &mut topos, &mut collected)?;
    for t in topos.iter().flatten() {
        if let Ok(rss) = measure::peak_rss_kib(t) {
            collected.peak_rss.insert(t.implementation, rss);
        }
    }
    drop(topos);
    scale_all(&columns, &mut collected)?;
    let report = Report::build(config(&opts, revision, load_average), columns, collected);
    print!("{}", report.text());
    write(&opts.json, &to_json(&report)?)?;
    write(&opts.svg, &svg::render(&report))?;
    println!("\nwrote {} and {}", opts.json.display(), opts.svg.display());
    Ok(verdict(&opts, &report))
}

/// The cargo target directory this binary was built into (`target/release/pd-bench`
/// → `target`), else `./target`.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_owned()))
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn check_tools() -> Result<(), Error> {
    for (program, package) in TOOLS {
        if proc::find_program(program).is_none() {
            return Err(Error::MissingProgram {
                program: program.to_owned(),
                hint: format!(
                    "run `cargo xtask setup` or `apt-get install --no-install-recommends {package}`"
                ),
            });
        }
    }
    Ok(())
}

/// Finds every selected implementation's binary. A missing peer is an error in quick
/// mode and a skipped column otherwise, except a peer missing from the bench cache
/// (setup warned that it could not fetch it): always a skipped column, shown in the
/// report. A missing dataplane is always an error.
fn resolve(opts: &cli::Options) -> Result<Vec<Column>, Error> {
    let mut out = Vec::new();
    for &i in &opts.impls {
        match i.binary(&opts.dataplane) {
            Ok(b) => out.push((i, b, None)),
            Err(e) if (opts.quick && i.cached().is_none()) || i == Impl::Portdistrict => {
                return Err(e)
            }
            Err(e) => {
                eprintln!("pd-bench: skipping {}: {e}", i.name());
                out.push((i, None, Some(e.to_string())));
            }
        }
    }
    Ok(out)
}

/// One topology per measured column; a failed setup is recorded and leaves `None`.
fn build_all(columns: &[Column], c: &mut Collected) -> Result<Vec<Option<Topology>>, Error> {
    let mut topos = Vec::new();
    for (index, (i, binary, skipped)) in columns.iter().enumerate() {
        if skipped.is_some() {
            continue;
        }
        eprintln!("pd-bench: setting up {}", i.name());
        match Topology::build(*i, binary.as_deref(), index) {
            Ok(t) => topos.push(Some(t)),
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(e) => {
                eprintln!("pd-bench: {} setup failed: {e}", i.name());
                c.failures.push(failure(*i, None, 0, &e));
                topos.push(None);
            }
        }
    }
    Ok(topos)
}

/// `for rep { for implementation { for scenario { sample } } }`. A topology whose
/// daemon died is dropped from the remaining repeats.
fn measure_all(
    opts: &cli::Options,
    topos: &mut [Option<Topology>],
    c: &mut Collected,
) -> Result<(), Error> {
    for rep in 1..=opts.repeat {
        for slot in topos.iter_mut() {
            let Some(t) = slot else { continue };
            for (si, s) in Scenario::ALL.iter().enumerate() {
                match measure::run(t, *s, opts.duration) {
                    Ok(sample) => {
                        progress(rep, opts.repeat, t.implementation, *s, &sample);
                        c.samples
                            .entry((si, t.implementation))
                            .or_default()
                            .push(sample);
                    }
                    Err(Error::Interrupted) => return Err(Error::Interrupted),
                    Err(e) => {
                        eprintln!(
                            "pd-bench: {} {} failed: {e}",
                            t.implementation.name(),
                            s.label()
                        );
                        c.failures
                            .push(failure(t.implementation, Some(*s), rep, &e));
                        if matches!(e, Error::Daemon { .. }) {
                            *slot = None;
                            break;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The scale section for every tunnel column with a binary, one after the other.
fn scale_all(columns: &[Column], c: &mut Collected) -> Result<(), Error> {
    for (index, (i, binary, _)) in columns.iter().enumerate() {
        let Some(binary) = binary else { continue };
        // The same daemon as `portdistrict`: its scale figures would repeat those.
        if *i == Impl::PortdistrictXdpOff {
            continue;
        }
        eprintln!("pd-bench: scale: {} with {} peers", i.name(), scale::PEERS);
        match scale::measure(*i, binary, index) {
            Ok(s) => {
                eprintln!(
                    "[scale] {:<13} RSS {} -> {} KiB (peak {} KiB), wg setconf {} ms",
                    i.name(),
                    s.idle.rss_kib,
                    s.loaded.rss_kib,
                    s.loaded.hwm_kib,
                    report::fmt_num(s.setconf_ms)
                );
                c.scale.push(s);
            }
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(e) => {
                eprintln!("pd-bench: {} scale failed: {e}", i.name());
                c.failures.push(Failure {
                    implementation: i.name(),
                    scenario: Some("scale"),
                    repeat: 0,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(())
}

fn progress(rep: u32, of: u32, i: Impl, s: Scenario, x: &measure::Sample) {
    let mut line = format!(
        "[{rep}/{of}] {:<13} {:<14} {} {}",
        i.name(),
        s.label(),
        report::fmt_num(x.value),
        s.unit()
    );
    if let Some(l) = x.loss_percent {
        line.push_str(&format!(", loss {l:.1}%"));
    }
    if let Some(r) = x.retransmits {
        line.push_str(&format!(", {r:.0} retransmits"));
    }
    if let (true, Some(cpu)) = (s.higher_is_better(), x.cpu_per_gb()) {
        line.push_str(&format!(", daemons {cpu:.2} CPU s/GB"));
    }
    eprintln!("{line}");
}

fn failure(i: Impl, s: Option<Scenario>, repeat: u32, e: &Error) -> Failure {
    Failure {
        implementation: i.name(),
        scenario: s.map(Scenario::id),
        repeat,
        message: e.to_string(),
    }
}

/// `/proc/loadavg`'s first three fields (`?` where unreadable).
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let fields: Vec<&str> = text.split_whitespace().take(3).collect();
    if fields.len() == 3 {
        fields.join(" ")
    } else {
        "?".to_owned()
    }
}

fn config(opts: &cli::Options, revision: String, load_average: String) -> Config {
    Config {
        revision,
        load_average,
        duration_s: opts.duration,
        repeat: opts.repeat,
        quick: opts.quick,
        dataplane: opts.dataplane.clone(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
    }
}

fn to_json(report: &Report) -> Result<String, Error> {
    serde_json::to_string_pretty(report).map_err(|e| Error::Parse {
        what: "the report".to_owned(),
        problem: format!("cannot serialize: {e}"),
        text: String::new(),
    })
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    let io = |action, source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io("cannot create the directory of", e))?;
    }
    std::fs::write(path, text).map_err(|e| io("cannot write", e))
}

/// Quick mode: success iff every scenario has a nonzero figure for every column. Full
/// mode: success iff nothing failed.
fn verdict(opts: &cli::Options, report: &Report) -> ExitCode {
    if opts.quick {
        let missing = report.missing_figures();
        if !missing.is_empty() {
            eprintln!(
                "pd-bench --quick: no nonzero figure for: {}",
                missing.join(", ")
            );
            return ExitCode::FAILURE;
        }
        println!("pd-bench --quick: every scenario ran for every implementation");
        return ExitCode::SUCCESS;
    }
    if !report.failures.is_empty() {
        eprintln!(
            "pd-bench: {} measurement(s) failed (see above)",
            report.failures.len()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
