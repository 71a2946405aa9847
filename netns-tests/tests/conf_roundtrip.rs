//! `wg setconf` / `wg showconf` / `wg syncconf` against the implementation under test:
//! showconf returns what setconf set (modulo ordering), syncconf removes a peer, and the
//! tunnel configured this way carries traffic throughout.

use portdistrict_netns_tests::{
    assert_ping, genpsk, normalize_conf, Daemon, Family, Keypair, Pair, PairOptions, Peer,
};

fn showconf(d: &Daemon) -> Vec<String> {
    normalize_conf(&d.wg(&["showconf", d.ifname()]))
}

fn apply(d: &Daemon, verb: &str, name: &str, conf: &str) {
    let path = d.private_file(name, conf);
    d.wg(&[verb, d.ifname(), &path.display().to_string()]);
}

#[test]
fn setconf_showconf_syncconf() {
    let pair = Pair::new(&PairOptions::default());
    let (left, right) = (&pair.left, &pair.right);
    let psk = genpsk();
    let extra = Keypair::generate();
    let right_ep = pair.endpoint_of(right, Family::V4);

    let interface = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {}\n",
        left.keys.private, left.port
    );
    let right_peer = format!(
        "[Peer]\nPublicKey = {}\nPresharedKey = {psk}\nAllowedIPs = 10.99.0.2/32, fd99::2/128\n\
         Endpoint = {right_ep}\nPersistentKeepalive = 25\n",
        right.keys.public
    );
    let extra_peer = format!(
        "[Peer]\nPublicKey = {}\nAllowedIPs = 10.99.1.0/24, fd99:1::/64, 10.98.0.0/16\nEndpoint = {}:51999\n",
        extra.public,
        pair.veth.v4(9)
    );
    let full = format!("{interface}\n{right_peer}\n{extra_peer}");
    apply(&left.daemon, "setconf", "full.conf", &full);
    assert_eq!(showconf(&left.daemon), normalize_conf(&full));

    // The other side needs the same preshared key; then traffic must flow.
    let mut back = Peer::new(&left.keys.public, &["10.99.0.1/32", "fd99::1/128"]);
    back.preshared_key = Some(psk);
    right.daemon.set_peer(&back);
    assert_ping(&left.ns, right.tunnel_addr(Family::V4), 3);

    let reduced = format!("{interface}\n{right_peer}");
    apply(&left.daemon, "syncconf", "reduced.conf", &reduced);
    assert_eq!(showconf(&left.daemon), normalize_conf(&reduced));
    assert!(
        !left.daemon.show("peers").contains(&extra.public),
        "syncconf kept the removed peer"
    );
    assert_ping(&left.ns, right.tunnel_addr(Family::V6), 3);
}
