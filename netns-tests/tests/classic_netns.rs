//! (e) The classic WireGuard netns topology: both implementations start in namespace A
//! with their UDP on A's loopback; each interface is then moved into B and C and
//! configured there. Traffic between B and C crosses A's loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use portdistrict_netns_tests::{
    assert_ping, tcp_transfer, tunnel_addr, Daemon, Family, Implementation, Keypair, Netns, Peer,
};

const PORTS: [u16; 2] = [20001, 20002];

fn udp_listening(ns: &Netns, port: u16) -> bool {
    !ns.exec(&["ss", "-Hlun", &format!("sport = :{port}")])
        .trim()
        .is_empty()
}

#[test]
fn interfaces_moved_out_of_the_socket_namespace() {
    let a = Netns::new("a");
    let b = Netns::new("b");
    let c = Netns::new("c");
    let mut d1 = Daemon::start(&a, Implementation::Uut);
    let mut d2 = Daemon::start(&a, Implementation::Uut);
    d1.move_to(&b);
    d2.move_to(&c);

    let keys = [Keypair::generate(), Keypair::generate()];
    let loopback = |i: usize| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), PORTS[i]);
    for (i, d) in [&d1, &d2].into_iter().enumerate() {
        let other = 1 - i;
        let host = other as u8 + 1;
        let allowed = [
            format!("{}/32", tunnel_addr(Family::V4, host)),
            format!("{}/128", tunnel_addr(Family::V6, host)),
        ];
        let peer =
            Peer::new(&keys[other].public, &[&allowed[0], &allowed[1]]).endpoint(loopback(other));
        d.configure(&keys[i], PORTS[i], &[peer]);
        d.add_address(&format!("{}/24", tunnel_addr(Family::V4, i as u8 + 1)));
        d.add_address(&format!("{}/64", tunnel_addr(Family::V6, i as u8 + 1)));
        d.link_up();
    }

    // The UDP sockets stayed in A.
    for port in PORTS {
        assert!(udp_listening(&a, port), "no UDP socket on :{port} in A");
        assert!(
            !udp_listening(&b, port) && !udp_listening(&c, port),
            "UDP :{port} followed the interface"
        );
    }
    for family in Family::ALL {
        assert_ping(&b, tunnel_addr(family, 2), 5);
        assert_ping(&c, tunnel_addr(family, 1), 5);
    }
    tcp_transfer(&b, &c, tunnel_addr(Family::V4, 2), 5001, 20, 31);
    tcp_transfer(&c, &b, tunnel_addr(Family::V6, 1), 5002, 20, 32);
    let ep = d1.dump().peer(&keys[1].public).endpoint.clone();
    assert_eq!(ep, Some(loopback(1).to_string()));
}
