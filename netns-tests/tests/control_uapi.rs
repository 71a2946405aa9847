//! The control crate's UAPI dataplane client against the real dataplane: a configuration set
//! through it is what `wg show` reports, and a refusal comes back as an error naming
//! the errno.

use portdistrict_control::dataplane::{Dataplane as _, UapiClient, SOCKET_DIR};
use portdistrict_netns_tests::{Daemon, Implementation, Keypair, Netns};
use portdistrict_wg::config::{AllowedIpChange, ConfigChange, PeerChange};
use portdistrict_wg::{PrivateKey, PublicKey};
use std::path::Path;

#[test]
fn set_and_get_through_the_uapi_client() {
    let ns = Netns::new("uapi-client");
    let daemon = Daemon::start(&ns, Implementation::Uut);
    let dir = daemon.socket_path();
    let dir = dir.parent().unwrap_or(Path::new(SOCKET_DIR));
    let mut client = UapiClient::in_dir(dir, daemon.ifname());
    let me = Keypair::generate();
    let peer = Keypair::generate();
    let mut change = PeerChange::new(PublicKey::from_base64(&peer.public).unwrap());
    change.endpoint = Some("192.0.2.7:51820".parse().unwrap());
    change.allowed_ips = vec![AllowedIpChange {
        addr: "100.64.0.2".parse().unwrap(),
        cidr: 32,
        remove: false,
    }];
    let req = ConfigChange {
        private_key: Some(Some(PrivateKey::from_base64(&me.private).unwrap())),
        listen_port: Some(51999),
        fwmark: None,
        replace_peers: true,
        peers: vec![change],
    };
    client.apply(&req).expect("set through the client");

    let dump = daemon.dump();
    assert_eq!(dump.public_key, me.public);
    assert_eq!(dump.listen_port, 51999);
    assert_eq!(dump.peers.len(), 1);
    assert_eq!(dump.peers[0].public_key, peer.public);
    assert_eq!(dump.peers[0].allowed_ips, ["100.64.0.2/32"]);
    let get = client.snapshot().expect("get");
    assert_eq!(get.listen_port, 51999);
    assert_eq!(
        get.private_key.map(|k| k.public_key().to_base64()),
        Some(me.public.clone())
    );
    let peers = client.peers().expect("peers");
    let p = &peers[&PublicKey::from_base64(&peer.public).unwrap()];
    assert_eq!(p.endpoint, Some("192.0.2.7:51820".parse().unwrap()));
    assert_eq!(p.allowed_ips, [("100.64.0.2".parse().unwrap(), 32)]);

    // A port another socket holds is refused, and nothing changes.
    let busy = ns.command(&["python3", "-c", "import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 52000)); print('ok', flush=True); time.sleep(5)"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut busy = Guard(busy);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(busy.0.stdout.as_mut().expect("piped")),
        &mut line,
    )
    .expect("holder output");
    let refused = ConfigChange {
        private_key: None,
        listen_port: Some(52000),
        fwmark: None,
        replace_peers: false,
        peers: Vec::new(),
    };
    let e = client.apply(&refused).expect_err("port in use");
    assert!(e.to_string().contains("errno -98"), "{e}");
    assert_eq!(daemon.dump().listen_port, 51999);
    drop(busy);
}

/// Kills the child when dropped (also on panic).
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
