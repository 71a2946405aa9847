//! The control socket (`RUN_DIR/exit.sock`) between the CLI and a running `exit
//! serve`: while it runs, `exit invite`, `exit list` and `exit revoke` are carried out
//! by the daemon (shown by running them as an unprivileged member of its
//! `--control-group`, who cannot even read the state directory, and by the consumer
//! losing access by traffic once revoked); a user outside the group is refused and
//! changes nothing; with no daemon (no socket, or a stale one nobody listens on) the
//! same commands edit the store themselves.
//!
//! ```text
//!  consumer --86-- internet (router; echo on its lo) --85-- provider (exit serve)
//! ```

use portdistrict_netns_tests::exit::{
    echo, internet, start_echo, Consumer, Provider, ECHO_V4, ECHO_V6,
};
use portdistrict_netns_tests::{
    control_argv, unique_ifname, wait_until, CliMachine, Netns, TempDir,
};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// The control group `exit serve` is started with (no name needed: a number).
const GROUP: u32 = 4242;
/// User nobody.
const NOBODY: u32 = 65534;

/// `portdistrict args` on `machine`'s directories as user nobody with group `gid`
/// and no supplementary groups (outside the namespace: a socket path is not
/// namespaced, and a user could not enter one).
fn as_user(machine: &CliMachine, gid: u32, args: &[&str]) -> Output {
    let argv = control_argv(
        "portdistrict",
        machine.state.path(),
        &machine.run_dir(),
        args,
    );
    Command::new(&argv[0])
        .args(&argv[1..])
        .uid(NOBODY)
        .gid(gid)
        .output()
        .expect("portdistrict as nobody")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn store(provider: &Provider) -> String {
    std::fs::read_to_string(provider.machine.state.path().join("exit/store.json"))
        .unwrap_or_default()
}

/// A socket file nobody listens on, as a daemon killed with SIGKILL leaves it.
fn stale_socket(path: &Path) {
    drop(std::os::unix::net::UnixListener::bind(path).expect("binding a socket"));
    assert!(path.exists());
}

/// The inner IPv4 address of the one consumer `exit list` shows.
fn consumer_v4(list: &str) -> String {
    let mut lines = list.lines().skip_while(|l| !l.starts_with("consumers: "));
    assert_eq!(lines.next(), Some("consumers: 1"), "{list}");
    let line = lines.next().expect("a consumer line");
    line.split_whitespace()
        .nth(1)
        .expect("its address")
        .to_owned()
}

#[test]
fn exit_commands_go_through_the_running_daemon_and_work_offline_without_it() {
    let internet = internet("cs-internet");
    let _echo = start_echo(&internet, &[7000], &[ECHO_V4, ECHO_V6]);
    let (pns, uplink) = Netns::behind("cs-provider", &internet, 85);
    let provider = Provider {
        machine: CliMachine::with_run_dir(pns, TempDir::new("cs-pstate"), TempDir::new("cs-prun")),
        ifname: unique_ifname("pdx"),
        uplink: uplink.a_name().to_owned(),
    };
    let endpoint = format!("{}:51820", uplink.v4(1));
    let socket = provider.machine.run_dir().join("exit.sock");

    // Offline, with a stale socket from a killed daemon: the CLI edits the store.
    stale_socket(&socket);
    let offline = provider.run(&["exit", "invite", "--endpoint", &endpoint]);
    assert!(offline.starts_with("portdistrict-invite1:"), "{offline}");
    assert!(provider.run(&["exit", "list"]).starts_with("invites: 1\n"));

    let mut serve = provider.serve(ECHO_V4, &["--control-group", &GROUP.to_string()]);
    let meta = std::fs::metadata(&socket).expect("exit serve's socket");
    assert_eq!(
        (meta.mode() & 0o777, meta.uid(), meta.gid()),
        (0o660, 0, GROUP)
    );
    let run = std::fs::metadata(provider.machine.run_dir()).unwrap();
    assert_eq!(
        (run.permissions().mode() & 0o777, run.gid()),
        (0o710, GROUP)
    );

    // Outside the group: refused, nothing changes, and no offline fallback.
    let before = store(&provider);
    let refused = as_user(
        &provider.machine,
        NOBODY,
        &["exit", "invite", "--endpoint", &endpoint],
    );
    assert!(!refused.status.success(), "an outsider issued an invite");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("permission denied"), "{err}");
    assert_eq!(
        store(&provider),
        before,
        "a refused caller changed the store"
    );

    // A group member cannot read the state directory: only the daemon can have
    // written the invite it prints.
    let issued = ok(
        &as_user(
            &provider.machine,
            GROUP,
            &["exit", "invite", "--endpoint", &endpoint],
        ),
        "exit invite as a group member",
    );
    assert!(issued.starts_with("portdistrict-invite1:"), "{issued}");
    assert_ne!(
        store(&provider),
        before,
        "the daemon did not record the invite"
    );
    let list = ok(
        &as_user(&provider.machine, GROUP, &["exit", "list"]),
        "exit list",
    );
    assert!(list.starts_with("invites: 2\n"), "{list}");

    // The invite works: the consumer's traffic leaves with the provider's address.
    let (consumer, _link) = Consumer::new(
        "cs-consumer",
        &internet,
        86,
        &format!("nameserver {ECHO_V4}\noptions timeout:1 attempts:1\n"),
    );
    consumer.use_ok(&issued);
    let provider_v4 = uplink.v4(1).to_string();
    assert_eq!(
        echo(consumer.ns(), "udp", ECHO_V4),
        provider_v4,
        "through the exit"
    );

    // Revoked through the daemon (again as the group member): cut off at once.
    let list = ok(
        &as_user(&provider.machine, GROUP, &["exit", "list"]),
        "exit list",
    );
    let inner = consumer_v4(&list);
    let revoked = ok(
        &as_user(&provider.machine, GROUP, &["exit", "revoke", &inner]),
        "exit revoke as a group member",
    );
    assert!(revoked.starts_with("revoked "), "{revoked}");
    assert!(
        wait_until(Duration::from_secs(3), Duration::from_millis(100), || {
            echo(consumer.ns(), "udp", ECHO_V4) == "none"
        }),
        "the revoked consumer still gets through"
    );
    assert!(provider.run(&["exit", "list"]).contains("consumers: 0"));

    // Stopped: the socket goes, and the commands work offline again (also past a
    // stale socket).
    let status = serve.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit serve: {status:?}"
    );
    assert!(!socket.exists(), "exit serve left its socket");
    stale_socket(&socket);
    let token = provider.run(&["exit", "invite", "--endpoint", &endpoint]);
    let token = portdistrict_exitnode::invite::Invite::decode(&token)
        .expect("invite decodes")
        .token;
    let prefix: String = token[..4].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        provider.run(&["exit", "revoke", &prefix]),
        format!("revoked invite {prefix}")
    );
    assert!(provider.run(&["exit", "list"]).starts_with("invites: 3\n"));
}
