use super::*;
use std::os::unix::process::ExitStatusExt as _;

fn alive(pid: u32) -> bool {
    // A reaped child's /proc entry is gone; a zombie's status says Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn effective_uid_is_the_second_uid_field() {
    let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t5\t5\t5\t5\n";
    assert_eq!(effective_uid(status), Some(0));
    assert_eq!(effective_uid("Uid:\t0\t1000\t0\t0\n"), Some(1000));
    assert_eq!(effective_uid("Name:\tx\n"), None);
    assert!(euid().is_some());
}

#[test]
fn capture_and_run() {
    let out = capture(
        &mut cmd(&["sh", "-c", "echo hi; echo err >&2; exit 3"]),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str(), out.status.code()),
        ("hi\n", "err\n", Some(3))
    );
    let e = run(
        &mut cmd(&["sh", "-c", "echo boom; exit 1"]),
        Duration::from_secs(10),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Failed { .. }), "{e}");
    assert!(e.to_string().contains("boom"), "{e}");
    assert_eq!(
        run(&mut cmd(&["echo", "ok"]), Duration::from_secs(10)).unwrap(),
        "ok\n"
    );
    let e = run(&mut cmd(&["no-such-program-pdtk"]), Duration::from_secs(1)).unwrap_err();
    assert!(matches!(e, Error::Spawn { .. }), "{e}");
}

#[test]
fn a_hanging_command_is_stopped_at_its_limit() {
    let start = Instant::now();
    let e = capture(&mut cmd(&["sleep", "30"]), Duration::from_millis(200)).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("did not finish"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_group_guard_terminates_with_sigterm_first() {
    // The shell traps SIGTERM and exits 7: proof that SIGTERM came before SIGKILL.
    let mut g = Guard::spawn_group(&mut cmd(&[
        "sh",
        "-c",
        "trap 'exit 7' TERM; while :; do sleep 0.05; done",
    ]))
    .unwrap();
    let pid = g.pid();
    assert!(registry::is_registered(&Resource::Group(pid)));
    std::thread::sleep(Duration::from_millis(200));
    g.terminate(Duration::from_secs(5));
    assert_eq!(g.try_status().and_then(|s| s.code()), Some(7));
    assert!(!registry::is_registered(&Resource::Group(pid)));
}

#[test]
fn sigkill_follows_when_sigterm_is_ignored() {
    let mut g = Guard::spawn_group(&mut cmd(&[
        "sh",
        "-c",
        "trap '' TERM; while :; do sleep 0.05; done",
    ]))
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    g.terminate(Duration::from_millis(300));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(g.try_status().and_then(|s| s.signal()), Some(libc::SIGKILL));
}

#[test]
fn a_dropped_guard_leaves_no_process() {
    let g = Guard::spawn("sleeper", &mut cmd(&["sleep", "30"])).unwrap();
    let pid = g.pid();
    assert!(registry::is_registered(&Resource::Process(pid)));
    assert!(alive(pid));
    drop(g);
    assert!(!alive(pid));
    assert!(!registry::is_registered(&Resource::Process(pid)));
    let g = Guard::spawn_group(&mut cmd(&["sh", "-c", "sleep 30 & wait"])).unwrap();
    let pid = g.pid();
    std::thread::sleep(Duration::from_millis(100));
    drop(g);
    assert!(!alive(pid));
}

#[test]
fn wait_timeout_and_wait() {
    let mut g = Guard::spawn("quick", &mut cmd(&["sh", "-c", "exit 4"])).unwrap();
    assert_eq!(
        g.wait_timeout(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(4)
    );
    let mut g = Guard::spawn("slow", &mut cmd(&["sleep", "30"])).unwrap();
    assert!(g.wait_timeout(Duration::from_millis(50)).is_none());
    let e = g.wait(Duration::from_millis(50)).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(!g.running());
}

#[test]
fn run_cleanup_reports_success_and_bounds_hangs() {
    assert!(run_cleanup(&["true"], Duration::from_secs(10)));
    assert!(!run_cleanup(&["false"], Duration::from_secs(10)));
    assert!(!run_cleanup(
        &["no-such-program-pdtk"],
        Duration::from_secs(1)
    ));
    let start = Instant::now();
    assert!(!run_cleanup(&["sleep", "30"], Duration::from_millis(100)));
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn wait_until_polls_to_the_deadline() {
    assert!(wait_until(Duration::ZERO, Duration::from_millis(1), || {
        true
    }));
    let start = Instant::now();
    let mut calls = 0;
    let ok = wait_until(Duration::from_millis(50), Duration::from_millis(10), || {
        calls += 1;
        false
    });
    assert!(!ok);
    assert!(start.elapsed() >= Duration::from_millis(50));
    assert!(calls >= 3, "polled {calls} times");
    let mut n = 0;
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(1),
        || {
            n += 1;
            n == 5
        }
    ));
    assert_eq!(n, 5);
}

#[test]
fn wait_for_passes_errors_and_gives_up() {
    let r: Result<bool, Error> = wait_for(Duration::from_secs(5), POLL, || Err(Error::Interrupted));
    assert!(matches!(r, Err(Error::Interrupted)));
    let r: Result<bool, Error> = wait_for(Duration::from_millis(50), POLL, || Ok(false));
    assert!(!r.unwrap());
    let mut n = 0;
    let r: Result<bool, Error> = wait_for(Duration::from_secs(5), Duration::from_millis(1), || {
        n += 1;
        Ok(n == 3)
    });
    assert!(r.unwrap());
}

#[test]
fn finds_programs() {
    assert!(find_program("sh", &[]).is_some());
    assert!(find_program("no-such-program-pdtk", &["/usr/sbin"]).is_none());
}

#[test]
fn describe_joins_the_command_line() {
    assert_eq!(
        describe(&cmd(&["ip", "netns", "add", "x"])),
        "ip netns add x"
    );
}

#[test]
fn run_with_input_feeds_stdin_and_reports_failure() {
    let limit = Duration::from_secs(10);
    let out = run_with_input(&mut cmd(&["sh", "-c", "tr a-z A-Z"]), "nat\n", limit).unwrap();
    assert_eq!(out, "NAT\n");
    let err = run_with_input(&mut cmd(&["sh", "-c", "cat >&2; exit 4"]), "bad", limit);
    match err {
        Err(Error::Failed { stderr, status, .. }) => {
            assert_eq!((stderr.as_str(), status.code()), ("bad", Some(4)));
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}
