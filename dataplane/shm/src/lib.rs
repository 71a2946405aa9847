//! The shared-memory region between `portdistrictd` (the producer of configuration)
//! and `portdistrict-dataplane` (its consumer), one per interface: a file (under the
//! run directory or `/dev/shm`) mapped `MAP_SHARED` by both.
//!
//! A region file is never truncated or re-initialised in place: [`Region::create`]
//! unlinks whatever was at the path and creates a fresh file exclusively, so a
//! dataplane that maps the old one keeps its own (unlinked) region. Both sides keep
//! the file open and check its size and magic before every access
//! ([`ShmError::Shrunk`], [`ShmError::Reset`]): a file someone else truncated is an
//! error, not a SIGBUS. (Only a truncation in the microseconds between that check and
//! the access could still fault; the programs of this project never truncate it.)
//!
//! ```text
//! Header (repr(C), 128 bytes): magic, ABI version, sizes, the configuration's
//!   generation (a seqlock: odd while the producer writes), the stats' generation
//!   (the dataplane's seqlock), the command ring's head and tail, the interface
//!   configuration (private key, listen port, fwmark, peer count) and the applied
//!   generation (offset 112: the configuration generation the dataplane applied last,
//!   written by the dataplane only, which the producer waits for after a write)
//! PeerEntry  x peer_capacity   (412 bytes each, under the configuration seqlock)
//! StatsEntry x peer_capacity   (80 bytes each, from an 8-aligned offset, under the
//!                               stats seqlock)
//! Command    x ring_capacity   (40 bytes each, a single-producer single-consumer ring)
//! ```
//!
//! ABI version 2 added the applied generation (version 1 had reserved bytes there).
//!
//! Readers never trust the region: every count, family, prefix length and size is
//! checked and a violation is [`ShmError::Corrupt`], never a panic; a read that raced
//! a write (generation odd or changed) is retried a bounded number of times. This is
//! the one crate besides the I/O layers that uses `unsafe` (the mapping and the raw
//! reads and writes of shared memory); each block says why it is sound.
//!
//! The code follows the layout: `layout` (the constants and `repr(C)` structs above),
//! `region` (creating, opening and checking the mapping), `config` with `codec` (the
//! configuration and its peer table), `stats`, `ring` (commands) and `error`.

mod codec;
mod config;
mod error;
mod layout;
mod region;
mod ring;
mod stats;
#[cfg(test)]
mod tests;

pub use config::{Config, PeerConfig};
pub use error::ShmError;
pub use layout::{
    AllowedEntry, CommandEntry, Header, PeerEntry, StatsEntry, ABI_VERSION, MAGIC, MAX_ALLOWED,
    MAX_PEERS, RING_CAPACITY,
};
pub use region::Region;
pub use ring::Command;
pub use stats::PeerStats;
