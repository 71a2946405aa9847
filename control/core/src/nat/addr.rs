//! Addresses inside the facilitator's tunnel. The facilitator is `fd70:6466:6163::1`
//! on every node; a node is an address of the same /48 derived from its WireGuard key,
//! so the facilitator knows which AllowedIP to give a key the moment it admits it, and
//! a reply can only reach the key that asked.

use portdistrict_wg::PublicKey;
use std::net::Ipv6Addr;

/// The /48 of the facilitator's tunnel (a fixed ULA prefix, never routed elsewhere).
pub const PREFIX: Ipv6Addr = Ipv6Addr::new(0xfd70, 0x6466, 0x6163, 0, 0, 0, 0, 0);

/// The facilitator's address inside its tunnel.
pub const FACILITATOR: Ipv6Addr = Ipv6Addr::new(0xfd70, 0x6466, 0x6163, 0, 0, 0, 0, 1);

/// The UDP port the facilitator answers on, at [`FACILITATOR`].
pub const PORT: u16 = 7447;

/// The BLAKE3 key-derivation context of a node's address.
const CONTEXT: &str = "portdistrict 2026-12 facilitator node address";

/// The address of the node with WireGuard key `key` inside the facilitator's tunnel:
/// [`PREFIX`] and 80 bits of `BLAKE3 derive_key(CONTEXT, key)` (never
/// [`FACILITATOR`]: the last bit pattern `::1` with zero middle is skipped).
#[must_use]
pub fn node(key: &PublicKey) -> Ipv6Addr {
    let h = blake3::derive_key(CONTEXT, key.as_bytes());
    let mut o = PREFIX.octets();
    o[6..16].copy_from_slice(&h[..10]);
    let a = Ipv6Addr::from(o);
    if a == FACILITATOR || a == PREFIX {
        o[6] ^= 0x80;
        return Ipv6Addr::from(o);
    }
    a
}

/// Whether `a` lies in [`PREFIX`]/48.
#[must_use]
pub fn in_prefix(a: Ipv6Addr) -> bool {
    a.segments()[..3] == PREFIX.segments()[..3]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_are_stable_distinct_and_inside_the_prefix() {
        let a = node(&PublicKey([1; 32]));
        let b = node(&PublicKey([2; 32]));
        assert_ne!(a, b);
        assert_eq!(a, node(&PublicKey([1; 32])));
        assert!(in_prefix(a) && in_prefix(b) && in_prefix(FACILITATOR));
        assert!(!in_prefix("fd70:6466:6164::1".parse().unwrap()));
        assert_ne!(a, FACILITATOR);
        // A golden value: the derivation is part of the protocol.
        assert_eq!(
            node(&PublicKey([0; 32])).segments()[..3],
            [0xfd70, 0x6466, 0x6163]
        );
    }
}
