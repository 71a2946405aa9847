//! Tests of the region: the ABI layout, round trips between two mappings, torn
//! reads, corrupt, shrunk and reset regions.

use std::fs::OpenOptions;
use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use crate::layout::Layout;
use crate::*;

struct TempFile(PathBuf);
impl TempFile {
    fn new(tag: &str) -> TempFile {
        TempFile(std::env::temp_dir().join(format!("pd-shm-{tag}-{}", std::process::id())))
    }
}
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn peer(k: u8, n_allowed: usize) -> PeerConfig {
    PeerConfig {
        public_key: [k; 32],
        preshared_key: k.is_multiple_of(2).then_some([k ^ 0xff; 32]),
        endpoint: Some(if k.is_multiple_of(2) {
            SocketAddr::from(([192, 0, 2, k], 51820))
        } else {
            "[2001:db8::1]:4500".parse().unwrap()
        }),
        keepalive: 25,
        allowed: (0..n_allowed)
            .map(|i| {
                (
                    IpAddr::V6(Ipv6Addr::new(0xfd00, u16::from(k), i as u16, 0, 0, 0, 0, 0)),
                    64,
                )
            })
            .collect(),
    }
}

#[test]
fn the_layout_is_the_documented_abi() {
    assert_eq!(size_of::<Header>(), 128);
    assert_eq!(size_of::<AllowedEntry>(), 20);
    assert_eq!(size_of::<PeerEntry>(), 412);
    assert_eq!(size_of::<StatsEntry>(), 104);
    assert_eq!(size_of::<CommandEntry>(), 128);
    assert_eq!(offset_of!(StatsEntry, handshake_source_family), 76);
    assert_eq!(offset_of!(StatsEntry, handshake_source_addr), 80);
    assert_eq!(offset_of!(StatsEntry, handshake_source_ms), 96);
    assert_eq!(offset_of!(CommandEntry, public_key), 8);
    assert_eq!(offset_of!(CommandEntry, addr), 40);
    assert_eq!(offset_of!(CommandEntry, payload_len), 56);
    assert_eq!(offset_of!(CommandEntry, payload), 64);
    assert_eq!(offset_of!(Header, config_gen), 32);
    assert_eq!(offset_of!(Header, stats_gen), 40);
    assert_eq!(offset_of!(Header, ring_head), 48);
    assert_eq!(offset_of!(Header, private_key), 56);
    assert_eq!(offset_of!(Header, applied_gen), 112);
    assert_eq!(offset_of!(PeerEntry, allowed), 92);
    let l = Layout::new(10);
    assert_eq!(l.len, 128 + 10 * 412 + 10 * 104 + 64 * 128);
}

#[test]
fn every_entry_is_aligned_for_every_capacity() {
    for capacity in [1, 2, 3, 7, 1024, MAX_PEERS - 1, MAX_PEERS] {
        let l = Layout::new(capacity);
        assert_eq!(l.peers % std::mem::align_of::<PeerEntry>(), 0, "{capacity}");
        assert_eq!(
            l.stats % std::mem::align_of::<StatsEntry>(),
            0,
            "{capacity}"
        );
        assert_eq!(
            l.ring % std::mem::align_of::<CommandEntry>(),
            0,
            "{capacity}"
        );
    }
    assert_eq!(Layout::new(1).stats, 128 + 412 + 4);
}

#[test]
fn a_configuration_round_trips_between_two_mappings() {
    let f = TempFile::new("roundtrip");
    let w = Region::create(&f.0, 8).unwrap();
    let r = Region::open(&f.0).unwrap();
    assert_eq!(r.read_config().unwrap(), (0, Config::default()));
    let cfg = Config {
        private_key: Some([9; 32]),
        listen_port: 51820,
        fwmark: 0xca6c,
        peers: vec![peer(1, 1), peer(2, MAX_ALLOWED)],
    };
    w.write_config(&cfg).unwrap();
    let (g, got) = r.read_config().unwrap();
    assert_eq!(got, cfg);
    assert!(g.is_multiple_of(2));
    assert!(g > 0);
    let too_many = Config {
        peers: (0..9).map(|k| peer(k, 1)).collect(),
        ..Config::default()
    };
    assert!(matches!(
        w.write_config(&too_many),
        Err(ShmError::TooManyPeers(9, 8))
    ));
    assert!(matches!(
        w.write_config(&Config {
            peers: vec![peer(1, MAX_ALLOWED + 1)],
            ..Config::default()
        }),
        Err(ShmError::TooManyAllowed(17))
    ));
    assert_eq!(
        r.read_config().unwrap().1,
        cfg,
        "a refused write changes nothing"
    );
}

