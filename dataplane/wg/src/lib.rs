//! The sans-IO WireGuard protocol core of portdistrict.
//!
//! Nothing here touches a socket, a file descriptor or the clock: the driver in
//! `portdistrict-dataplane` passes datagrams, IP packets and `now` in, and gets
//! datagrams and IP packets back in buffers it owns. Layers, bottom up:
//!
//! - [`wire`]: zero-copy views of the four message types;
//! - [`crypto`], [`handshake`], [`cookie`], [`session`], [`replay`]: Noise IK,
//!   MAC1/MAC2 and cookies, transport keys and the 8192-bit anti-replay window;
//! - [`ratelimit`]: per-source handshake rate limiting;
//! - [`timers`], [`peer`]: the per-peer state machine of the WireGuard paper §6;
//! - [`allowed_ips`]: cryptokey routing (longest-prefix match, v4 and v6);
//! - [`device`]: the whole interface — peers, index table, routing — as one value;
//! - [`config`]: configuration changes and snapshots as values, which the device
//!   applies and reports;
//! - [`uapi`]: the text format of the cross-platform userspace API (`get=1`/`set=1`).
#![forbid(unsafe_code)]

pub mod allowed_ips;
pub mod batch;
pub mod config;
pub mod constants;
pub mod cookie;
pub mod crypto;
pub mod device;
pub mod handshake;
pub mod keys;
pub mod peer;
pub mod ratelimit;
pub mod replay;
pub mod session;
pub mod stats;
pub mod timers;
pub mod uapi;
pub mod wire;

pub use keys::{KeyParseError, PresharedKey, PrivateKey, PublicKey};

/// A base instant for unit tests (the only place this crate reads the clock).
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
pub(crate) fn test_now() -> std::time::Instant {
    std::time::Instant::now()
}
