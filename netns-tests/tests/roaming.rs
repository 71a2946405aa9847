//! (c) Roaming: one side changes its underlay address and listen port; traffic
//! continues and the other side's `wg show IF endpoints` shows the new endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use portdistrict_netns_tests::{
    assert_ping, tcp_transfer, wait_until, Family, Pair, PairOptions, Side,
};

const NEW_PORT: u16 = 51900;

/// Sends from `roamer` to `other` and waits until `other` shows `new_endpoint`.
fn expect_roam(roamer: &Side, other: &Side, new_endpoint: SocketAddr) {
    assert_ping(&roamer.ns, other.tunnel_addr(Family::V4), 5);
    let want = format!("{}\t{new_endpoint}", roamer.keys.public);
    let mut seen = String::new();
    let updated = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        seen = other.daemon.show("endpoints");
        seen.lines().any(|l| l.trim() == want)
    });
    assert!(
        updated,
        "endpoint not updated to {new_endpoint}; wg show endpoints:\n{seen}"
    );
    for family in Family::ALL {
        assert_ping(&other.ns, roamer.tunnel_addr(family), 5);
    }
    tcp_transfer(
        &other.ns,
        &roamer.ns,
        roamer.tunnel_addr(Family::V4),
        5003,
        10,
        21,
    );
}

#[test]
fn roams_to_new_v4_address_and_port() {
    let pair = Pair::new(&PairOptions::default());
    let (left, right) = (&pair.left, &pair.right);
    assert_ping(&left.ns, right.tunnel_addr(Family::V4), 3);

    let veth = pair.veth.b_name();
    let old = format!("{}/24", pair.veth.v4(2));
    let new = format!("{}/24", pair.veth.v4(3));
    // Delete first: a second address in the same /24 would be a secondary, removed
    // together with the primary.
    right.ns.exec(&["ip", "addr", "del", &old, "dev", veth]);
    right.ns.exec(&["ip", "addr", "add", &new, "dev", veth]);
    right.daemon.set(&["listen-port", &NEW_PORT.to_string()]);

    expect_roam(
        right,
        left,
        SocketAddr::new(pair.veth.v4(3).into(), NEW_PORT),
    );
}

#[test]
fn roams_from_v4_to_v6_underlay() {
    let pair = Pair::new(&PairOptions::default());
    let (left, right) = (&pair.left, &pair.right);
    assert_ping(&right.ns, left.tunnel_addr(Family::V4), 3);

    let veth = pair.veth.b_name();
    let old = format!("{}/24", pair.veth.v4(2));
    let new = format!("{}/64", pair.veth.v6(3));
    right
        .ns
        .exec(&["ip", "addr", "add", &new, "dev", veth, "nodad"]);
    right.ns.exec(&["ip", "addr", "del", &old, "dev", veth]);
    right.ns.exec(&[
        "ip",
        "addr",
        "del",
        &format!("{}/64", pair.veth.v6(2)),
        "dev",
        veth,
    ]);
    right.daemon.set(&["listen-port", &NEW_PORT.to_string()]);
    let left_v6 = pair.endpoint_of(left, Family::V6).to_string();
    right
        .daemon
        .set(&["peer", &left.keys.public, "endpoint", &left_v6]);

    expect_roam(
        right,
        left,
        SocketAddr::new(pair.veth.v6(3).into(), NEW_PORT),
    );
}
