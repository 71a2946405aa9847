//! Record freshness and per-device TSIG keys, on a real DNS server: Knot in a "dns"
//! namespace serves `pd.test` and accepts updates signed with one key per device, each
//! allowed (Knot ACL `update-owner: name`, `update-owner-match: equal`) to update only
//! that device's names. Alice (laptop, holding her identity) and bob (desk) trust each
//! other; bob publishes records valid for 20 s (`--record-lifetime 20s`).
//!
//! - bob's key cannot update alice's names: Knot refuses (NOTAUTH, TSIG error BADKEY),
//!   alice's record is unchanged, and alice's daemon given bob's key is refused too;
//! - a replayed older record of bob's (captured from the zone before he republished,
//!   then put back with knsupdate and his own key, as a removed device still holding it
//!   could) is rejected by alice's next daemon run (a new process: the high-water mark
//!   survives restarts) and logged as a rollback; the tunnel stays while bob's last good
//!   record is valid;
//! - once bob's last good record has expired (he stopped publishing), alice's next
//!   cycle disconnects him, and her pings to him fail.

use portdistrict_netns_tests::{
    unique_ifname, uut_binary, wait_until, Knot, Netns, TempDir, UpdateKey, Veth,
};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const ALICE_SECRET: &str = "YWxpY2UtYWxpY2UtYWxpY2UtYWxpY2UtYWxpY2UtYWw=";
const BOB_SECRET: &str = "Ym9iLWJvYi1ib2ItYm9iLWJvYi1ib2ItYm9iLWJvYi0=";
const ALICE_KEY: &str = "laptop.alice.pd.test";
const BOB_KEY: &str = "desk.bob.pd.test";
/// Bob's `--record-lifetime`, in seconds.
const BOB_LIFETIME: u64 = 20;

fn bin(name: &str) -> String {
    uut_binary()
        .with_file_name(name)
        .to_string_lossy()
        .into_owned()
}

/// One person's machine: namespace, state, its DNS server's address, tunnel name.
struct Node {
    ns: Netns,
    state: TempDir,
    ifname: String,
    dns: String,
}

impl Node {
    fn cmd(&self, program: &str, args: &[&str]) -> Command {
        let st = self.state.path().to_string_lossy().into_owned();
        let mut argv = vec![
            bin(program),
            "--state-dir".into(),
            st.clone(),
            "--run-dir".into(),
            format!("{st}/run"),
        ];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut c = self.ns.command(&refs);
        c.env("PD_DATAPLANE", uut_binary()).stdin(Stdio::null());
        c
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = self
            .cmd("portdistrict", args)
            .output()
            .expect("portdistrict");
        assert!(
            out.status.success(),
            "portdistrict {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn daemon_once(&self, key: &str, secret_file: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "--dns-server",
            &self.dns,
            "--zone",
            "pd.test",
            "--tsig-key",
            key,
            "--tsig-secret-file",
            secret_file,
            "--interface",
            &self.ifname,
            "--once",
        ];
        args.extend_from_slice(extra);
        self.cmd("portdistrictd", &args)
            .output()
            .expect("portdistrictd")
    }

    fn overlay_addr(&self) -> String {
        let list = self.cli(&["device", "list"]);
        let prefix = list
            .lines()
            .find_map(|l| l.trim().strip_prefix("overlay:"))
            .expect("overlay line")
            .trim()
            .trim_end_matches("/64")
            .to_owned();
        format!("{prefix}1")
    }

    fn pings(&self, addr: &str) -> bool {
        self.ns
            .try_exec(&["ping", "-6", "-c", "3", "-i", "0.2", "-W", "1", addr])
            .status
            .success()
    }

