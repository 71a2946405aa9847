//! Attested exits end to end: a provider runs `exit serve --attestation DIR` with a
//! report signed by a synthetic SEV-SNP chain (RSA-PSS ARK and ASK, P-384 VCEK, its
//! ARK pinned with `--attestation-root`) and bound to its own exit channel and
//! WireGuard keys (`exit attestation-data`); consumers run `portdistrict use` with
//! grants (`exit grant`, signed by their own identity) or pinned invites (`exit
//! invite --measurement`). An impostor provider (this test, speaking the exit channel
//! with its own keys) serves no attestation, the honest provider's attestation, and
//! reports of its own that were altered or measure otherwise.
//!
//! ```text
//!  consumer  --71--+
//!  consumer2 --72--+-- internet (router, echo) --70-- provider (exit serve, attested)
//!  burst     --73--+                           --74-- impostor (this test)
//! ```
//!
//! Checks each case exercises (the verifier runs all twelve every time: root, ark,
//! ask, vcek, validity, tcb, chip_id, signature, policy, vmpl, measurement,
//! report_data; the first failure is the reason given):
//! - granted, repaired (the saved grant), pinned invite, burst: every check passes (measurement and report_data
//!   against the grant and the invite's keys);
//! - a grant or pinned invite for another image: measurement;
//! - the impostor with the honest provider's attestation: report_data;
//! - the impostor with an altered report: signature;
//! - the impostor without an attestation: refused before any check (missing).
//!
//! Every refusal leaves the consumer's machine exactly as it was (snapshots of
//! addresses, routes, rules, nftables, sysctls and resolver file), and the consumer
//! never confirms (the impostor sees no transport message), so a provider changes
//! nothing for it either.

use portdistrict_control::consumer::channel::Pins;
use portdistrict_control_core::attest::grant::Grant;
use portdistrict_control_core::attest::{binding, synthetic};
use portdistrict_exitnode::channel::{
    Answer, Attestation, FrameDecoder, NoiseSecretKey, Reply, Responder, TokenId,
};
use portdistrict_exitnode::invite::{Channel, Invite, Transport};
use portdistrict_netns_tests::exit::{echo, internet, start_echo, Consumer, Provider, ECHO_V4};
use portdistrict_netns_tests::{unique_ifname, CliMachine, Netns, TempDir, Veth};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The launch measurement of the image the provider runs.
const MEASURED: [u8; 48] = [0x3e; 48];
/// Another image's.
const OTHER: [u8; 48] = [0x5a; 48];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A consumer behind the internet with an identity of its own (seed in a key file),
/// so that it can sign grants for itself.
fn consumer(role: &str, internet: &Netns, subnet: u8) -> (Consumer, Veth) {
    let (c, link) = Consumer::new(role, internet, subnet, &format!("nameserver {ECHO_V4}\n"));
    c.machine
        .init_identity(&format!("{role}.pd.test"), "laptop");
    (c, link)
}

/// `exit grant` on the consumer for `measurement`, written to a file; its path.
fn grant(c: &Consumer, measurement: &[u8; 48]) -> String {
    let path = c
        .machine
        .state
        .path()
        .join(format!("grant-{}.txt", hex(&measurement[..2])));
    let p = path.to_string_lossy().into_owned();
    c.run(&[
        "exit",
        "grant",
        "--measurement",
        &hex(measurement),
        "--smt",
        "forbidden",
        "--min-abi",
        "1.51",
        "--out",
        &p,
    ]);
    p
}

/// `use INVITE --mode system` with `extra`, which must fail saying `needle`, and leave
/// the machine as it was.
fn refused(c: &Consumer, invite: &str, extra: &[&str], needle: &str) {
    let before = c.snapshot(&[]);
    let out = c.try_use_with(invite, extra);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "use must be refused ({needle})");
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(
        c.snapshot(&[]),
        before,
        "a refused exit changed the machine"
    );
    assert!(c.run(&["use", "status"]).contains("system mode: off"));
}

/// A provider that speaks the exit channel with keys of its own and serves whatever
/// attestation the test sets; it counts consumers that confirmed (sent a transport
/// message after its reply).
struct Impostor {
    attestation: Arc<Mutex<Option<Attestation>>>,
    confirmed: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Its invite, signed with a key of its own.
    invite: String,
    /// Its channel and WireGuard keys.
    noise_public: [u8; 32],
    wg_public: [u8; 32],
}

