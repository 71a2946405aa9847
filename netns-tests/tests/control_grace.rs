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
    output_text, wait_until, ControlNode, Knot, Netns, TempDir, UpdateKey,
};
use std::process::Output;
use std::time::{Duration, Instant};

const ALICE_SECRET: &str = "YWxpY2UtYWxpY2UtYWxpY2UtYWxpY2UtYWxpY2UtYWw=";
const BOB_SECRET: &str = "Ym9iLWJvYi1ib2ItYm9iLWJvYi1ib2ItYm9iLWJvYi0=";
const ALICE_KEY: &str = "laptop.alice.pd.test";
const BOB_KEY: &str = "desk.bob.pd.test";
/// Bob's `--record-lifetime`, in seconds.
const BOB_LIFETIME: u64 = 20;

/// Replaces the TXT records at `name` by `lines` with knsupdate, signed with `key`.
fn nsupdate(
    node: &ControlNode,
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
    node.machine.ns.try_exec(&[
        "knsupdate",
        "-y",
        &format!("hmac-sha256:{key}:{secret}"),
        &file.to_string_lossy(),
    ])
}

#[test]
fn replays_are_rejected_grace_ends_at_expiry_and_device_keys_stay_in_their_names() {
    let dns = Netns::new("cg-dns");
    dns.enable_forwarding();
    let (alice_ns, alice_link) = Netns::behind("cg-alice", &dns, 71);
    let (bob_ns, bob_link) = Netns::behind("cg-bob", &dns, 72);
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
    let alice = ControlNode::new(alice_ns, "cg-alice", "pdg", alice_link.v4(2));
    let bob = ControlNode::new(bob_ns, "cg-bob", "pdg", bob_link.v4(2));
    let secrets = TempDir::new("cg-secrets");
    let alice_secret = secrets
        .write_private("alice-tsig", ALICE_SECRET)
        .to_string_lossy()
        .into_owned();
    let bob_secret = secrets
        .write_private("bob-tsig", BOB_SECRET)
        .to_string_lossy()
        .into_owned();

    alice.machine.init_identity("alice.pd.test", "laptop");
    bob.machine.init_identity("bob.pd.test", "desk");
    alice.machine.trust(&bob.machine);
    bob.machine.trust(&alice.machine);

    let lifetime = format!("{BOB_LIFETIME}s");
    let bob_once = || {
        let out = bob.daemon_once(BOB_KEY, &bob_secret, &["--record-lifetime", &lifetime]);
        assert!(out.status.success(), "bob: {}", output_text(&out));
        Instant::now()
    };
    let alice_once = || {
        let out = alice.daemon_once(ALICE_KEY, &alice_secret, &[]);
        assert!(out.status.success(), "alice: {}", output_text(&out));
        output_text(&out)
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
    let log = output_text(&out);
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
    let log = output_text(&out);
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
    assert!(
        out.status.success(),
        "replaying {old:?}: {}",
        output_text(&out)
    );
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
    let seen = alice.machine.state.path().join("records-seen.json");
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
        alice.machine.ns.exec(&["wg", "show", &alice.ifname])
    );
}
