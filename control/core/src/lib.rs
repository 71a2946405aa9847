//! The pure control core of portdistrict: values in, values out. No clock (`now` is
//! an argument), no randomness of its own (an `rng` is), no files, sockets or
//! processes — `clippy.toml` refuses them; the control shell (`portdistrict-control`)
//! does the I/O around it.
//!
//! - [`codec`]: the binary [`codec::Reader`] / [`codec::Writer`] and labeled blobs that
//!   identity bundles, device requests, records, invites and exit messages share.
//! - [`identity`]: seeds, public identities, bundles, sealed seeds.
//! - [`trust`]: the peer store and its trust lifecycle.
//! - [`records`]: master, device and trust records, signed, sealed to their readers,
//!   chunked into TXT.
//! - [`freshness`]: rollback protection and grace periods of records.
//! - [`overlay`]: the overlay /48 of an identity and the /64 of each device.
//! - [`mesh`]: the daemon's connect plan: which peers and routes to add, update,
//!   keep or remove for a view.
//! - [`nat`]: NAT traversal: addresses in the facilitator's tunnel, its messages, the
//!   facilitator's and the relay's decisions.
#![forbid(unsafe_code)]

pub mod attest;
pub mod codec;
pub mod freshness;
pub mod identity;
pub mod mesh;
pub mod nat;
pub mod overlay;
pub mod records;
pub mod trust;

/// A base instant for unit tests (the only place this crate reads the clock).
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
pub(crate) fn test_now() -> std::time::Instant {
    std::time::Instant::now()
}
