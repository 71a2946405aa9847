//! Fuzzes the shared-memory region as the other process sees it: its bytes were
//! written by someone we do not trust (a compromised daemon, a stray writer to the
//! file). Opening it, reading the configuration, the statistics and the command ring
//! must never panic or fault, only return a typed [`ShmError`].
//!
//! The first input byte picks the case:
//! - high bit set: the rest is the whole file (exercises `Region::open`'s checks);
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
use portdistrict_shm::{Region, ShmError, MAX_ALLOWED, RING_CAPACITY};

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
    if mode & 0x80 != 0 {
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
            Ok(Some(_)) => {}
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
