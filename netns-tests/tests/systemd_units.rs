//! The systemd units in `dist/systemd/` and the binaries' side of `Type=notify`.
//!
//! - every unit passes `systemd-analyze verify` without a word (the unit is copied
//!   with `/usr/local/bin/` rewritten to the binaries under test, which verify
//!   requires to exist; the template is verified as an instance);
//! - every unit's exposure (`systemd-analyze security --offline=yes`) is at most 5.0;
//! - the dataplane in the foreground, with `NOTIFY_SOCKET` naming a datagram socket
//!   the test bound, sends `READY=1` only once its interface exists and its UAPI
//!   socket answers, and `STOPPING=1` on SIGTERM;
//! - so does `exit serve`, once its plan, tunnel and control socket are in place
//!   (`STATUS=exit node up on IFNAME, 0 consumers`), and it takes the plan back after
//!   `STOPPING=1`.
//!
//! (portdistrictd's READY=1 and STOPPING=1 are checked across a restart in
//! `control_restart.rs`.)

use portdistrict_netns_tests::{
    next_notification, run, uut_binary, wait_until, ChildGuard, CliMachine, Netns, TempDir, Veth,
};
use std::io::{Read as _, Write as _};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const ANALYZE: &str = "/usr/bin/systemd-analyze";
const MAX_EXPOSURE: f64 = 5.0;

/// The unit files, by name.
fn units() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/systemd");
    let mut units: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "service"))
        .collect();
    units.sort();
    assert!(units.len() >= 4, "units in {}: {units:?}", dir.display());
    units
}

/// Whether systemd-analyze is here; says so visibly when it is not.
fn have_analyze() -> bool {
    let here = Path::new(ANALYZE).exists();
    if !here {
        eprintln!(
            "SKIPPED: {ANALYZE} is missing (apt-get install systemd; `cargo xtask setup` does)"
        );
    }
    here
}

fn analyze(args: &[&str]) -> (bool, String) {
    let out = Command::new(ANALYZE)
        .args(args)
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "")
        .stdin(Stdio::null())
        .output()
        .expect("systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_unit_verifies_clean_against_the_built_binaries() {
    if !have_analyze() {
        return;
    }
    let bin_dir = uut_binary()
        .parent()
        .expect("binary dir")
        .to_string_lossy()
        .into_owned();
    let tmp = TempDir::new("units");
    for unit in units() {
        let name = unit.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&unit).unwrap();
        assert!(text.contains("Type="), "{name}: no Type=");
        let rewritten = text.replace("/usr/local/bin/", &format!("{bin_dir}/"));
        // A template is verified as an instance.
        let name = name.replace("@.service", "@pdtest0.service");
        let copy = tmp.path().join(&name);
        std::fs::write(&copy, rewritten).unwrap();
        let (ok, out) = analyze(&["verify", "--man=no", &copy.to_string_lossy()]);
        assert!(
            ok && out.trim().is_empty(),
            "systemd-analyze verify {name}:\n{out}"
        );
    }
}

/// The figure on the line `→ Overall exposure level for UNIT: 2.9 OK`.
fn exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    line.split_whitespace().find_map(|w| w.parse().ok())
}

#[test]
fn every_unit_is_exposed_at_most_5() {
    assert_eq!(
        exposure("→ Overall exposure level for x.service: 2.9 OK :-)"),
        Some(2.9)
    );
    if !have_analyze() {
        return;
    }
    for unit in units() {
        let (_, out) = analyze(&["security", "--offline=yes", &unit.to_string_lossy()]);
        let e = exposure(&out).unwrap_or_else(|| panic!("no exposure for {unit:?}:\n{out}"));
        eprintln!("{}: exposure {e}", unit.display());
        assert!(
            e <= MAX_EXPOSURE,
            "{}: exposure {e} > {MAX_EXPOSURE}:\n{out}",
            unit.display()
        );
    }
}

