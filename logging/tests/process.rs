//! `init` in a real process: the test re-runs itself as a child with an environment
//! and reads the child's stderr.

use std::process::Command;

/// Set in the child: what it logs.
const CHILD: &str = "PD_LOGGING_TEST_CHILD";

fn child_stderr(envs: &[(&str, &str)]) -> String {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "child_logs", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env_remove("RUST_LOG")
        .env_remove("LOG_LEVEL")
        .env_remove("JOURNAL_STREAM");
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

/// Runs only as the child: installs the subscriber and logs through both crates.
#[test]
fn child_logs() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    portdistrict_logging::init("pd-test", tracing::Level::INFO);
    log::debug!("log-debug");
    log::warn!("log-warn");
    tracing::debug!("tracing-debug");
    tracing::info!(n = 1, "tracing-info");
}

#[test]
fn defaults_show_info_and_log_crate_events() {
    let err = child_stderr(&[]);
    assert!(err.contains("pd-test WARN: log-warn"), "{err}");
    assert!(err.contains("pd-test INFO: tracing-info n=1"), "{err}");
    assert!(!err.contains("debug"), "{err}");
}

#[test]
fn log_level_debug_shows_debug_of_both_crates() {
    let err = child_stderr(&[("LOG_LEVEL", "debug")]);
    assert!(err.contains("DEBUG: log-debug"), "{err}");
    assert!(err.contains("DEBUG: tracing-debug"), "{err}");
}

#[test]
fn rust_log_wins_over_log_level() {
    let err = child_stderr(&[("LOG_LEVEL", "debug"), ("RUST_LOG", "error")]);
    assert!(!err.contains("log-warn"), "{err}");
    assert!(!err.contains("tracing-info"), "{err}");
    let err = child_stderr(&[("LOG_LEVEL", "silent")]);
    assert!(!err.contains("pd-test"), "{err}");
}

#[test]
fn a_bad_rust_log_is_reported_and_the_default_used() {
    let err = child_stderr(&[("RUST_LOG", "info,[[[")]);
    assert!(err.contains("RUST_LOG="), "{err}");
    assert!(err.contains("tracing-info"), "{err}");
}
