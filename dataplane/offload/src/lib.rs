//! Sans-IO TUN offloads of portdistrict: pure functions over byte slices.
//!
//! The dataplane opens its TUN device with `IFF_VNET_HDR` and enables
//! `TUNSETOFFLOAD` (CSUM, TSO4, TSO6, TSO_ECN, USO4, USO6). Every read and write
//! on that fd then carries a 10-byte [`vnet::VirtioNetHdr`] in front of the IP
//! packet, and a read may return a 64 KiB TCP or UDP "super-packet". What flows
//! through this crate, in order:
//!
//! - **Outbound** (TUN read -> WireGuard): [`vnet::VirtioNetHdr::parse`] the
//!   header, then [`split::split`] the packet into MTU-sized IP packets in a
//!   caller-owned, reused [`split::Segments`] buffer, each with headroom for the
//!   WireGuard data header and tailroom for padding and the AEAD tag, so the
//!   caller seals every segment in place.
//! - **Inbound** (WireGuard -> TUN write): every decrypted IP packet of a batch
//!   goes to [`gro::Coalescer::push`]; [`gro::Coalescer::flush`] at the end of
//!   the batch hands out each coalesced super-packet, header included, for one
//!   TUN write each.
//!
//! [`checksum`] holds the one's-complement sum both directions use. Nothing here
//! allocates per packet once the caller's buffers have warmed up.
#![deny(unsafe_code)]

pub mod checksum;
mod error;
pub mod gro;
mod ip;
pub mod split;
#[cfg(test)]
mod testutil;
pub mod vnet;

pub use error::OffloadError;
pub use gro::Coalescer;
pub use split::{split, Segments};
pub use vnet::VirtioNetHdr;