impl Impostor {
    fn start(ns: &Netns, addr: SocketAddr) -> Impostor {
        let noise = NoiseSecretKey::from_bytes([0x44; 32]);
        let wg_public = *portdistrict_wg::PrivateKey::from_bytes([0x45; 32])
            .public_key()
            .as_bytes();
        let token = [0x46; 16];
        let signer = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[0x47; 32]).unwrap();
        let invite = Invite {
            transport: Transport::WireGuardUdp,
            wg_key: wg_public,
            signer: [0; 32],
            token,
            channel: Some(Channel {
                noise_key: noise.public().0,
                port: addr.port(),
            }),
            pin: None,
            expires: u64::MAX / 2,
            uses: 1,
            endpoints: vec![addr],
        }
        .encode(&signer);
        let listener = portdistrict_testkit::netns::run_in(ns.name(), || TcpListener::bind(addr))
            .expect("entering the impostor's namespace")
            .expect("binding the impostor's port");
        listener.set_nonblocking(true).unwrap();
        let attestation = Arc::new(Mutex::new(None));
        let confirmed = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let noise_public = noise.public().0;
        let thread = {
            let (attestation, confirmed, answered, stop) = (
                Arc::clone(&attestation),
                Arc::clone(&confirmed),
                Arc::clone(&answered),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                let mut responder = Responder::new(noise, 64);
                let consumers = move |_: &portdistrict_exitnode::channel::NoisePublicKey,
                                      id: &TokenId| {
                    (*id == TokenId::of(&token)).then_some(token)
                };
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut s, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                    let Some((kind, body)) = read_frame(&mut s) else {
                        continue;
                    };
                    let frame = portdistrict_exitnode::channel::Frame { kind, body: &body };
                    let Ok(pending) = responder.read_hello(frame, &consumers) else {
                        continue;
                    };
                    let reply = Reply {
                        answer: Answer::Ack {
                            inner_v4: "100.64.0.2".parse().unwrap(),
                            inner_v6: None,
                            resolver: "100.64.0.1".parse().unwrap(),
                        },
                        attestation: attestation.lock().unwrap().clone(),
                    };
                    let mut out = Vec::new();
                    if pending.answer(&reply, &mut out).is_err() || s.write_all(&out).is_err() {
                        continue;
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                    // A consumer that accepted the exit would confirm now.
                    if read_frame(&mut s).is_some() {
                        confirmed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        Impostor {
            attestation,
            confirmed,
            answered,
            stop,
            thread: Some(thread),
            invite,
            noise_public,
            wg_public,
        }
    }

    fn serve(&self, a: Option<Attestation>) {
        *self.attestation.lock().unwrap() = a;
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One frame from `s`, or `None` on a timeout, a close or garbage.
fn read_frame(
    s: &mut std::net::TcpStream,
) -> Option<(portdistrict_exitnode::channel::FrameKind, Vec<u8>)> {
    let mut dec = FrameDecoder::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).ok().filter(|&n| n > 0)?;
        let mut input = &buf[..n];
        if let Some(f) = dec.decode(&mut input).ok()? {
            return Some((f.kind, f.body.to_vec()));
        }
    }
}

/// The synthetic chain's files for `spec`, as an attestation frame.
fn attestation(spec: &synthetic::Spec) -> Attestation {
    let chain = synthetic::Chain::get();
    Attestation {
        report: chain.signed_report(spec),
        vcek: chain.vcek_der().to_vec(),
        chain: chain.chain_pem().to_vec(),
    }
}

#[test]
fn attested_exits_are_used_only_as_their_pins_say() {
    let internet = internet("xt-internet");
    let _echo = start_echo(&internet, &[7000], &[ECHO_V4]);
    let chain = synthetic::Chain::get();
    let root = hex(&chain.ark_fingerprint());

    // The provider: its report binds its own keys and measures MEASURED.
    let (pns, uplink) = Netns::behind("xt-provider", &internet, 70);
    let provider = Provider {
        machine: CliMachine::with_run_dir(pns, TempDir::new("xt-pstate"), TempDir::new("xt-prun")),
        ifname: unique_ifname("pdt"),
        uplink: uplink.a_name().to_owned(),
    };
    let data: serde_json::Value =
        serde_json::from_str(&provider.run(&["exit", "attestation-data", "--json"])).unwrap();
    let report_data: [u8; 64] = (0..64)
        .map(|i| {
            u8::from_str_radix(&data["report_data"].as_str().unwrap()[2 * i..2 * i + 2], 16)
                .unwrap()
        })
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let honest = chain.spec(MEASURED, report_data);
    let dir = TempDir::new("xt-attestation");
    chain.write_dir(dir.path(), &honest).unwrap();
    let endpoint = format!("{}:51820", uplink.v4(1));
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let serve = provider.serve(
        ECHO_V4,
        &[
            "--endpoint",
            &endpoint,
            "--attestation",
            &dir_arg,
            "--attestation-root",
            &root,
        ],
    );
    // Obtained once at start: from now on no file of it is read again.
    for f in synthetic::FILES {
        std::fs::remove_file(dir.path().join(f)).unwrap();
    }

    // (1) A grant for another image: refused on the measurement, machine untouched.
    let (c1, _c1_link) = consumer("xt-consumer", &internet, 71);
    let before = c1.snapshot(&[]);
    let wrong = grant(&c1, &OTHER);
    let inv = provider.run(&["exit", "invite"]);
    refused(
        &c1,
        &inv,
        &["--grant", &wrong, "--attestation-root", &root],
        "fails its check measurement",
    );
    // Without the synthetic root pinned, the chain is not AMD's: refused on the root.
    let right = grant(&c1, &MEASURED);
    refused(&c1, &inv, &["--grant", &right], "fails its check root");

    // (2) The grant for the image it runs: system mode, traffic through the provider.
    let off: serde_json::Value =
        serde_json::from_str(&c1.run(&["use", "status", "--json"])).unwrap();
    assert_eq!(off["system_mode"], false, "{off}");
    let said = c1.use_ok_with(&inv, &["--grant", &right, "--attestation-root", &root]);
    assert!(said.contains("system mode on"), "{said}");
    assert_eq!(echo(c1.ns(), "udp", ECHO_V4), uplink.v4(1).to_string());
    let on: serde_json::Value =
        serde_json::from_str(&c1.run(&["use", "status", "--json"])).unwrap();
    assert_eq!(on["system_mode"], true, "{on}");
    assert_eq!(on["kill_switch"], "on", "{on}");
    assert_eq!(on["tunnel"], "up", "{on}");
    assert_eq!(on["grants"], 1, "{on}");
    // `ping provider` probes through the tunnel.
    let pinged = c1.run(&["ping", "provider", "--count", "2"]);
    assert!(pinged.contains("2 sent, 2 answered"), "{pinged}");
    // `status` summarizes every role: this machine is a consumer only (it has an
    // identity for its grants, so a mesh part too, but no exit node).
    let all: serde_json::Value = serde_json::from_str(&c1.run(&["status", "--json"])).unwrap();
    assert_eq!(all["consumer"]["system_mode"], true, "{all}");
    assert_eq!(all["consumer"]["tunnel"], "up", "{all}");
    assert!(all["provider"].is_null(), "{all}");
    assert_eq!(on["provider"], endpoint.as_str(), "{on}");
    assert!(
        on["granted"]["inner_v4"]
            .as_str()
            .unwrap()
            .starts_with("100.64."),
        "{on}"
    );
    // Its dataplane killed: `use` again (the pins it saved, none given) asks and
    // judges again through the kill switch, and brings the tunnel back; other pins
    // on a repair are refused.
    for pid in c1.dataplane_pids() {
        c1.ns().exec(&["kill", "-KILL", &pid.to_string()]);
    }
    let e = c1.try_use_with(&inv, &["--grant", &wrong]);
    assert!(!e.status.success());
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("other grants"),
        "{}",
        String::from_utf8_lossy(&e.stderr)
    );
    let said = c1.use_ok(&inv);
    assert!(said.contains("system mode on"), "{said}");
    assert_eq!(echo(c1.ns(), "udp", ECHO_V4), uplink.v4(1).to_string());
    c1.run(&["use", "off"]);
    assert_eq!(c1.snapshot(&[]), before, "use off after an attested exit");

    // (3) An invite that pins the image itself, no grant: refused when it pins
    // another image, used when it pins this one.
    let (c2, _c2_link) = consumer("xt-consumer2", &internet, 72);
    let pinned_other = provider.run(&["exit", "invite", "--measurement", &hex(&OTHER)]);
    refused(
        &c2,
        &pinned_other,
        &["--attestation-root", &root],
        "fails its check measurement",
    );
    let pinned = provider.run(&[
        "exit",
        "invite",
        "--measurement",
        &hex(&MEASURED),
        "--min-abi",
        "1.51",
        "--smt",
        "forbidden",
    ]);
    let said = c2.use_ok_with(&pinned, &["--attestation-root", &root]);
    assert!(said.contains("system mode on"), "{said}");
    assert_eq!(echo(c2.ns(), "tcp", ECHO_V4), uplink.v4(1).to_string());
    c2.run(&["use", "off"]);

    // (4) An impostor with keys of its own.
    let (ins, ilink) = Netns::behind("xt-impostor", &internet, 74);
    let impostor = Impostor::start(&ins, SocketAddr::new(ilink.v4(1).into(), 51820));
    let pins = [
        "--grant",
        right.as_str(),
        "--attestation-root",
        root.as_str(),
    ];
    impostor.serve(None);
    refused(&c1, &impostor.invite, &pins, "sent no attestation");
    // The honest provider's attestation, replayed: it binds the provider's keys.
    impostor.serve(Some(attestation(&honest)));
    refused(&c1, &impostor.invite, &pins, "fails its check report_data");
    // Its own keys bound, the image pinned, then a byte of the report changed.
    let own = chain.spec(
        MEASURED,
        binding(&impostor.noise_public, &impostor.wg_public),
    );
    let mut altered = attestation(&own);
    altered.report[0x90] ^= 1;
    impostor.serve(Some(altered));
    refused(&c1, &impostor.invite, &pins, "fails its check signature");
    // Signed properly, but another image.
    impostor.serve(Some(attestation(&chain.spec(OTHER, own.report_data))));
    refused(&c1, &impostor.invite, &pins, "fails its check measurement");
    assert_eq!(impostor.answered.load(Ordering::Relaxed), 4);
    assert_eq!(
        impostor.confirmed.load(Ordering::Relaxed),
        0,
        "a consumer confirmed an exit it refused"
    );
    // Without any pin the same consumer would take the impostor: pins are what
    // protect it (confirmed, then refused for lack of a tunnel).
    drop(impostor);

    // (5) 80 consumers at once, each asking with the grant: every one verified the
    // attestation the provider obtained once (its files are gone).
    let (bns, _blink) = Netns::behind("xt-burst", &internet, 73);
    let burst_invite = Invite::decode(&provider.run(&["exit", "invite", "--uses", "80"])).unwrap();
    let pins = Pins {
        grants: vec![Grant::decode(std::fs::read_to_string(&right).unwrap().trim()).unwrap()],
        invite: None,
        extra_roots: vec![chain.ark_fingerprint()],
    };
    let start = Instant::now();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..80)
            .map(|_| {
                let key = portdistrict_wg::PrivateKey::generate(&mut rand_core::OsRng);
                let (bns, inv, pins) = (&bns, &burst_invite, &pins);
                s.spawn(move || {
                    portdistrict_netns_tests::exit::ask(
                        bns,
                        inv,
                        &key.to_base64(),
                        pins,
                        Duration::from_secs(30),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = start.elapsed();
    let mut addrs = std::collections::BTreeSet::new();
    for r in &results {
        let a = r
            .as_ref()
            .unwrap_or_else(|e| panic!("a burst consumer failed: {e}"));
        assert_eq!(a.measurement, Some(MEASURED));
        addrs.insert(a.granted.inner_v4);
    }
    assert_eq!(addrs.len(), 80, "80 distinct grants");
    eprintln!(
        "80 consumers negotiated with attestation at once in {:.2} s",
        took.as_secs_f64()
    );
    let list = provider.run(&["exit", "list"]);
    assert!(list.contains("consumers: 82"), "{list}");
    drop(serve);
}
