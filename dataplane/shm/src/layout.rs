//! The byte layout of the region (the ABI): its constants, the `repr(C)` header and
//! entries, and where each part lies for a given capacity. The [crate docs](crate)
//! describe the whole layout.

use std::mem::size_of;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// `PDSHM` + version in the first 8 bytes.
pub const MAGIC: u64 = u64::from_be_bytes(*b"PDSHM\0\0\x01");
/// The ABI version of this layout.
pub const ABI_VERSION: u32 = 4;
/// AllowedIPs per peer in the table.
pub const MAX_ALLOWED: usize = 16;
/// Most peers a region may be created for.
pub const MAX_PEERS: u32 = 65_536;
/// Commands the ring holds.
pub const RING_CAPACITY: u32 = 64;
/// Most bytes a raw datagram ([`crate::Command::Send`]) carries.
pub const MAX_RAW_PAYLOAD: usize = 64;
/// Attempts of a seqlock read before giving up for now.
pub(crate) const READ_ATTEMPTS: usize = 1000;

/// The fixed header.
#[repr(C)]
pub struct Header {
    pub(crate) magic: u64,
    pub(crate) abi_version: u32,
    pub(crate) header_size: u32,
    pub(crate) peer_capacity: u32,
    pub(crate) peer_size: u32,
    pub(crate) stats_size: u32,
    pub(crate) ring_capacity: u32,
    pub(crate) config_gen: AtomicU64,
    pub(crate) stats_gen: AtomicU64,
    pub(crate) ring_head: AtomicU32,
    pub(crate) ring_tail: AtomicU32,
    pub(crate) private_key: [u8; 32],
    pub(crate) has_private_key: u32,
    pub(crate) listen_port: u32,
    pub(crate) fwmark: u32,
    pub(crate) peer_count: u32,
    pub(crate) stats_count: u32,
    pub(crate) _pad: u32,
    pub(crate) applied_gen: AtomicU64,
    pub(crate) _reserved: [u8; 8],
}

/// One AllowedIPs prefix.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AllowedEntry {
    pub(crate) addr: [u8; 16],
    pub(crate) family: u8,
    pub(crate) cidr: u8,
    pub(crate) _pad: [u8; 2],
}

/// One peer of the table.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PeerEntry {
    pub(crate) public_key: [u8; 32],
    pub(crate) preshared_key: [u8; 32],
    pub(crate) endpoint_family: u8,
    pub(crate) has_preshared_key: u8,
    pub(crate) endpoint_port: u16,
    pub(crate) endpoint_addr: [u8; 16],
    pub(crate) keepalive: u16,
    pub(crate) allowed_count: u16,
    pub(crate) flags: u32,
    pub(crate) allowed: [AllowedEntry; MAX_ALLOWED],
}

/// One peer's statistics, written back by the dataplane.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StatsEntry {
    pub(crate) public_key: [u8; 32],
    pub(crate) rx_bytes: u64,
    pub(crate) tx_bytes: u64,
    pub(crate) last_handshake: u64,
    pub(crate) endpoint_family: u8,
    pub(crate) _pad: u8,
    pub(crate) endpoint_port: u16,
    pub(crate) endpoint_addr: [u8; 16],
    /// The source of the latest authenticated handshake message (0: none).
    pub(crate) handshake_source_family: u8,
    pub(crate) _pad2: u8,
    pub(crate) handshake_source_port: u16,
    pub(crate) handshake_source_addr: [u8; 16],
    /// When it arrived, Unix milliseconds.
    pub(crate) handshake_source_ms: u64,
}

/// One command (kinds and which fields each uses: [`crate::Command`]). Fields a
/// kind does not use are zero; anything else is a corrupt entry.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CommandEntry {
    pub(crate) kind: u32,
    pub(crate) ttl: u8,
    pub(crate) family: u8,
    pub(crate) port: u16,
    pub(crate) public_key: [u8; 32],
    pub(crate) addr: [u8; 16],
    pub(crate) payload_len: u16,
    pub(crate) _pad: [u8; 6],
    pub(crate) payload: [u8; MAX_RAW_PAYLOAD],
}

/// Where each part lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) peers: usize,
    pub(crate) stats: usize,
    pub(crate) ring: usize,
    pub(crate) len: usize,
    pub(crate) capacity: u32,
}

impl Layout {
    pub(crate) fn new(capacity: u32) -> Layout {
        let peers = size_of::<Header>();
        // PeerEntry is 412 bytes: after an odd number of them the (8-aligned) stats
        // entries would start misaligned, and their volatile reads and writes would be
        // undefined behaviour. Even capacities (1024, the daemon's) are unchanged.
        let stats = (peers + capacity as usize * size_of::<PeerEntry>())
            .next_multiple_of(std::mem::align_of::<StatsEntry>());
        let ring = stats + capacity as usize * size_of::<StatsEntry>();
        let len = ring + RING_CAPACITY as usize * size_of::<CommandEntry>();
        Layout {
            peers,
            stats,
            ring,
            len,
            capacity,
        }
    }
}