    /// The TXT records at `name`, one `kdig +short` line (quoted strings) each.
    fn txt(&self, name: &str) -> Vec<String> {
        let at = format!("@{}", self.dns);
        self.ns
            .exec(&["kdig", &at, "+short", "TXT", name])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The dataplane removes its socket when its interface goes.
        let _ = Command::new("ip")
            .args(["-n", self.ns.name(), "link", "del", &self.ifname])
            .status();
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn log_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Replaces the TXT records at `name` by `lines` with knsupdate, signed with `key`.
fn nsupdate(
    node: &Node,
    dir: &TempDir,
    key: &str,
    secret: &str,
    name: &str,
    lines: &[String],
) -> Output {
    let mut script = format!(
        "server {} 53\nzone pd.test.\nupdate delete {name}. TXT\n",
        node.dns
    );
    for l in lines {
        script.push_str(&format!("update add {name}. 60 TXT {l}\n"));
    }
    script.push_str("send\n");
    let file = dir.write_private("nsupdate", &script);
    node.ns.try_exec(&[
        "knsupdate",
        "-y",
        &format!("hmac-sha256:{key}:{secret}"),
        &file.to_string_lossy(),
    ])
}

#[test]
fn replays_are_rejected_grace_ends_at_expiry_and_device_keys_stay_in_their_names() {
    let dns = Netns::new("cg-dns");
    dns.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    dns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
    let mk = |role: &str, subnet: u8| {
        let ns = Netns::new(role);
        let link = Veth::new(&ns, &dns, subnet);
        ns.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &link.v4(2).to_string(),
        ]);
        ns.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &link.v6(2).to_string(),
        ]);
        (ns, link)
    };
    let (alice_ns, alice_link) = mk("cg-alice", 71);
    let (bob_ns, bob_link) = mk("cg-bob", 72);
    // One key per device, each allowed to update only its device's names (and, for
    // the device holding the identity's seed, the master and trust records).
    let alice_names = [
        "_portdistrict.laptop.alice.pd.test",
        "_portdistrict.alice.pd.test",
        "_portdistrict-trust.alice.pd.test",
    ];
    let bob_names = [
        "_portdistrict.desk.bob.pd.test",
        "_portdistrict.bob.pd.test",
        "_portdistrict-trust.bob.pd.test",
    ];
    let _knot = Knot::start_with_keys(
        &dns,
        &[alice_link.v4(2).into(), bob_link.v4(2).into()],
        "pd.test",
        &[],
        &[
            UpdateKey {
                name: ALICE_KEY,
                secret: ALICE_SECRET,
                owners: &alice_names,
            },
            UpdateKey {
                name: BOB_KEY,
                secret: BOB_SECRET,
                owners: &bob_names,
            },
        ],
    );
    let alice = Node {
        ns: alice_ns,
        state: TempDir::new("cg-alice"),
        ifname: unique_ifname("pdg"),
        dns: alice_link.v4(2).to_string(),
    };
    let bob = Node {
        ns: bob_ns,
        state: TempDir::new("cg-bob"),
        ifname: unique_ifname("pdg"),
        dns: bob_link.v4(2).to_string(),
    };
    let secrets = TempDir::new("cg-secrets");
    let alice_secret = secrets
        .write_private("alice-tsig", ALICE_SECRET)
        .to_string_lossy()
        .into_owned();
    let bob_secret = secrets
        .write_private("bob-tsig", BOB_SECRET)
        .to_string_lossy()
        .into_owned();

    for (n, ns_name, dev) in [
        (&alice, "alice.pd.test", "laptop"),
        (&bob, "bob.pd.test", "desk"),
    ] {
        let key = n.state.path().join("seed.key");
        n.cli(&[
            "identity",
            "init",
            "--namespace",
            ns_name,
            "--key-file",
            &key.to_string_lossy(),
        ]);
        n.cli(&["device", "init", "--name", dev]);
    }
    for (me, other) in [(&alice, &bob), (&bob, &alice)] {
        let bundle = other.cli(&["identity", "bundle"]);
        let shown: serde_json::Value =
            serde_json::from_str(&other.cli(&["identity", "show", "--json"])).unwrap();
        let node = shown["node_id"].as_str().unwrap().to_owned();
        me.cli(&["peer", "add", bundle.trim()]);
        me.cli(&[
            "peer",
            "verify",
            &node,
            "--fingerprint",
            shown["fingerprint"].as_str().unwrap(),
        ]);
        me.cli(&["peer", "trust", &node]);
    }

    let lifetime = format!("{BOB_LIFETIME}s");
    let bob_once = || {
        let out = bob.daemon_once(BOB_KEY, &bob_secret, &["--record-lifetime", &lifetime]);
        assert!(out.status.success(), "bob: {}", log_of(&out));
        Instant::now()
    };
    let alice_once = || {
        let out = alice.daemon_once(ALICE_KEY, &alice_secret, &[]);
        assert!(out.status.success(), "alice: {}", log_of(&out));
        log_of(&out)
    };

    // Each device publishes with its own key; both connect.
    alice_once();
    bob_once();
    alice_once();
    bob_once();
    let (a, b) = (alice.overlay_addr(), bob.overlay_addr());
    assert!(alice.pings(&b), "alice -> bob over the overlay");
    assert!(bob.pings(&a), "bob -> alice over the overlay");

    // Bob's key cannot touch alice's names: Knot refuses, her record stays.
    let alice_dev = alice_names[0];
    let before = alice.txt(alice_dev);
    assert!(
        before.iter().any(|l| l.contains("pd1")),
        "alice's record: {before:?}"
    );
    let out = nsupdate(
        &bob,
        &secrets,
        BOB_KEY,
        BOB_SECRET,
        alice_dev,
        &["\"forged\"".to_owned()],
    );
    let log = log_of(&out);
    assert!(
        !out.status.success(),
        "bob's key updated alice's name: {log}"
    );
    // Knot refuses with NOTAUTH and the TSIG error BADKEY, which kdig shows as status.
    assert!(
        ["NOTAUTH", "REFUSED", "BADKEY"]
            .iter()
            .any(|c| log.contains(&format!("status: {c}"))),
        "knsupdate: {log}"
    );
    assert_eq!(alice.txt(alice_dev), before, "alice's record changed");
    // Nor can a daemon publishing alice's records with bob's key.
    let out = alice.daemon_once(BOB_KEY, &bob_secret, &[]);
    let log = log_of(&out);
    assert!(
        log.contains("NOTAUTH") || log.contains("REFUSED"),
        "alice's records published with bob's key: {log}"
    );
    assert_eq!(alice.txt(alice_dev), before, "alice's record changed");

    // A replay: bob's device record captured now, put back after he republished.
    let bob_dev = bob_names[0];
    let old = bob.txt(bob_dev);
    assert!(
        old.iter().any(|l| l.contains("pd1")),
        "bob's record: {old:?}"
    );
    std::thread::sleep(Duration::from_millis(1100));
    let published = bob_once();
    assert_ne!(bob.txt(bob_dev), old, "bob's republished record");
    alice_once();
    let out = nsupdate(&bob, &secrets, BOB_KEY, BOB_SECRET, bob_dev, &old);
    assert!(out.status.success(), "replaying {old:?}: {}", log_of(&out));
    assert_eq!(bob.txt(bob_dev), old, "the old record is back in the zone");
    // A new alice daemon process: the high-water mark came from the state directory.
    let log = alice_once();
    assert!(
        log.contains("device record _portdistrict.desk.bob.pd.test rejected: rollback"),
        "{log}"
    );
    assert!(log.contains("stay as they are until"), "{log}");
    assert!(
        alice.pings(&b),
        "inside the grace period the tunnel stays as it was"
    );
    let seen = alice.state.path().join("records-seen.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&seen)
            .expect("records-seen.json")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{}", seen.display());

    // Bob stops publishing; once his last good record has expired, alice's next cycle
    // disconnects him.
    let expiry = Duration::from_secs(BOB_LIFETIME + 1);
    let left = expiry.saturating_sub(published.elapsed());
    assert!(
        !left.is_zero(),
        "the test took longer than bob's record lifetime before the expiry check"
    );
    std::thread::sleep(left);
    let log = alice_once();
    assert!(log.contains("the last good record expired at"), "{log}");
    assert!(log.contains("disconnected"), "{log}");
    assert!(
        wait_until(Duration::from_secs(3), Duration::from_millis(200), || {
            !alice.pings(&b)
        }),
        "alice still reaches bob after his last good record expired:\n{}",
        alice.ns.exec(&["wg", "show", &alice.ifname])
    );
}
