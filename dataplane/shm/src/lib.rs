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
//! StatsEntry x peer_capacity   (104 bytes each, from an 8-aligned offset, under the
//!                               stats seqlock)
//! Command    x ring_capacity   (128 bytes each, a single-producer single-consumer ring)
//! ```
//!
//! ABI version 2 added the applied generation (version 1 had reserved bytes there).
//! ABI version 3 added the commands NAT traversal needs and the handshake source in
//! the statistics (the entries grew: version 2 regions are refused at open).
//! ABI version 4 added the `Hold` command (a version 3 dataplane would refuse it).
//!
//! ## Commands (the ring)
//!
//! [`Command`], one 128-byte [`CommandEntry`] each (`kind`, `ttl`, destination
//! `family`/`port`/`addr`, the peer's `public_key`, a raw `payload` of up to
//! [`MAX_RAW_PAYLOAD`] bytes with its length). Fields a kind does not use are zero.
//!
//! | kind | command | what the dataplane does |
//! | --- | --- | --- |
//! | 1 | `Handshake(peer)` | starts a handshake with the peer (rate-limited as usual) |
//! | 2 | `Probe { peer, to, ttl }` | sends a fresh, well-formed handshake initiation for `peer` to `to` from its own UDP socket, with IP TTL / hop limit `ttl` on that datagram only (0: the socket's default); the endpoint does not change, a response completes the handshake |
//! | 3 | `Pin { peer, to }` | `Some(to)`: sets the endpoint to `to` and keeps it there (authenticated packets from elsewhere no longer move it); `None`: roaming again |
//! | 4 | `Send { to, ttl, payload }` | sends `payload` (at most 64 bytes) as one UDP datagram to `to` from its own socket (the listen port as source port), TTL `ttl` |
//! | 5 | `Hold { peer, on }` (`on` in the `ttl` byte, 0 or 1) | `on`: sends no handshake initiation of its own for the peer (probes only; answers to its initiations still go out); `false`, or a pin to an address, ends it |
//!
//! A destination with port 0 is refused when pushed
//! ([`ShmError::InvalidDestination`]), a payload over 64 bytes when it is made
//! ([`RawPayload::new`], [`ShmError::PayloadTooLong`]). The dataplane checks every
//! entry it pops: a bad kind, family, port, length or a nonzero unused field is a
//! corrupt entry, skipped and counted (`shm_errors`), never acted upon.
//!
//! Each [`StatsEntry`] carries, besides counters, endpoint and last handshake, the
//! source of the latest authenticated handshake message received from the peer and
//! its time ([`PeerStats::handshake_source`]): with the endpoint pinned to a relay,
//! that is how control sees a probe to a direct address answered.
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
    MAX_PEERS, MAX_RAW_PAYLOAD, RING_CAPACITY,
};
pub use region::Region;
pub use ring::{Command, RawPayload};
pub use stats::{HandshakeSource, PeerStats};
