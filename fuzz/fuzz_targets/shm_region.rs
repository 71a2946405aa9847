//! Fuzzes the shared-memory region as the other process sees it: its bytes were
//! written by someone we do not trust (a compromised daemon, a stray writer to the
//! file). Opening it, reading the configuration, the statistics and the command ring
//! must never panic or fault, only return a typed [`ShmError`].
//!
//! The first input byte picks the case:
//! - high bit set: the rest is the whole file (exercises `Region::open`'s checks);
//! - `0x40` set: the rest makes a command ([`Command`]: kind, peer, destination,
//!   TTL, payload of any length), which is pushed to a fresh region and must come
//!   back equal, or be refused with a typed error (a payload over 64 bytes, port 0);
//! - otherwise: a valid region for `1 + (byte & 3)` peers is created, and the rest of
//!   the input overwrites it from byte 32 on (everything after the header's magic,
//!   version and sizes, so that opening succeeds and the readers see adversarial
//!   generations, counts, families, prefixes, ring indices and command kinds). It is
//!   read through the creator's mapping and through a second one, opened as the
//!   dataplane opens it.
#![no_main]

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use portdistrict_shm::{
    Command, RawPayload, Region, ShmError, MAX_ALLOWED, MAX_RAW_PAYLOAD, RING_CAPACITY,
};

/// Bytes at the start of the header that the overlay case keeps (magic, ABI version,
/// header, entry and ring sizes, peer capacity).
const KEPT: u64 = 32;

/// One file per fuzzing process, replaced by every input.
fn region_path() -> PathBuf {
    let dir = Path::new("/dev/shm");
    let dir = if dir.is_dir() {
        dir.to_owned()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("pd-fuzz-shm-{}", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let path = region_path();
    if mode & 0xc0 == 0x40 {
        command_round_trip(&path, rest);
    } else if mode & 0x80 != 0 {
        std::fs::write(&path, rest).expect("write the region file");
        if let Ok(region) = Region::open(&path) {
            read_everything(&region);
        }
    } else {
        let capacity = 1 + u32::from(mode & 3);
        let region = Region::create(&path, capacity).expect("create a region");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open the region file");
        let len = file.metadata().expect("region size").len();
        let room = usize::try_from(len - KEPT).expect("region fits memory");
        file.write_all_at(&rest[..rest.len().min(room)], KEPT)
            .expect("overwrite the region");
        read_everything(&region);
        let opened = Region::open(&path).expect("the kept header still validates");
        read_everything(&opened);
    }
    let _ = std::fs::remove_file(&path);
});

/// Reads configuration, statistics and commands; whatever comes back is within the
/// region's limits, and every failure is a corrupt or busy region.
fn read_everything(region: &Region) {
    let capacity = region.capacity() as usize;
    let _ = region.config_generation().map_err(expected);
    match region.read_config() {
        Ok((generation, config)) => {
            assert_eq!(generation % 2, 0, "a published generation is even");
            assert!(config.peers.len() <= capacity);
            for peer in &config.peers {
                assert!(peer.allowed.len() <= MAX_ALLOWED);
                for (addr, prefix) in &peer.allowed {
                    let max = if addr.is_ipv4() { 32 } else { 128 };
                    assert!(*prefix <= max, "prefix /{prefix} for {addr}");
                }
            }
        }
        Err(e) => expected(e),
    }
    match region.read_stats() {
        Ok(stats) => assert!(stats.len() <= capacity),
        Err(e) => expected(e),
    }
    for _ in 0..=RING_CAPACITY + 1 {
        match region.pop_command() {
            Ok(None) => break,
            Ok(Some(c)) => check_command(&c),
            Err(e) => expected(e),
        }
    }
}

/// The errors an adversary's bytes may cause; anything else (I/O, a shrunk or reset
/// file) would mean the reader touched the file, not just its content.
fn expected(e: ShmError) {
    assert!(
        matches!(e, ShmError::Corrupt(_) | ShmError::Busy),
        "unexpected error for adversarial content: {e}"
    );
}

/// What a command popped from any region holds: a destination it can be sent to, a
/// payload within bounds.
fn check_command(c: &Command) {
    match c {
        Command::Handshake(_) => {}
        Command::Probe { to, .. } | Command::Pin { to: Some(to), .. } => {
            assert_ne!(to.port(), 0, "{c:?}")
        }
        Command::Pin { to: None, .. } | Command::Hold { .. } => {}
        Command::Send { to, payload, .. } => {
            assert_ne!(to.port(), 0, "{c:?}");
            assert!(payload.as_bytes().len() <= MAX_RAW_PAYLOAD);
        }
    }
}

/// Takes `n` bytes from the front of `data` (zeros past its end).
fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = data.len().min(N);
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

/// A command from the input; `None` when the payload is refused (over 64 bytes).
fn command_from(mut data: &[u8]) -> Option<Command> {
    let [kind, family, ttl, port_hi, port_lo] = take::<5>(&mut data);
    let peer = take::<32>(&mut data);
    let port = u16::from_be_bytes([port_hi, port_lo]);
    let to = match family % 3 {
        0 => None,
        1 => Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(take::<4>(&mut data))),
            port,
        )),
        _ => Some(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::from(take::<16>(&mut data))),
            port,
        )),
    };
    let to_or_any = to.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    Some(match kind % 5 {
        0 => Command::Handshake(peer),
        4 => Command::Hold {
            peer,
            on: ttl & 1 == 1,
        },
        1 => Command::Probe {
            peer,
            to: to_or_any,
            ttl,
        },
        2 => Command::Pin { peer, to },
        _ => match RawPayload::new(data) {
            Ok(payload) => Command::Send {
                to: to_or_any,
                ttl,
                payload,
            },
            Err(e) => {
                assert!(data.len() > MAX_RAW_PAYLOAD);
                assert!(matches!(e, ShmError::PayloadTooLong(n) if n == data.len()));
                return None;
            }
        },
    })
}

/// Pushes the input's command to a fresh region and pops it from a second mapping.
fn command_round_trip(path: &Path, data: &[u8]) {
    let Some(c) = command_from(data) else {
        return;
    };
    let producer = Region::create(path, 1).expect("create a region");
    let consumer = Region::open(path).expect("open it");
    match producer.push_command(c) {
        Ok(()) => {
            let popped = consumer.pop_command().expect("a pushed command reads back");
            assert_eq!(popped, Some(c));
            check_command(&c);
        }
        Err(ShmError::InvalidDestination(a)) => assert_eq!(a.port(), 0),
        Err(e) => panic!("{c:?}: {e}"),
    }
}
