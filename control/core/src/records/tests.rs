//! Round trips, rejections and the golden vectors of docs/protocol.md.

use super::*;
use crate::identity::Seed;
use rand_core::{RngCore as _, SeedableRng as _};

fn rng() -> rand_chacha::ChaCha20Rng {
    rand_chacha::ChaCha20Rng::from_seed([42; 32])
}

fn alice_roster() -> (Seed, DeviceKeys, MasterRecord) {
    let alice = Seed::from_bytes([1; 32]);
    let laptop = DeviceKeys::from_seed([11; 32]);
    let d = Delegation::sign(&alice.master(), "alice.pd.test", laptop.public("laptop"));
    let roster = MasterRecord {
        namespace: "alice.pd.test".into(),
        issued: 1_800_000_000,
        expires: 1_800_086_400,
        devices: vec![d],
    };
    (alice, laptop, roster)
}

#[test]
fn a_device_updates_only_its_own_names() {
    assert_eq!(
        update_names("bob.pd.test", "desk", false),
        ["_portdistrict.desk.bob.pd.test"]
    );
    assert_eq!(
        update_names("alice.pd.test", "laptop", true),
        [
            "_portdistrict.laptop.alice.pd.test",
            "_portdistrict.alice.pd.test",
            "_portdistrict-trust.alice.pd.test"
        ]
    );
}

#[test]
fn master_and_device_records_round_trip_through_envelope_and_txt() {
    let (alice, laptop, roster) = alice_roster();
    let bob = Seed::from_bytes([2; 32]);
    let bob_pub = bob.public("bob.pd.test").unwrap().ecdh;
    let name = master_name("alice.pd.test");
    let signed = roster.sign(&alice.master()).unwrap();
    let env = seal(&signed, &name, &[bob_pub], &mut rng()).unwrap();
    let txt = to_txt(&env);
    assert!(txt.iter().flatten().all(|s| s.len() <= 255));
    let back = from_txt(&txt).unwrap();
    assert_eq!(back, env);
    let plain = open(&back, &name, &bob.ecdh()).unwrap();
    let master = alice.public("alice.pd.test").unwrap().master;
    assert_eq!(
        MasterRecord::verify(&plain, &name, &master, 1_800_000_001).unwrap(),
        roster
    );

    let rec = DeviceRecord {
        namespace: "alice.pd.test".into(),
        device: "laptop".into(),
        issued: 1_800_000_000,
        expires: 1_800_003_600,
        wg_key: [7; 32],
        subnet: subnet_of("laptop"),
        endpoints: vec![
            "192.0.2.1:51820".parse().unwrap(),
            "[2001:db8::1]:51820".parse().unwrap(),
        ],
        facilitator: None,
    };
    let dname = device_name("alice.pd.test", "laptop");
    let signed = rec.sign(&laptop.signing()).unwrap();
    let env = seal(
        &signed,
        &dname,
        &[bob_pub, laptop.public("laptop").ecdh],
        &mut rng(),
    )
    .unwrap();
    let plain = open(&from_txt(&to_txt(&env)).unwrap(), &dname, &bob.ecdh()).unwrap();
    assert_eq!(
        DeviceRecord::verify(&plain, &dname, &roster, 1_800_000_001).unwrap(),
        rec
    );
    // The device itself is a reader too.
    assert!(open(&env, &dname, &laptop.ecdh()).is_ok());

    // A record naming a facilitator round-trips; without one the bytes are the
    // earlier format's (nothing after the endpoints).
    let with = DeviceRecord {
        facilitator: Some(("203.0.113.1:7447".parse().unwrap(), [3; 32])),
        ..rec.clone()
    };
    let signed_with = with.sign(&laptop.signing()).unwrap();
    assert_eq!(signed_with.len(), signed.len() + 1 + 7 + 32);
    assert_eq!(
        DeviceRecord::verify(&signed_with, &dname, &roster, 1_800_000_001).unwrap(),
        with
    );
}

