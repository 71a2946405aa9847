//! Overlay addressing: where an identity's /48 and its devices' /64s lie.
//!
//! An identity's overlay /48 is `fd` + 40 bits derived from its node ID; a device's
//! /64 inside it is numbered by its subnet (1..=65535), itself derived from the
//! device's name.

use std::net::Ipv6Addr;

const OVERLAY_CONTEXT: &str = "portdistrict 2026-11 overlay prefix";

/// The overlay /48 of the identity whose node ID is `node_id`.
pub fn overlay_prefix(node_id: &str) -> Ipv6Addr {
    let h = blake3::derive_key(OVERLAY_CONTEXT, node_id.as_bytes());
    let mut b = [0u8; 16];
    b[0] = 0xfd;
    b[1..6].copy_from_slice(&h[..5]);
    Ipv6Addr::from(b)
}

/// The /64 of device number `subnet` inside the overlay /48 `overlay`.
pub fn device_prefix(overlay: Ipv6Addr, subnet: u16) -> Ipv6Addr {
    let mut b = overlay.octets();
    b[6..8].copy_from_slice(&subnet.to_be_bytes());
    Ipv6Addr::from(b)
}

/// A device's subnet number from its name (1..=65535; the /64 inside the /48).
pub fn subnet_of(device: &str) -> u16 {
    let h = blake3::hash(device.as_bytes());
    let n = u16::from_be_bytes([h.as_bytes()[0], h.as_bytes()[1]]);
    n.max(1)
}

/// Whether `a` lies in `prefix/len` (`len` above 128 counts as 128).
pub fn contains(prefix: Ipv6Addr, len: u8, a: Ipv6Addr) -> bool {
    let bits = u32::from(len.min(128));
    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
    u128::from(a) & mask == u128::from(prefix) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_nest_and_subnets_are_never_zero() {
        let o = overlay_prefix("abc");
        assert_eq!(o.octets()[0], 0xfd);
        assert_eq!(o.octets()[6..], [0; 10]);
        assert_eq!(o, overlay_prefix("abc"));
        assert_ne!(o, overlay_prefix("abd"));
        let d = device_prefix(o, 0x0102);
        assert_eq!(d.octets()[..6], o.octets()[..6]);
        assert_eq!(d.octets()[6..8], [1, 2]);
        assert!(contains(o, 48, d));
        assert!(contains(d, 64, d));
        assert!(!contains(d, 64, device_prefix(o, 0x0103)));
        assert!(!contains(o, 48, overlay_prefix("abd")));
        assert!(contains(o, 0, Ipv6Addr::LOCALHOST));
        assert!(contains(d, 200, d) && !contains(d, 200, Ipv6Addr::LOCALHOST));
        assert_ne!(subnet_of("laptop"), 0);
        assert_eq!(subnet_of("laptop"), subnet_of("laptop"));
    }
}
