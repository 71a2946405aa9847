//! The boot unit we ship (`dist/systemd/portdistrict-killswitch.service`): ordered
//! before the network, a oneshot that stays active, running `use restore`; and
//! `systemd-analyze verify` finds nothing to say about it (with the CLI built here in
//! place of the installed path). Skipped, saying why, where systemd-analyze is absent.

use std::path::{Path, PathBuf};
use std::process::Command;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/systemd/portdistrict-killswitch.service")
}

fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .flat_map(str::split_whitespace)
        .collect()
}

#[test]
fn the_unit_runs_use_restore_before_the_network() {
    let unit = std::fs::read_to_string(unit_path()).expect("the unit file");
    assert!(values(&unit, "Before").contains(&"network-pre.target"));
    assert!(values(&unit, "Wants").contains(&"network-pre.target"));
    assert_eq!(values(&unit, "Type"), ["oneshot"]);
    assert_eq!(values(&unit, "RemainAfterExit"), ["yes"]);
    assert_eq!(values(&unit, "DefaultDependencies"), ["no"]);
    let exec = values(&unit, "ExecStart");
    assert!(exec[0].ends_with("/portdistrict"), "{exec:?}");
    assert_eq!(exec[1..], ["use", "restore"]);
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED: systemd-analyze is not installed, the unit file is not verified");
        return;
    };
    assert!(out.status.success());
    // verify insists that ExecStart's program exists: point it at the CLI built here.
    let dir = std::env::temp_dir().join(format!("pd-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let unit = std::fs::read_to_string(unit_path()).expect("the unit file");
    let file = dir.join("portdistrict-killswitch.service");
    std::fs::write(
        &file,
        unit.replace(
            "/usr/local/bin/portdistrict",
            env!("CARGO_BIN_EXE_portdistrict"),
        ),
    )
    .expect("write the unit copy");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&file)
        .output()
        .expect("systemd-analyze verify");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}