#[test]
fn readers_never_see_a_half_written_table() {
    let f = TempFile::new("torn");
    let w = Region::create(&f.0, 64).unwrap();
    let r = Region::open(&f.0).unwrap();
    let a = Config {
        listen_port: 1,
        peers: (0..64).map(|k| peer(k, 4)).collect(),
        ..Config::default()
    };
    let b = Config {
        listen_port: 2,
        peers: (100..110).map(|k| peer(k, 16)).collect(),
        ..Config::default()
    };
    w.write_config(&a).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..2000u32 {
                w.write_config(if i.is_multiple_of(2) { &b } else { &a })
                    .unwrap();
            }
            stop.store(true, Ordering::Relaxed);
        });
        let mut reads = 0;
        while !stop.load(Ordering::Relaxed) || reads < 100 {
            match r.read_config() {
                Ok((_, c)) => {
                    assert!(
                        c == a || c == b,
                        "a torn read: port {} with {} peers",
                        c.listen_port,
                        c.peers.len()
                    );
                    reads += 1;
                }
                Err(ShmError::Busy) => {}
                Err(e) => panic!("{e}"),
            }
        }
    });
}

#[test]
fn a_corrupt_region_is_an_error_not_a_crash() {
    let f = TempFile::new("corrupt");
    {
        let w = Region::create(&f.0, 4).unwrap();
        w.write_config(&Config {
            peers: vec![peer(1, 2)],
            ..Config::default()
        })
        .unwrap();
    }
    // Garbage in an entry: a family that does not exist.
    let mut bytes = std::fs::read(&f.0).unwrap();
    let entry = size_of::<Header>();
    bytes[entry + offset_of!(PeerEntry, endpoint_family)] = 9;
    std::fs::write(&f.0, &bytes).unwrap();
    let r = Region::open(&f.0).unwrap();
    let e = r.read_config().unwrap_err();
    assert!(e.to_string().contains("endpoint family 9"), "{e}");
    drop(r);
    // A wrong magic, a wrong size, a short file: refused at open.
    let mut bad = bytes.clone();
    bad[0] ^= 0xff;
    std::fs::write(&f.0, &bad).unwrap();
    assert!(Region::open(&f.0)
        .unwrap_err()
        .to_string()
        .contains("magic"));
    std::fs::write(&f.0, &bytes[..bytes.len() - 1]).unwrap();
    assert!(Region::open(&f.0)
        .unwrap_err()
        .to_string()
        .contains("bytes"));
    std::fs::write(&f.0, &bytes[..10]).unwrap();
    assert!(Region::open(&f.0)
        .unwrap_err()
        .to_string()
        .contains("header"));
    // Random files never panic.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in [128usize, 4096, Layout::new(1).len, Layout::new(4).len] {
        let mut v = vec![0u8; len];
        for b in &mut v {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        v[..8].copy_from_slice(&MAGIC.to_ne_bytes());
        std::fs::write(&f.0, &v).unwrap();
        if let Ok(r) = Region::open(&f.0) {
            let _ = r.read_config();
            let _ = r.read_stats();
            let _ = r.pop_command();
        }
    }
}

/// Set in the child process that [`in_child`] starts.
const CHILD: &str = "PD_SHM_TEST_CHILD";

/// Whether this is the child: in the parent, runs the test `name` again in a child
/// process of this test binary and asserts it passed, so a fault (SIGBUS) fails the
/// test instead of killing the whole harness.
fn in_child(name: &str) -> bool {
    use std::os::unix::process::ExitStatusExt as _;
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the child died ({:?}, signal {:?}; 7 is SIGBUS):\n{log}",
        out.status,
        out.status.signal()
    );
    assert!(log.contains("1 passed"), "the child ran no test:\n{log}");
    false
}