#[test]
fn only_readers_open_and_every_alteration_is_caught() {
    let (alice, _laptop, roster) = alice_roster();
    let bob = Seed::from_bytes([2; 32]);
    let eve = Seed::from_bytes([3; 32]);
    let name = master_name("alice.pd.test");
    let signed = roster.sign(&alice.master()).unwrap();
    let env = seal(
        &signed,
        &name,
        &[bob.public("b.pd.test").unwrap().ecdh],
        &mut rng(),
    )
    .unwrap();
    assert_eq!(open(&env, &name, &eve.ecdh()), Err(RecordError::NotForUs));
    // Found at another name: the ciphertext is bound to its owner name.
    assert_eq!(
        open(&env, &master_name("mallory.pd.test"), &bob.ecdh()),
        Err(RecordError::Altered)
    );
    for i in 0..env.len() {
        let mut bad = env.clone();
        bad[i] ^= 1;
        assert!(open(&bad, &name, &bob.ecdh()).is_err(), "byte {i}");
    }
    // A signed record altered anywhere fails its signature (or its parse).
    let master = alice.public("alice.pd.test").unwrap().master;
    for i in 0..signed.len() {
        let mut bad = signed.clone();
        bad[i] ^= 1;
        assert!(
            MasterRecord::verify(&bad, &name, &master, 1_800_000_001).is_err(),
            "byte {i}"
        );
    }
    assert_eq!(
        MasterRecord::verify(&signed, &name, &master, 1_800_086_400),
        Err(RecordError::Expired(1_800_086_400))
    );
    // Signed by someone else.
    let other = Seed::from_bytes([9; 32])
        .public("alice.pd.test")
        .unwrap()
        .master;
    assert_eq!(
        MasterRecord::verify(&signed, &name, &other, 1_800_000_001),
        Err(RecordError::Signature)
    );
}

#[test]
fn a_device_outside_the_roster_is_refused() {
    let (_alice, _laptop, roster) = alice_roster();
    let intruder = DeviceKeys::from_seed([66; 32]);
    let rec = DeviceRecord {
        namespace: "alice.pd.test".into(),
        device: "phone".into(),
        issued: 1,
        expires: u64::MAX,
        wg_key: [7; 32],
        subnet: 5,
        endpoints: vec![],
        facilitator: None,
    };
    let signed = rec.sign(&intruder.signing()).unwrap();
    let at = device_name("alice.pd.test", "phone");
    assert_eq!(
        DeviceRecord::verify(&signed, &at, &roster, 2),
        Err(RecordError::NotDelegated("phone".into()))
    );
    // Claiming the laptop's name with the intruder's key fails the signature.
    let mut as_laptop = rec.clone();
    as_laptop.device = "laptop".into();
    let signed = as_laptop.sign(&intruder.signing()).unwrap();
    let at = device_name("alice.pd.test", "laptop");
    assert_eq!(
        DeviceRecord::verify(&signed, &at, &roster, 2),
        Err(RecordError::Signature)
    );
}

#[test]
fn trust_records_and_device_requests_round_trip_and_refuse_alteration() {
    let alice = Seed::from_bytes([1; 32]);
    let master = alice.public("alice.pd.test").unwrap().master;
    let t = TrustRecord {
        namespace: "alice.pd.test".into(),
        issued: 1,
        expires: 100,
        peers: vec![Seed::from_bytes([2; 32]).public("bob.pd.test").unwrap()],
    };
    let at = trust_name("alice.pd.test");
    let signed = t.sign(&alice.master()).unwrap();
    assert_eq!(TrustRecord::verify(&signed, &at, &master, 2).unwrap(), t);
    for i in 0..signed.len() {
        let mut bad = signed.clone();
        bad[i] ^= 1;
        assert!(
            TrustRecord::verify(&bad, &at, &master, 2).is_err(),
            "byte {i}"
        );
    }
    // A master record is not a trust record, even when correctly signed.
    let (_, _, roster) = alice_roster();
    let m = roster.sign(&alice.master()).unwrap();
    assert!(TrustRecord::verify(&m, &master_name("alice.pd.test"), &master, 2).is_err());

    let phone = DeviceKeys::from_seed([12; 32]);
    let line = DeviceRequest::encode(&phone, "alice.pd.test", "phone").unwrap();
    let req = DeviceRequest::decode(&line).unwrap();
    assert_eq!(req.device, phone.public("phone"));
    assert_eq!(req.namespace, "alice.pd.test");
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&line[DEVICE_REQUEST_PREFIX.len()..])
        .unwrap();
    for i in 0..raw.len() {
        let mut bad = raw.clone();
        bad[i] ^= 1;
        let text = format!(
            "{DEVICE_REQUEST_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bad)
        );
        assert!(DeviceRequest::decode(&text).is_err(), "byte {i}");
    }
    assert!(DeviceRequest::encode(&phone, "alice.pd.test", "Bad Name").is_err());
}

