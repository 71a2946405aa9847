//! Running child processes with bounded waits, and reacting to Ctrl-C: xtask's use of
//! the testkit.
//!
//! Every child is started in its own process group, so a Ctrl-C in the terminal reaches
//! only xtask: the signal handler sets a flag, the waiting loop sees it within
//! [`POLL`], stops the child's whole group and returns an error, and the RAII guards of
//! the caller clean up while the error propagates.

use anyhow::{bail, Result};
use portdistrict_testkit::process::find_program;
use portdistrict_testkit::Guard;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

pub(crate) use portdistrict_testkit::process::{
    cargo_bin_dir, check_interrupt, install_interrupt_handler, interrupted, POLL,
};
pub(crate) use portdistrict_testkit::{capture, cmd, describe};

/// Runs `cmd` with inherited stdout/stderr, at most `limit`; fails unless it exits 0.
pub(crate) fn run_streamed(cmd: &mut Command, limit: Duration) -> Result<()> {
    let what = describe(cmd);
    let status = Guard::spawn_group(cmd.stdin(Stdio::null()))?.wait(limit)?;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` at most `limit` and returns its stdout; fails with its output unless it
/// exits 0.
pub(crate) fn output(cmd: &mut Command, limit: Duration) -> Result<String> {
    Ok(portdistrict_testkit::run(cmd, limit)?)
}

/// The path of executable `name` as a shell's `command -v` would find it, also looking
/// in the sbin directories and in cargo's bin directory, which some PATHs lack.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    find_program(
        name,
        &[
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ],
    )
}

/// Appends cargo's bin directory and the sbin directories to this process's PATH (so
/// that children, e.g. the netns tests looking for `boringtun-cli`, find what setup
/// installed there).
pub(crate) fn complete_path() {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&current).collect();
    let extra = cargo_bin_dir()
        .into_iter()
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from));
    for dir in extra {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    if let Ok(joined) = std::env::join_paths(dirs) {
        std::env::set_var("PATH", joined);
    }
}

/// Whether the effective user is root (read from `/proc/self/status`).
pub(crate) fn is_root() -> bool {
    portdistrict_testkit::process::euid() == Some(0)
}

/// Fails with what to do unless running as root.
pub(crate) fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask {what}` must run as root (it installs packages and creates network namespaces): run it again as root");
    }
    Ok(())
}

/// `d` as seconds with one decimal, e.g. `12.3 s`.
pub(crate) fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_fails_on_nonzero_exit_with_the_output() {
        let err = output(
            &mut cmd(&["sh", "-c", "echo broken; exit 1"]),
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert!(format!("{err}").contains("broken"), "{err}");
    }

    #[test]
    fn run_streamed_fails_on_nonzero_exit_and_at_its_limit() {
        run_streamed(&mut cmd(&["true"]), Duration::from_secs(10)).unwrap();
        let err = run_streamed(&mut cmd(&["false"]), Duration::from_secs(10)).unwrap_err();
        assert!(format!("{err}").contains("`false` failed"), "{err}");
        let err = run_streamed(&mut cmd(&["sleep", "30"]), Duration::from_millis(200)).unwrap_err();
        assert!(format!("{err}").contains("did not finish"), "{err}");
    }

    #[test]
    fn which_finds_sh_and_not_nonsense() {
        assert!(which("sh").is_some());
        assert!(which("no-such-program-pd-xtask").is_none());
    }

    #[test]
    fn secs_has_one_decimal() {
        assert_eq!(secs(Duration::from_millis(12345)), "12.3 s");
    }
}
