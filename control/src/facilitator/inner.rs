//! The IPv6/UDP packets inside the facilitator's tunnel: parsing what a node sends to
//! the facilitator's port and building the answers. Pure functions on bytes.

use std::net::Ipv6Addr;

/// IPv6 header and UDP header.
pub const HEADERS: usize = 40 + 8;

/// A UDP datagram found in an inner packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Its source address and port.
    pub src: (Ipv6Addr, u16),
    /// Its destination address and port.
    pub dst: (Ipv6Addr, u16),
    /// The UDP payload.
    pub payload: &'a [u8],
}

/// The UDP datagram in `packet`, or `None` when it is not IPv6 carrying UDP with
/// consistent lengths and a valid checksum.
pub fn parse(packet: &[u8]) -> Option<Datagram<'_>> {
    if packet.len() < HEADERS || packet[0] >> 4 != 6 || packet[6] != 17 {
        return None;
    }
    let payload_len = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
    if 40 + payload_len > packet.len() || payload_len < 8 {
        return None;
    }
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&packet[8..24]).ok()?);
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&packet[24..40]).ok()?);
    let udp = &packet[40..40 + payload_len];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len != payload_len {
        return None;
    }
    if checksum(src, dst, udp) != 0 {
        return None;
    }
    Some(Datagram {
        src: (src, u16::from_be_bytes([udp[0], udp[1]])),
        dst: (dst, u16::from_be_bytes([udp[2], udp[3]])),
        payload: &udp[8..],
    })
}

/// An IPv6/UDP packet from `src` to `dst` carrying `payload`.
pub fn build(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = vec![0u8; 40 + udp_len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.0.octets());
    p[24..40].copy_from_slice(&dst.0.octets());
    p[40..42].copy_from_slice(&src.1.to_be_bytes());
    p[42..44].copy_from_slice(&dst.1.to_be_bytes());
    p[44..46].copy_from_slice(&(udp_len as u16).to_be_bytes());
    p[48..].copy_from_slice(payload);
    let sum = match checksum(src.0, dst.0, &p[40..]) {
        0 => 0xffff,
        s => s,
    };
    p[46..48].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The UDP checksum over the IPv6 pseudo-header and `udp` (0 when a datagram with its
/// checksum field filled in is intact).
fn checksum(src: Ipv6Addr, dst: Ipv6Addr, udp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum += u32::from(w);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(udp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 17]);
    add(udp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_then_parse_and_every_damage_is_refused() {
        let a: Ipv6Addr = "fd70:6466:6163:1::2".parse().unwrap();
        let b: Ipv6Addr = "fd70:6466:6163::1".parse().unwrap();
        let p = build((a, 7447), (b, 7447), b"hello");
        let d = parse(&p).unwrap();
        assert_eq!(
            (d.src, d.dst, d.payload),
            ((a, 7447), (b, 7447), &b"hello"[..])
        );
        // A packet as Linux would send it: odd length payload, checksum checked.
        let p = build((a, 1), (b, 2), b"odd");
        assert!(parse(&p).is_some());
        for i in 0..p.len() {
            let mut q = p.clone();
            q[i] ^= 0x01;
            // Flipping the traffic class / flow label bits changes nothing checked.
            if i < 4 || i == 7 {
                continue;
            }
            assert!(parse(&q).is_none(), "byte {i} flipped still parses");
        }
        for n in 0..p.len() {
            assert!(parse(&p[..n]).is_none());
        }
        // Trailing bytes beyond the payload length (padding) are ignored.
        let mut q = p.clone();
        q.extend_from_slice(&[0; 4]);
        assert_eq!(parse(&q).unwrap().payload, b"odd");
    }
}