#[test]
fn chunks_reassemble_in_any_order_and_gaps_are_reported() {
    let env: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let mut txt = to_txt(&env);
    assert!(txt.len() > 1);
    txt.reverse();
    txt.push(vec!["v=spf1 -all".into()]);
    assert_eq!(from_txt(&txt).unwrap(), env);
    txt.remove(1);
    assert_eq!(
        from_txt(&txt),
        Err(RecordError::Chunks("a chunk is missing"))
    );
    assert!(from_txt(&[]).is_err());
    assert!(from_txt(&[vec!["pd1 0/1 AAAA".into()]]).is_err());
    assert!(from_txt(&[vec!["pd1 1/2 AAAA".into()], vec!["pd1 2/3 AAAA".into()]]).is_err());
}

#[test]
fn parsers_never_panic_on_short_or_random_input() {
    let (alice, _l, roster) = alice_roster();
    let master = alice.public("alice.pd.test").unwrap().master;
    let eve = Seed::from_bytes([3; 32]).ecdh();
    let mut r = rng();
    for len in 0..300 {
        let mut b = vec![0u8; len];
        r.fill_bytes(&mut b);
        let _ = MasterRecord::verify(&b, "x", &master, 0);
        let _ = DeviceRecord::verify(&b, "x", &roster, 0);
        let _ = open(&b, "x", &eve);
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The golden vectors of docs/protocol.md, computed.
fn golden() -> String {
    use crate::identity::{KdfParams, SealedSeed};
    use std::fmt::Write as _;
    let mut g = String::new();
    let alice = Seed::from_bytes([1; 32]);
    let p = alice.public("alice.pd.test").unwrap();
    let _ = writeln!(
        g,
        "identity seed            01 x 32, namespace alice.pd.test"
    );
    let _ = writeln!(g, "master public key        {}", hex(&p.master));
    let _ = writeln!(g, "identity-ECDH public key {}", hex(&p.ecdh));
    let _ = writeln!(g, "node ID                  {}", p.node_id());
    let _ = writeln!(g, "fingerprint              {}", p.fingerprint());
    let _ = writeln!(g, "overlay prefix           {}/48", p.overlay_prefix());
    let _ = writeln!(g, "bundle (created 1800000000)");
    let _ = writeln!(
        g,
        "  {}",
        alice.bundle("alice.pd.test", 1_800_000_000).unwrap()
    );
    let cheap = KdfParams {
        m_kib: 64,
        t: 1,
        p: 1,
    };
    let sealed = SealedSeed::seal_with(
        &alice,
        b"correct horse battery staple",
        cheap,
        [5; 16],
        [6; 12],
    )
    .unwrap();
    let _ = writeln!(g, "sealed seed (passphrase \"correct horse battery staple\", m=64 KiB t=1 p=1, salt 05 x 16, nonce 06 x 12)");
    let _ = writeln!(g, "  {}", serde_json::to_string(&sealed).unwrap());
    let (alice, laptop, roster) = alice_roster();
    let lp = laptop.public("laptop");
    let _ = writeln!(g, "device seed              0b x 32, name laptop");
    let _ = writeln!(g, "device signing key       {}", hex(&lp.signing));
    let _ = writeln!(g, "device ECDH key          {}", hex(&lp.ecdh));
    let wg = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(laptop.wireguard()));
    let _ = writeln!(g, "device WireGuard key     {}", hex(wg.as_bytes()));
    let _ = writeln!(g, "device subnet            {:#06x}", subnet_of("laptop"));
    let signed = roster.sign(&alice.master()).unwrap();
    let _ = writeln!(
        g,
        "master record (issued 1800000000, expires 1800086400), signed"
    );
    for line in hex(&signed).as_bytes().chunks(64) {
        let _ = writeln!(g, "  {}", String::from_utf8_lossy(line));
    }
    let rec = DeviceRecord {
        namespace: "alice.pd.test".into(),
        device: "laptop".into(),
        issued: 1_800_000_000,
        expires: 1_800_003_600,
        wg_key: *wg.as_bytes(),
        subnet: subnet_of("laptop"),
        endpoints: vec![
            "192.0.2.1:51820".parse().unwrap(),
            "[2001:db8::1]:51820".parse().unwrap(),
        ],
        facilitator: None,
    };
    let dsigned = rec.sign(&laptop.signing()).unwrap();
    let _ = writeln!(g, "device record (laptop, expires 1800003600, 192.0.2.1:51820 and [2001:db8::1]:51820), signed");
    for line in hex(&dsigned).as_bytes().chunks(64) {
        let _ = writeln!(g, "  {}", String::from_utf8_lossy(line));
    }
    let trust = TrustRecord {
        namespace: "alice.pd.test".into(),
        issued: 1_800_000_000,
        expires: 1_800_003_600,
        peers: vec![Seed::from_bytes([2; 32]).public("bob.pd.test").unwrap()],
    };
    let tsigned = trust.sign(&alice.master()).unwrap();
    let _ = writeln!(g, "trust record (bob trusted, expires 1800003600), signed");
    for line in hex(&tsigned).as_bytes().chunks(64) {
        let _ = writeln!(g, "  {}", String::from_utf8_lossy(line));
    }
    let phone = DeviceKeys::from_seed([12; 32]);
    let _ = writeln!(g, "device request (device seed 0c x 32, name phone)");
    let _ = writeln!(
        g,
        "  {}",
        DeviceRequest::encode(&phone, "alice.pd.test", "phone").unwrap()
    );
    let bob = Seed::from_bytes([2; 32])
        .public("bob.pd.test")
        .unwrap()
        .ecdh;
    let env = seal(&signed, &master_name("alice.pd.test"), &[bob], &mut rng()).unwrap();
    let _ = writeln!(g, "master record sealed to bob (seed 02 x 32) with ChaCha20Rng seed 2a x 32, as TXT at _portdistrict.alice.pd.test");
    for rr in to_txt(&env) {
        for s in rr {
            let _ = writeln!(g, "  \"{s}\"");
        }
    }
    g
}

// The document is the one file a test of the core reads (and rewrites on request).
#[allow(clippy::disallowed_methods)]
#[test]
fn docs_protocol_md_has_the_golden_vectors() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol.md");
    let doc = std::fs::read_to_string(&path).expect("docs/protocol.md");
    let (begin, end) = (
        "<!-- golden:begin -->\n```text\n",
        "```\n<!-- golden:end -->",
    );
    let want = golden();
    let (a, b) = (
        doc.find(begin).expect("golden:begin marker"),
        doc.find(end).expect("golden:end marker"),
    );
    let have = &doc[a + begin.len()..b];
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let new = format!("{}{begin}{want}{}", &doc[..a], &doc[b..]);
        std::fs::write(&path, new).unwrap();
        return;
    }
    assert_eq!(
        have, want,
        "docs/protocol.md's golden vectors differ from the code; review, then UPDATE_GOLDEN=1"
    );
}