#[test]
fn a_region_truncated_under_its_reader_is_an_error_not_a_sigbus() {
    if !in_child("tests::a_region_truncated_under_its_reader_is_an_error_not_a_sigbus") {
        return;
    }
    let f = TempFile::new("shrunk");
    let control = Region::create(&f.0, 4).unwrap();
    let cfg = Config {
        listen_port: 51820,
        peers: vec![peer(1, 2)],
        ..Config::default()
    };
    control.write_config(&cfg).unwrap();
    let dataplane = Region::open(&f.0).unwrap();
    assert_eq!(dataplane.read_config().unwrap().1, cfg);
    // What the daemon used to do when it re-created a region: truncate the file
    // in place. Every access after it is refused, none faults.
    let file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&f.0)
        .unwrap();
    let shrunk = |r: Result<(), ShmError>, what: &str| match r {
        Err(ShmError::Shrunk { size: 0, need }) => assert_eq!(need, Layout::new(4).len),
        other => panic!("{what}: {other:?}"),
    };
    shrunk(dataplane.config_generation().map(drop), "generation");
    shrunk(dataplane.read_config().map(drop), "read_config");
    shrunk(dataplane.write_stats(&[]), "write_stats");
    shrunk(dataplane.read_stats().map(drop), "read_stats");
    shrunk(dataplane.pop_command().map(drop), "pop_command");
    shrunk(
        control.push_command(Command::Handshake([1; 32])),
        "push_command",
    );
    shrunk(control.write_config(&cfg).map(drop), "write_config");
    shrunk(control.applied_generation().map(drop), "applied_generation");
    shrunk(
        dataplane.set_applied_generation(2),
        "set_applied_generation",
    );
    // Shorter than the region but not empty: still refused.
    file.set_len(4096).unwrap();
    assert!(matches!(
        dataplane.read_config(),
        Err(ShmError::Shrunk { size: 4096, .. })
    ));
    // Grown back to its size, zeros in place of the header: a reset region, never
    // a configuration of zeros (which would remove every peer and the key).
    file.set_len(Layout::new(4).len as u64).unwrap();
    assert!(matches!(dataplane.read_config(), Err(ShmError::Reset(0))));
    assert!(matches!(
        dataplane.config_generation(),
        Err(ShmError::Reset(0))
    ));
}

#[test]
fn creating_a_region_again_leaves_the_old_one_to_its_reader() {
    let f = TempFile::new("recreate");
    let old = Region::create(&f.0, 4).unwrap();
    let cfg = Config {
        private_key: Some([3; 32]),
        listen_port: 51820,
        peers: vec![peer(1, 2)],
        ..Config::default()
    };
    old.write_config(&cfg).unwrap();
    let dataplane = Region::open(&f.0).unwrap();
    let (g, _) = dataplane.read_config().unwrap();
    // A new daemon creates the region at the same path, for a new dataplane.
    let new = Region::create(&f.0, 8).unwrap();
    new.write_config(&Config::default()).unwrap();
    assert_eq!(
        dataplane.read_config().unwrap(),
        (g, cfg),
        "the running dataplane keeps its own region"
    );
    assert_eq!(dataplane.config_generation().unwrap(), g);
    let other = Region::open(&f.0).unwrap();
    assert_eq!(other.capacity(), 8, "the path names the new region");
    assert_eq!(other.read_config().unwrap().1, Config::default());
    let mode = std::fs::metadata(&f.0).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
}

#[test]
fn stats_and_commands_flow_back_and_forth() {
    let f = TempFile::new("stats");
    let control = Region::create(&f.0, 4).unwrap();
    let dataplane = Region::open(&f.0).unwrap();
    let s = vec![PeerStats {
        public_key: [1; 32],
        rx_bytes: 10,
        tx_bytes: 20,
        last_handshake: 1_800_000_000,
        endpoint: Some("192.0.2.1:51820".parse().unwrap()),
        handshake_source: Some(HandshakeSource {
            addr: "[2001:db8::7]:4500".parse().unwrap(),
            unix_millis: 1_800_000_000_123,
        }),
    }];
    dataplane.write_stats(&s).unwrap();
    assert_eq!(control.read_stats().unwrap(), s);
    for k in 0..RING_CAPACITY {
        control
            .push_command(Command::Handshake([k as u8; 32]))
            .unwrap();
    }
    assert!(matches!(
        control.push_command(Command::Handshake([0; 32])),
        Err(ShmError::RingFull)
    ));
    for k in 0..RING_CAPACITY {
        assert_eq!(
            dataplane.pop_command().unwrap(),
            Some(Command::Handshake([k as u8; 32]))
        );
    }
    assert_eq!(dataplane.pop_command().unwrap(), None);
    // Wraps around.
    control.push_command(Command::Handshake([7; 32])).unwrap();
    assert_eq!(
        dataplane.pop_command().unwrap(),
        Some(Command::Handshake([7; 32]))
    );
}