/// `get=1` over the UAPI socket answers `errno=0`.
fn uapi_answers(path: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(path) else {
        return false;
    };
    let mut text = String::new();
    s.write_all(b"get=1\n\n").is_ok()
        && s.shutdown(std::net::Shutdown::Write).is_ok()
        && s.read_to_string(&mut text).is_ok()
        && text.contains("errno=0")
}

#[test]
fn the_dataplane_is_ready_once_uapi_answers_and_says_stopping_on_sigterm() {
    portdistrict_netns_tests::require_root();
    let ns = Netns::new("sd-dp");
    let dir = TempDir::new("sd-notify");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    let ifname = portdistrict_netns_tests::unique_ifname("pdn");
    let uapi = PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
    let mut cmd = ns.command(&[&uut_binary().to_string_lossy(), "--foreground", &ifname]);
    cmd.env("NOTIFY_SOCKET", &sock_path).stdin(Stdio::null());
    let mut dp = ChildGuard::spawn("dataplane", &mut cmd);

    let first = next_notification(&sock, Duration::from_secs(10));
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    assert!(
        first.contains(&format!("STATUS=serving {ifname}")),
        "{first:?}"
    );
    // Ready means serving: no wait before the interface and UAPI are used.
    assert!(
        uapi_answers(&uapi),
        "UAPI {} right after READY=1",
        uapi.display()
    );
    run(&["ip", "-n", ns.name(), "link", "show", &ifname]);

    run(&["kill", "-TERM", &dp.pid().to_string()]);
    let last = next_notification(&sock, Duration::from_secs(10));
    assert!(last.lines().any(|l| l == "STOPPING=1"), "{last:?}");
    let status = dp
        .wait_timeout(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(50), || !uapi
            .exists()),
        "{} left behind",
        uapi.display()
    );
}

/// Whether the provider's `portdistrict_exit` table is in place in `ns`.
fn exit_table(ns: &Netns) -> bool {
    ns.try_exec(&["nft", "list", "table", "inet", "portdistrict_exit"])
        .status
        .success()
}

#[test]
fn exit_serve_is_ready_once_it_serves_and_says_stopping_on_sigterm() {
    portdistrict_netns_tests::require_root();
    let provider = CliMachine::with_run_dir(
        Netns::new("sd-provider"),
        TempDir::new("sd-provider-state"),
        TempDir::new("sd-provider-run"),
    );
    let internet = Netns::new("sd-internet");
    let uplink = Veth::new(&provider.ns, &internet, 93);
    let dir = TempDir::new("sd-exit-notify");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    let ifname = portdistrict_netns_tests::unique_ifname("pdx");
    let upstream = uplink.v4(2).to_string();
    let mut cmd = provider.command(
        "portdistrict",
        &[
            "exit",
            "serve",
            "--uplink",
            uplink.a_name(),
            "--interface",
            &ifname,
            "--dns-upstream",
            &upstream,
        ],
    );
    cmd.env("NOTIFY_SOCKET", &sock_path);
    let mut serve = ChildGuard::spawn("exit serve", &mut cmd);

    let first = next_notification(&sock, Duration::from_secs(30));
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    assert!(
        first.contains(&format!("STATUS=exit node up on {ifname}, 0 consumers")),
        "{first:?}"
    );
    // Ready means serving: the plan, the tunnel and the control socket are there.
    assert!(
        exit_table(&provider.ns),
        "the exit table right after READY=1"
    );
    run(&["ip", "-n", provider.ns.name(), "link", "show", &ifname]);
    assert!(
        provider.run_dir().join("exit.sock").exists(),
        "control socket"
    );

    run(&["kill", "-TERM", &serve.pid().to_string()]);
    let last = next_notification(&sock, Duration::from_secs(10));
    assert!(last.lines().any(|l| l == "STOPPING=1"), "{last:?}");
    let status = serve
        .wait_timeout(Duration::from_secs(15))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(!exit_table(&provider.ns), "the plan is taken back");
}
