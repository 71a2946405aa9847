//! (h) Process lifecycle: the implementation exits and removes its UAPI socket when its
//! interface is deleted and on SIGTERM; daemonized, its launcher returns only once the
//! interface and socket exist.

use std::time::Duration;

use portdistrict_netns_tests::{wait_until, Daemon, Detached, Implementation, Keypair, Netns};

const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

fn configured(ns: &Netns) -> Daemon {
    let d = Daemon::start(ns, Implementation::Uut);
    d.configure(&Keypair::generate(), 51820, &[]);
    d.link_up();
    d
}

fn assert_socket_removed(path: &std::path::Path) {
    let gone = wait_until(Duration::from_secs(5), POLL, || !path.exists());
    assert!(gone, "{} left behind", path.display());
}

#[test]
fn exits_when_interface_deleted() {
    let ns = Netns::new("life");
    let mut d = configured(&ns);
    ns.exec(&["ip", "link", "del", d.ifname()]);
    assert!(
        d.wait_exit(EXIT_TIMEOUT).is_some(),
        "still running after its interface was deleted"
    );
    assert_socket_removed(&d.socket_path());
}

#[test]
fn exits_on_sigterm() {
    let ns = Netns::new("life");
    let mut d = configured(&ns);
    d.terminate();
    assert!(
        d.wait_exit(EXIT_TIMEOUT).is_some(),
        "still running after SIGTERM"
    );
    assert_socket_removed(&d.socket_path());
    let gone = wait_until(Duration::from_secs(5), POLL, || !ns.has_link(d.ifname()));
    assert!(gone, "interface left behind after SIGTERM");
}

#[test]
fn daemonizes_with_interface_and_socket_ready() {
    let ns = Netns::new("life");
    let d = Detached::launch(&ns, Implementation::Uut);
    // wg-quick runs `wg setconf` right after the launcher returns: both must exist now.
    assert!(
        ns.has_link(d.ifname()),
        "launcher returned before {} existed",
        d.ifname()
    );
    assert!(
        d.socket_path().exists(),
        "launcher returned before the UAPI socket existed"
    );
    let out = portdistrict_netns_tests::run(&["wg", "show", d.ifname(), "listen-port"]);
    assert!(
        out.trim().parse::<u16>().is_ok(),
        "unexpected listen-port output {out:?}"
    );

    ns.exec(&["ip", "link", "del", d.ifname()]);
    assert!(
        d.wait_gone(EXIT_TIMEOUT),
        "daemon {} still alive after link deletion",
        d.pid()
    );
    assert_socket_removed(&d.socket_path());
}
