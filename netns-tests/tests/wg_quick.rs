//! (g) wg-quick with the implementation under test as its userspace implementation:
//! `wg-quick up` from a config file inside a namespace, ping through the tunnel,
//! `wg-quick down`, and nothing left: no interface, no process, no socket.

use std::path::Path;
use std::time::Duration;

use portdistrict_netns_tests::{
    assert_ping, tunnel_addr, unique_ifname, uut_binary, Daemon, Detached, Family, Implementation,
    Keypair, Netns, Peer, TempDir, Veth,
};

/// Runs `wg-quick VERB CONF` in `ns` (bounded by `timeout 30`), panicking with its output.
fn wg_quick(ns: &Netns, verb: &str, conf: &Path) {
    let uut = uut_binary();
    let conf = conf.display().to_string();
    let argv = [
        "env",
        &format!("WG_QUICK_USERSPACE_IMPLEMENTATION={}", uut.display()),
        "timeout",
        "30",
        "wg-quick",
        verb,
        &conf,
    ];
    ns.exec(&argv);
}

/// Brings the interface down if the test failed before doing so.
struct Down<'a> {
    ns: &'a Netns,
    ifname: String,
    conf: std::path::PathBuf,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if self.ns.has_link(&self.ifname) {
            let _ = self.ns.try_exec(&[
                "timeout",
                "30",
                "wg-quick",
                "down",
                &self.conf.display().to_string(),
            ]);
        }
    }
}

#[test]
fn wg_quick_up_ping_down() {
    let quick = Netns::new("quick");
    let remote = Netns::new("remote");
    let veth = Veth::new(&quick, &remote, 1);
    let (local_keys, remote_keys) = (Keypair::generate(), Keypair::generate());

    let peer = Daemon::start(&remote, Implementation::Uut);
    let allowed = ["10.99.0.1/32", "fd99::1/128"];
    peer.configure(
        &remote_keys,
        51821,
        &[Peer::new(&local_keys.public, &allowed)],
    );
    peer.add_address("10.99.0.2/24");
    peer.add_address("fd99::2/64");
    peer.link_up();

    let ifname = unique_ifname("pdw");
    let dir = TempDir::new("wgquick");
    let conf_text = format!(
        "[Interface]\nAddress = 10.99.0.1/24, fd99::1/64\nPrivateKey = {}\nListenPort = 51820\n\n\
         [Peer]\nPublicKey = {}\nEndpoint = {}:51821\nAllowedIPs = 10.99.0.2/32, fd99::2/128\n",
        local_keys.private,
        remote_keys.public,
        veth.v4(2)
    );
    let conf = dir.write_private(&format!("{ifname}.conf"), &conf_text);

    let guard = Down {
        ns: &quick,
        ifname: ifname.clone(),
        conf: conf.clone(),
    };
    wg_quick(&quick, "up", &conf);
    let daemon = Detached::adopt(Implementation::Uut, &ifname);
    for family in Family::ALL {
        assert_ping(&quick, tunnel_addr(family, 2), 5);
    }
    assert_ping(&remote, tunnel_addr(Family::V4, 1), 3);

    wg_quick(&quick, "down", &conf);
    assert!(
        !quick.has_link(&ifname),
        "{ifname} still exists after wg-quick down"
    );
    assert!(
        daemon.wait_gone(Duration::from_secs(10)),
        "implementation {} still running after wg-quick down",
        daemon.pid()
    );
    assert!(
        !daemon.socket_path().exists(),
        "{} left behind",
        daemon.socket_path().display()
    );
    drop(guard);
}
