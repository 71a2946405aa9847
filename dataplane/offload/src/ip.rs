//! The few IPv4/IPv6/TCP/UDP header fields that splitting and coalescing read
//! and rewrite. Callers check lengths first (via [`parse_l3`] or their own
//! candidate checks); the accessors index within those checked bounds.

use crate::checksum::{add, pseudo_header, sum};
use crate::OffloadError;

/// IP protocol number of TCP.
pub(crate) const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub(crate) const PROTO_UDP: u8 = 17;
/// Fixed IPv6 header length.
pub(crate) const IPV6_HDR_LEN: usize = 40;
/// Minimum (option-less) IPv4 and TCP header length.
pub(crate) const MIN_HDR_LEN: usize = 20;
/// UDP header length.
pub(crate) const UDP_HDR_LEN: usize = 8;
/// Largest IP packet we build or accept (IPv4 total length / TUN read limit).
pub(crate) const MAX_PACKET_LEN: usize = 65535;
/// Offset of the flags byte in the TCP header.
pub(crate) const TCP_FLAGS: usize = 13;
/// TCP flag FIN.
pub(crate) const TCP_FIN: u8 = 0x01;
/// TCP flag PSH.
pub(crate) const TCP_PSH: u8 = 0x08;
/// TCP flag ACK.
pub(crate) const TCP_ACK: u8 = 0x10;
/// TCP flag CWR.
pub(crate) const TCP_CWR: u8 = 0x80;
/// Offset of the checksum field in the TCP header.
pub(crate) const TCP_CSUM: usize = 16;
/// Offset of the checksum field in the UDP header.
pub(crate) const UDP_CSUM: usize = 6;

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Family {
    /// IPv4.
    #[default]
    V4,
    /// IPv6.
    V6,
}

/// The network layer of a packet whose transport header follows directly.
#[derive(Debug, Clone, Copy)]
pub(crate) struct L3 {
    pub(crate) family: Family,
    /// IP header length: where the transport header starts.
    pub(crate) hdr_len: usize,
}

/// Parses the IP header of `packet` and checks that `protocol` follows it
/// directly (no IPv6 extension headers).
pub(crate) fn parse_l3(packet: &[u8], protocol: u8) -> Result<L3, OffloadError> {
    let truncated = |need| OffloadError::PacketTruncated {
        len: packet.len(),
        need,
    };
    let first = *packet.first().ok_or(truncated(MIN_HDR_LEN))?;
    let (family, hdr_len, found) = match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            if ihl < MIN_HDR_LEN {
                return Err(OffloadError::BadIpv4HeaderLength(ihl));
            }
            (Family::V4, ihl, packet.get(9).copied())
        }
        6 => (Family::V6, IPV6_HDR_LEN, packet.get(6).copied()),
        v => return Err(OffloadError::UnknownIpVersion(v)),
    };
    let Some(found) = found.filter(|_| packet.len() >= hdr_len) else {
        return Err(truncated(hdr_len));
    };
    if found != protocol {
        if family == Family::V6 && is_ipv6_extension(found) {
            return Err(OffloadError::Ipv6ExtensionHeader(found));
        }
        return Err(OffloadError::TransportMismatch {
            expected: protocol,
            found,
        });
    }
    Ok(L3 { family, hdr_len })
}

