//! The shared-memory region between `portdistrictd` and its dataplane is never
//! truncated or rewritten under a running dataplane. A daemon that finds no interface
//! of its name (here: it runs in another namespace, as after the interface moved)
//! creates a new region and a new dataplane; the dataplane that still runs with the
//! old region lives on, keeps its configuration (key, port) and forwards, while the new
//! one is programmed through the new region.
//!
//! No DNS server answers (`--dns-server 127.0.0.1`): publication fails and is logged,
//! and with no trusted peers the daemon's cycle needs no record; the tunnel's peer is
//! added over UAPI, which the shared-memory configuration leaves alone.

use portdistrict_netns_tests::{
    assert_ping, control_argv, find_daemon_pids, output_text, run, try_run, unique_ifname,
    uut_binary, wait_until, CliMachine, Daemon, Implementation, Keypair, Netns, Peer, TempDir,
    Veth,
};
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I=";

fn daemon_args(ifname: &str, port: u16, secret: &str) -> Vec<String> {
    [
        "--dns-server",
        "127.0.0.1",
        "--zone",
        "pd.test",
        "--tsig-key",
        "pd-key",
        "--tsig-secret-file",
        secret,
        "--interface",
        ifname,
        "--listen-port",
        &port.to_string(),
        "--once",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Deletes the interface in each namespace on drop (a dataplane exits with its
/// interface), then ends (by pid) a dataplane of that name still alive.
struct Tunnels {
    namespaces: Vec<String>,
    ifname: String,
}

impl Drop for Tunnels {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip")
                .args(["-n", ns, "link", "del", &self.ifname])
                .stderr(Stdio::null())
                .status();
        }
        let exe = uut_binary();
        wait_until(Duration::from_secs(3), Duration::from_millis(100), || {
            find_daemon_pids(&exe, &self.ifname).is_empty()
        });
        for pid in find_daemon_pids(&exe, &self.ifname) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// The UDP ports listened on in `ns`.
fn udp_ports(ns: &Netns) -> Vec<u16> {
    ns.exec(&["ss", "-Hlun"])
        .lines()
        .filter_map(|l| {
            let local = l.split_whitespace().nth(3)?;
            local.rsplit_once(':')?.1.parse().ok()
        })
        .collect()
}

fn counter(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or_else(|| panic!("no {name} in {stats}"))
}

#[test]
fn a_daemon_recreating_the_region_leaves_a_running_dataplane_alone() {
    let alice = CliMachine::new(Netns::new("shm-alice"), TempDir::new("shm-state"));
    let peer_ns = Netns::new("shm-peer");
    let elsewhere = Netns::new("shm-else");
    let link = Veth::new(&alice.ns, &peer_ns, 71);
    let secrets = TempDir::new("shm-secrets");
    let secret = secrets
        .write_private("tsig", SECRET)
        .to_string_lossy()
        .into_owned();
    let ifname = unique_ifname("pds");
    alice.init_identity("alice.pd.test", "laptop");
    let daemon_once = |ns: &Netns, port: u16, wrap: &[&str]| {
        let mut a: Vec<String> = wrap.iter().map(|s| (*s).to_owned()).collect();
        a.extend(control_argv(
            "portdistrictd",
            alice.state.path(),
            &alice.run_dir(),
            &daemon_args(&ifname, port, &secret)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = ns
            .command(&refs)
            .env("PD_DATAPLANE", uut_binary())
            .stdin(Stdio::null())
            .output()
            .expect("portdistrictd");
        assert!(out.status.success(), "portdistrictd: {}", output_text(&out));
        output_text(&out)
    };

    // Alice's daemon creates the tunnel, its region and its dataplane; a second cycle
    // writes the region again (its generation moves on).
    let _tunnels = Tunnels {
        namespaces: vec![alice.ns.name().to_owned(), elsewhere.name().to_owned()],
        ifname: ifname.clone(),
    };
    daemon_once(&alice.ns, 51820, &[]);
    daemon_once(&alice.ns, 51820, &[]);
    let exe = uut_binary();
    let pids = find_daemon_pids(&exe, &ifname);
    assert_eq!(pids.len(), 1, "alice's dataplane: {pids:?}");
    let dataplane = pids[0];
    let stats = || alice.ns.exec(&[&exe.to_string_lossy(), "--stats", &ifname]);
    let before = stats();
    let updates = counter(&before, "shm_updates");
    assert!(updates >= 1, "{before}");

    // A peer, over UAPI: a ping through the tunnel works.
    let peer = Daemon::start(&peer_ns, Implementation::Uut);
    let peer_keys = Keypair::generate();
    let alice_pub = run(&["wg", "show", &ifname, "public-key"])
        .trim()
        .to_owned();
    peer.configure(
        &peer_keys,
        51820,
        &[Peer::new(&alice_pub, &["10.99.0.1/32"])
            .endpoint(SocketAddr::new(IpAddr::V4(link.v4(1)), 51820))],
    );
    peer.add_address("10.99.0.2/24");
    peer.link_up();
    run(&[
        "wg",
        "set",
        &ifname,
        "peer",
        &peer_keys.public,
        "endpoint",
        &format!("{}:51820", link.v4(2)),
        "allowed-ips",
        "10.99.0.2/32",
    ]);
    alice
        .ns
        .exec(&["ip", "addr", "add", "10.99.0.1/24", "dev", &ifname]);
    let alice_addr: IpAddr = "10.99.0.1".parse().unwrap();
    assert_ping(&peer_ns, alice_addr, 3);

    // The daemon runs where the interface is missing: a new region at the same path, a
    // new dataplane there (with its own UAPI directory: the socket path is global),
    // programmed with another port.
    let out = daemon_once(
        &elsewhere,
        51999,
        &[
            "unshare",
            "-m",
            "sh",
            "-c",
            "mount -t tmpfs -o mode=0755 pd-uapi /var/run/wireguard && exec \"$0\" \"$@\"",
        ],
    );
    assert!(
        elsewhere.has_link(&ifname),
        "the daemon did not start a dataplane in the other namespace: {out}"
    );
    assert!(
        wait_until(Duration::from_secs(3), Duration::from_millis(100), || {
            udp_ports(&elsewhere).contains(&51999)
        }),
        "the new dataplane was not programmed through the new region: {:?}\n{out}",
        udp_ports(&elsewhere)
    );
    let pids = find_daemon_pids(&exe, &ifname);
    assert_eq!(pids.len(), 2, "both dataplanes run: {pids:?}");

    // The old dataplane lives, keeps its key and port, and forwards.
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(dataplane), "alice's dataplane died:\n{}", {
        let o = try_run(&["dmesg", "--level=err,warn"]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    });
    let ports = udp_ports(&alice.ns);
    assert!(
        ports.contains(&51820) && !ports.contains(&51999),
        "alice's dataplane was reprogrammed through the other dataplane's region: {ports:?}"
    );
    assert_eq!(run(&["wg", "show", &ifname, "listen-port"]).trim(), "51820");
    assert_eq!(
        run(&["wg", "show", &ifname, "public-key"]).trim(),
        alice_pub,
        "alice's dataplane kept its key"
    );
    let after = stats();
    assert_eq!(
        counter(&after, "shm_updates"),
        updates,
        "nothing applied from the other region: {after}"
    );
    assert_eq!(counter(&after, "shm_errors"), 0, "{after}");
    assert_ping(&peer_ns, alice_addr, 3);
}