#[test]
fn the_applied_generation_is_reported_raw_whatever_it_holds() {
    let f = TempFile::new("applied");
    let w = Region::create(&f.0, 2).unwrap();
    let r = Region::open(&f.0).unwrap();
    assert_eq!(w.applied_generation().unwrap(), 0, "nothing applied yet");
    let g = w.write_config(&Config::default()).unwrap();
    assert_eq!(r.read_config().unwrap().0, g);
    r.set_applied_generation(g).unwrap();
    assert_eq!(w.applied_generation().unwrap(), g);
    // Whatever another process left in the field (odd, ahead of the
    // configuration, all ones, random bytes): the region still opens, reads and
    // reports it as it is, and the configuration is untouched.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut bogus = vec![1, g + 1, g + 2, u64::MAX, u64::MAX - 1];
    for _ in 0..64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bogus.push(x);
    }
    drop((w, r));
    for v in bogus {
        let mut bytes = std::fs::read(&f.0).unwrap();
        let at = offset_of!(Header, applied_gen);
        bytes[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        std::fs::write(&f.0, &bytes).unwrap();
        let r = Region::open(&f.0).unwrap();
        assert_eq!(r.applied_generation().unwrap(), v);
        assert_eq!(r.read_config().unwrap(), (g, Config::default()));
    }
}

fn ring_pair(tag: &str) -> (TempFile, Region, Region) {
    let f = TempFile::new(tag);
    let control = Region::create(&f.0, 2).unwrap();
    let dataplane = Region::open(&f.0).unwrap();
    (f, control, dataplane)
}

/// Queues `e` as it is, as a producer that writes nonsense would.
fn push_raw(r: &Region, e: CommandEntry) {
    let head = r.ring_head().load(Ordering::Relaxed);
    // SAFETY: the test is the only producer; the slot is past the consumer's tail.
    unsafe { std::ptr::write_volatile(r.ring_ptr((head % RING_CAPACITY) as usize), e) };
    r.ring_head().store(head.wrapping_add(1), Ordering::Release);
}

#[test]
fn every_command_round_trips_through_the_ring() {
    let (_f, control, dataplane) = ring_pair("commands");
    let payload = RawPayload::new(&[0xab; MAX_RAW_PAYLOAD]).unwrap();
    let commands = [
        Command::Handshake([1; 32]),
        Command::Probe {
            peer: [2; 32],
            to: "198.51.100.7:40000".parse().unwrap(),
            ttl: 1,
        },
        Command::Probe {
            peer: [2; 32],
            to: "[2001:db8::2]:51820".parse().unwrap(),
            ttl: 0,
        },
        Command::Pin {
            peer: [3; 32],
            to: Some("203.0.113.9:3478".parse().unwrap()),
        },
        Command::Pin {
            peer: [3; 32],
            to: None,
        },
        Command::Hold {
            peer: [4; 32],
            on: true,
        },
        Command::Hold {
            peer: [4; 32],
            on: false,
        },
        Command::Send {
            to: "198.51.100.7:9".parse().unwrap(),
            ttl: 2,
            payload,
        },
        Command::Send {
            to: "[2001:db8::9]:9".parse().unwrap(),
            ttl: 255,
            payload: RawPayload::new(b"").unwrap(),
        },
    ];
    for c in commands {
        control.push_command(c).unwrap();
    }
    for c in commands {
        assert_eq!(dataplane.pop_command().unwrap(), Some(c));
    }
    assert_eq!(dataplane.pop_command().unwrap(), None);
    let Command::Send { payload: p, .. } = commands[7] else {
        unreachable!()
    };
    assert_eq!(p.as_bytes(), [0xab; MAX_RAW_PAYLOAD]);
}

#[test]
fn commands_that_cannot_be_carried_are_refused_when_pushed() {
    let (_f, control, dataplane) = ring_pair("refused");
    assert!(matches!(
        RawPayload::new(&[0; MAX_RAW_PAYLOAD + 1]),
        Err(ShmError::PayloadTooLong(65))
    ));
    let zero_port: SocketAddr = "192.0.2.1:0".parse().unwrap();
    for c in [
        Command::Probe {
            peer: [1; 32],
            to: zero_port,
            ttl: 1,
        },
        Command::Pin {
            peer: [1; 32],
            to: Some(zero_port),
        },
        Command::Send {
            to: zero_port,
            ttl: 0,
            payload: RawPayload::new(b"x").unwrap(),
        },
    ] {
        assert!(
            matches!(control.push_command(c), Err(ShmError::InvalidDestination(a)) if a == zero_port),
            "{c:?}"
        );
    }
    assert_eq!(dataplane.pop_command().unwrap(), None, "nothing was queued");
}