/// Whether `next_header` names an IPv6 extension header (RFC 8200 §4, IANA).
fn is_ipv6_extension(next_header: u8) -> bool {
    matches!(
        next_header,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}

/// Source and destination address of a packet at least `hdr_len` long.
pub(crate) fn addrs(packet: &[u8], family: Family) -> (&[u8], &[u8]) {
    match family {
        Family::V4 => (&packet[12..16], &packet[16..20]),
        Family::V6 => (&packet[8..24], &packet[24..40]),
    }
}

/// Big-endian u16 at `at`.
pub(crate) fn get16(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

/// Big-endian u32 at `at`.
pub(crate) fn get32(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

/// Stores a big-endian u16 at `at`.
pub(crate) fn put16(p: &mut [u8], at: usize, v: u16) {
    p[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Stores a big-endian u32 at `at`.
pub(crate) fn put32(p: &mut [u8], at: usize, v: u32) {
    p[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Sets the IPv4 total length (and header checksum) or the IPv6 payload length
/// to match `packet.len()` (at most [`MAX_PACKET_LEN`]).
pub(crate) fn set_length(packet: &mut [u8], l3: L3) {
    let len = packet.len();
    match l3.family {
        Family::V4 => {
            put16(packet, 2, len as u16);
            put16(packet, 10, 0);
            let csum = !sum(&packet[..l3.hdr_len], 0);
            put16(packet, 10, csum);
        }
        Family::V6 => put16(packet, 4, (len - IPV6_HDR_LEN) as u16),
    }
}

/// The pseudo-header sum of the transport segment after `l3.hdr_len`.
pub(crate) fn l4_pseudo_sum(packet: &[u8], l3: L3, protocol: u8) -> u16 {
    let (src, dst) = addrs(packet, l3.family);
    pseudo_header(src, dst, protocol, (packet.len() - l3.hdr_len) as u32)
}

/// Where a segment's payload starts and its sum (taken while it was copied, with
/// [`crate::checksum::copy_sum`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Payload {
    pub(crate) at: usize,
    pub(crate) sum: u16,
}

/// Computes and stores the full transport checksum (field at `csum_at` within the
/// transport header; a computed 0 is sent as 0xffff, RFC 768) when the payload's sum
/// is already known: only the transport header is summed here.
/// `payload.at - l3.hdr_len` must be even (TCP and UDP headers are); an odd one is
/// summed in full instead.
pub(crate) fn fill_l4_checksum(
    packet: &mut [u8],
    l3: L3,
    protocol: u8,
    csum_at: usize,
    payload: Payload,
) {
    let at = l3.hdr_len + csum_at;
    put16(packet, at, 0);
    let pseudo = u32::from(l4_pseudo_sum(packet, l3, protocol));
    let total = if (payload.at - l3.hdr_len).is_multiple_of(2) {
        add(sum(&packet[l3.hdr_len..payload.at], pseudo), payload.sum)
    } else {
        sum(&packet[l3.hdr_len..], pseudo)
    };
    let csum = !total;
    put16(packet, at, if csum == 0 { 0xffff } else { csum });
}

/// Whether the transport checksum (with pseudo-header) of `packet` verifies, given
/// the sum of its transport header and payload (`l4_sum`, without the pseudo-header).
pub(crate) fn l4_checksum_ok_with(packet: &[u8], l3: L3, protocol: u8, l4_sum: u16) -> bool {
    add(l4_pseudo_sum(packet, l3, protocol), l4_sum) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_l3_rejects_bad_headers() {
        use OffloadError::*;
        assert_eq!(
            parse_l3(&[], PROTO_TCP).unwrap_err(),
            PacketTruncated { len: 0, need: 20 }
        );
        assert_eq!(
            parse_l3(&[0x45; 19], PROTO_TCP).unwrap_err(),
            PacketTruncated { len: 19, need: 20 }
        );
        assert_eq!(
            parse_l3(&[0x44; 40], PROTO_TCP).unwrap_err(),
            BadIpv4HeaderLength(16)
        );
        assert_eq!(
            parse_l3(&[0x55; 40], PROTO_TCP).unwrap_err(),
            UnknownIpVersion(5)
        );
        let mut v4 = [0u8; 24];
        v4[0] = 0x46;
        v4[9] = PROTO_TCP;
        assert!(parse_l3(&v4, PROTO_TCP).is_ok());
        assert_eq!(
            parse_l3(&v4[..23], PROTO_TCP).unwrap_err(),
            PacketTruncated { len: 23, need: 24 }
        );
        assert_eq!(
            parse_l3(&v4, PROTO_UDP).unwrap_err(),
            TransportMismatch {
                expected: PROTO_UDP,
                found: PROTO_TCP
            }
        );
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[6] = 44;
        assert_eq!(
            parse_l3(&v6, PROTO_TCP).unwrap_err(),
            Ipv6ExtensionHeader(44)
        );
        v6[6] = PROTO_UDP;
        let l3 = parse_l3(&v6, PROTO_UDP).unwrap();
        assert_eq!((l3.family, l3.hdr_len), (Family::V6, 40));
        assert_eq!(
            parse_l3(&v6[..39], PROTO_UDP).unwrap_err(),
            PacketTruncated { len: 39, need: 40 }
        );
    }
}
