//! Exit nodes: a provider forwards and masquerades its authorized consumers' traffic
//! out of its uplink; a consumer in system mode sends all of its traffic through the
//! provider behind a kill switch that fails closed.
//!
//! - [`policy`]: the pure part. A [`policy::ConsumerPolicy`] or
//!   [`policy::ProviderPolicy`] becomes a [`policy::Plan`]: an nftables script that
//!   replaces one table in one transaction, sysctls, and typed addresses, rules and
//!   routes ([`policy::IpOp`], rendered in `ip` syntax), in the order they must be
//!   applied. Snapshot-tested (`tests/snapshots/`).
//! - [`invite`]: the `portdistrict-invite1:` line a provider hands out: versioned,
//!   Ed25519-signed, with endpoints, WireGuard key, token, expiry, uses, transport.
//! - [`apply`]: the thin shell. The nftables script goes in as one `nft -f`
//!   transaction and is read back and compared whole; addresses, rules and routes go
//!   over netlink, sysctls to `/proc/sys`; a whole plan is applied in order and
//!   returns the exact [`apply::Undo`].
//! - [`state`]: atomic state files (temp, fsync, rename).
//! - [`store`]: the provider's issued invites and authorized consumers, and the
//!   decision on an exit request (token known, unexpired, uses left, not revoked).
//! - [`wire`]: the exit negotiation messages (request, ack, nak) with golden bytes.
//! - [`negotiate`]: the provider's answer to one negotiation datagram, and the proof
//!   of key ownership a request carries.
//! - [`client`]: the consumer's probe of a tunnel just up, sans-IO: the request
//!   again as itself inside the tunnel, when to send again, when to give up, what
//!   an answer means.
//! - [`ratelimit`]: per-source and global limits on negotiation datagrams.
//! - [`channel`]: the exit control channel, sans-IO: Noise `IKpsk2` (its own static
//!   key, PSK from the invite token) in length-prefixed frames over TCP, carrying the
//!   exit request, the answer and the provider's attestation; typed refusals for a
//!   wrong server key, an unknown consumer and a replayed first message; transport
//!   cipher states named by direction. Its [`channel::Dialer`] decides which
//!   address the consumer dials and when: each endpoint in turn with a share of the
//!   time budget, again after a moment when busy or failed.
#![forbid(unsafe_code)]

pub mod apply;
pub mod channel;
pub mod client;
pub mod invite;
pub mod negotiate;
pub mod policy;
pub mod ratelimit;
pub mod state;
pub mod store;
pub mod wire;

#[cfg(test)]
mod golden_doc;