#[test]
fn malformed_command_entries_are_corrupt_and_skipped() {
    let (_f, control, dataplane) = ring_pair("malformed");
    let good = ring::encode_for_test(&Command::Send {
        to: "192.0.2.1:9".parse().unwrap(),
        ttl: 3,
        payload: RawPayload::new(b"hello").unwrap(),
    });
    let probe = ring::encode_for_test(&Command::Probe {
        peer: [4; 32],
        to: "192.0.2.1:51820".parse().unwrap(),
        ttl: 1,
    });
    let handshake = ring::encode_for_test(&Command::Handshake([5; 32]));
    let pin_none = ring::encode_for_test(&Command::Pin {
        peer: [6; 32],
        to: None,
    });
    let hold = ring::encode_for_test(&Command::Hold {
        peer: [7; 32],
        on: true,
    });
    let bad: Vec<(CommandEntry, &str)> = vec![
        (CommandEntry { ttl: 2, ..hold }, "hold flag 2"),
        (
            CommandEntry {
                family: 4,
                port: 9,
                ..hold
            },
            "destination",
        ),
        (CommandEntry { kind: 0, ..good }, "kind 0"),
        (CommandEntry { kind: 99, ..good }, "kind 99"),
        (CommandEntry { family: 5, ..good }, "family 5"),
        (
            CommandEntry { family: 0, ..good },
            "address without a family",
        ),
        (CommandEntry { port: 0, ..good }, "port 0"),
        (
            CommandEntry {
                payload_len: 65,
                ..good
            },
            "65 bytes",
        ),
        (
            CommandEntry {
                payload_len: u16::MAX,
                ..good
            },
            "65535 bytes",
        ),
        (
            CommandEntry {
                payload_len: 2,
                ..good
            },
            "beyond its length",
        ),
        (
            CommandEntry {
                public_key: [1; 32],
                ..good
            },
            "public key",
        ),
        (
            CommandEntry {
                _pad: [1; 6],
                ..good
            },
            "padding",
        ),
        (
            CommandEntry {
                family: 0,
                port: 0,
                addr: [0; 16],
                ..probe
            },
            "without a destination",
        ),
        (
            CommandEntry {
                payload_len: 1,
                payload: [1; MAX_RAW_PAYLOAD],
                ..probe
            },
            "payload",
        ),
        (
            CommandEntry {
                ttl: 1,
                ..handshake
            },
            "TTL",
        ),
        (
            CommandEntry {
                ttl: 64,
                ..pin_none
            },
            "TTL",
        ),
        (
            CommandEntry {
                port: 7,
                ..pin_none
            },
            "address without a family",
        ),
        (
            CommandEntry {
                family: 4,
                ..handshake
            },
            "port 0",
        ),
    ];
    for (e, why) in &bad {
        push_raw(&control, *e);
        // A good command after each bad one is still read.
        control.push_command(Command::Handshake([9; 32])).unwrap();
        let err = dataplane.pop_command().unwrap_err();
        assert!(
            matches!(&err, ShmError::Corrupt(m) if m.contains(why)),
            "{why}: {err}"
        );
        assert_eq!(
            dataplane.pop_command().unwrap(),
            Some(Command::Handshake([9; 32]))
        );
    }
    // Random entries never panic: they decode to a valid command or are corrupt.
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for _ in 0..2000 {
        let mut bytes = [0u8; size_of::<CommandEntry>()];
        for b in &mut bytes {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        bytes[0] %= 6;
        bytes[1..4].fill(0);
        // SAFETY: CommandEntry is plain integers and byte arrays: any bytes are valid.
        let e: CommandEntry = unsafe { std::mem::transmute(bytes) };
        push_raw(&control, e);
        match dataplane.pop_command() {
            Ok(Some(_)) | Err(ShmError::Corrupt(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_corrupt_handshake_source_in_the_stats_is_an_error() {
    let (_f, control, dataplane) = ring_pair("stats-source");
    let s = PeerStats {
        public_key: [1; 32],
        rx_bytes: 1,
        tx_bytes: 2,
        last_handshake: 3,
        endpoint: None,
        handshake_source: Some(HandshakeSource {
            addr: "192.0.2.7:51820".parse().unwrap(),
            unix_millis: 4,
        }),
    };
    dataplane.write_stats(std::slice::from_ref(&s)).unwrap();
    assert_eq!(control.read_stats().unwrap(), [s]);
    let e = dataplane.stats_ptr(0);
    // SAFETY: entry 0 lies inside the mapping; the test is the only writer.
    unsafe { std::ptr::write_volatile(&raw mut (*e).handshake_source_family, 5) };
    let err = control.read_stats().unwrap_err();
    assert!(err.to_string().contains("endpoint family 5"), "{err}");
}
