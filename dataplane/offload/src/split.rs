//! TUN read -> MTU-sized IP packets.
//!
//! A read from a TUN fd with `IFF_VNET_HDR` and TSO/USO enabled is a virtio-net
//! header plus either one ordinary packet (`GSO_NONE`, maybe with its checksum
//! left for us to finish: `F_NEEDS_CSUM`) or a super-packet of up to 64 KiB that
//! the kernel expects us to segment (`GSO_TCPV4`, `GSO_TCPV6`, `GSO_UDP_L4`).
//! [`split`] turns either into complete IP packets with valid checksums, the
//! way the kernel's `tcp_gso_segment` / `__udp_gso_segment` would, each copied
//! once into a caller-owned [`Segments`] buffer with room to seal in place.

mod segments;
#[cfg(test)]
mod tests;

pub use segments::Segments;

use crate::checksum::{copy_sum, sum};
use crate::ip::{self, Family, Payload, L3};
use crate::vnet::{VirtioNetHdr, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4};
use crate::OffloadError;

/// Which transport a GSO type segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Udp,
}

/// Where the headers of a GSO packet end.
#[derive(Debug, Clone, Copy)]
struct Layout {
    l3: L3,
    transport: Transport,
    /// IP plus transport header length: what each segment repeats.
    hdrs: usize,
}

/// Splits `packet` (a TUN read without its virtio-net header `hdr`) into IP
/// packets in `out`, each with `headroom` free bytes before and `tailroom`
/// after it. On error `out` may hold some segments; drop the whole read.
pub fn split(
    hdr: &VirtioNetHdr,
    packet: &[u8],
    headroom: usize,
    tailroom: usize,
    out: &mut Segments,
) -> Result<(), OffloadError> {
    out.reset(headroom, tailroom);
    if packet.len() > ip::MAX_PACKET_LEN {
        return Err(OffloadError::PacketTooLong { len: packet.len() });
    }
    if hdr.needs_csum() {
        csum_field(hdr, packet)?;
    }
    let ecn = hdr.gso_type & GSO_ECN != 0;
    match (hdr.gso_type & !GSO_ECN, ecn) {
        (GSO_NONE, false) => copy_whole(hdr, packet, out),
        (GSO_TCPV4, _) => segment(hdr, packet, Transport::Tcp, Some(Family::V4), out),
        (GSO_TCPV6, _) => segment(hdr, packet, Transport::Tcp, Some(Family::V6), out),
        (GSO_UDP_L4, false) => segment(hdr, packet, Transport::Udp, None, out),
        (GSO_UDP, false) => Err(OffloadError::UfoUnsupported),
        _ => Err(OffloadError::UnknownGsoType(hdr.gso_type)),
    }
}

/// Offset of the 2-byte checksum field `hdr` points at, if inside `packet`.
fn csum_field(hdr: &VirtioNetHdr, packet: &[u8]) -> Result<usize, OffloadError> {
    let at = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset);
    if at + 2 > packet.len() {
        return Err(OffloadError::ChecksumOutOfBounds {
            csum_start: hdr.csum_start,
            csum_offset: hdr.csum_offset,
            len: packet.len(),
        });
    }
    Ok(at)
}

/// `GSO_NONE`: one segment, its checksum finished if `F_NEEDS_CSUM` (the field
/// already holds the pseudo-header sum; the sum runs from `csum_start` to the end).
fn copy_whole(hdr: &VirtioNetHdr, packet: &[u8], out: &mut Segments) -> Result<(), OffloadError> {
    out.check_fits(1, packet.len())?;
    let seg = out.push(packet.len())?;
    seg.copy_from_slice(packet);
    if hdr.needs_csum() {
        let at = csum_field(hdr, packet)?;
        let csum = !sum(&seg[usize::from(hdr.csum_start)..], 0);
        ip::put16(seg, at, if csum == 0 { 0xffff } else { csum });
    }
    Ok(())
}

/// Finds the headers of a GSO packet. `hdr_len` from the virtio header is not
/// trusted; the lengths come from the IP and TCP headers themselves.
fn layout(
    gso_type: u8,
    packet: &[u8],
    transport: Transport,
    family: Option<Family>,
) -> Result<Layout, OffloadError> {
    let version = packet.first().map_or(0, |b| b >> 4);
    let wanted = family.map(|f| if f == Family::V4 { 4 } else { 6 });
    if matches!(version, 4 | 6) && wanted.is_some_and(|w| w != version) {
        return Err(OffloadError::IpVersionMismatch { gso_type, version });
    }
    let protocol = if transport == Transport::Tcp {
        ip::PROTO_TCP
    } else {
        ip::PROTO_UDP
    };
    let l3 = ip::parse_l3(packet, protocol)?;
    let truncated = |need| OffloadError::PacketTruncated {
        len: packet.len(),
        need,
    };
    let l4_len = match transport {
        Transport::Udp => ip::UDP_HDR_LEN,
        Transport::Tcp => {
            let offset_byte = *packet
                .get(l3.hdr_len + 12)
                .ok_or(truncated(l3.hdr_len + 20))?;
            let len = usize::from(offset_byte >> 4) * 4;
            if len < ip::MIN_HDR_LEN {
                return Err(OffloadError::BadTcpHeaderLength(len));
            }
            len
        }
    };
    let hdrs = l3.hdr_len + l4_len;
    if packet.len() < hdrs {
        return Err(truncated(hdrs));
    }
    Ok(Layout {
        l3,
        transport,
        hdrs,
    })
}

/// TCP/UDP segmentation by `gso_size`: every segment repeats the headers, with
/// lengths, IPv4 ID, TCP sequence number, flags and checksums rewritten.
fn segment(
    hdr: &VirtioNetHdr,
    packet: &[u8],
    transport: Transport,
    family: Option<Family>,
    out: &mut Segments,
) -> Result<(), OffloadError> {
    let gso_size = usize::from(hdr.gso_size);
    if gso_size == 0 {
        return Err(OffloadError::ZeroGsoSize {
            gso_type: hdr.gso_type,
        });
    }
    let layout = layout(hdr.gso_type, packet, transport, family)?;
    let (headers, payload) = packet.split_at(layout.hdrs);
    let count = payload.len().div_ceil(gso_size).max(1);
    out.check_fits(count, layout.hdrs * count + payload.len())?;
    for i in 0..count {
        let start = (i * gso_size).min(payload.len());
        let chunk = &payload[start..(start + gso_size).min(payload.len())];
        let seg = out.push(layout.hdrs + chunk.len())?;
        seg[..layout.hdrs].copy_from_slice(headers);
        // The payload is summed as it is copied: one pass over it.
        let payload = Payload {
            at: layout.hdrs,
            sum: copy_sum(&mut seg[layout.hdrs..], chunk),
        };
        fix_ip(seg, layout.l3, i);
        match layout.transport {
            Transport::Tcp => fix_tcp(seg, layout.l3, start, i == 0, i + 1 == count, payload),
            Transport::Udp => fix_udp(seg, layout.l3, payload),
        }
    }
    Ok(())
}

/// IPv4: ID advanced by the segment index, total length and header checksum;
/// IPv6: payload length.
fn fix_ip(seg: &mut [u8], l3: L3, index: usize) {
    if l3.family == Family::V4 {
        let id = ip::get16(seg, 4).wrapping_add(index as u16);
        ip::put16(seg, 4, id);
    }
    ip::set_length(seg, l3);
}

/// Sequence number advanced by the payload offset; FIN and PSH only on the
/// last segment, CWR only on the first; full checksum.
fn fix_tcp(
    seg: &mut [u8],
    l3: L3,
    payload_offset: usize,
    first: bool,
    last: bool,
    payload: Payload,
) {
    let t = l3.hdr_len;
    let seq = ip::get32(seg, t + 4).wrapping_add(payload_offset as u32);
    ip::put32(seg, t + 4, seq);
    if !last {
        seg[t + ip::TCP_FLAGS] &= !(ip::TCP_FIN | ip::TCP_PSH);
    }
    if !first {
        seg[t + ip::TCP_FLAGS] &= !ip::TCP_CWR;
    }
    ip::fill_l4_checksum(seg, l3, ip::PROTO_TCP, ip::TCP_CSUM, payload);
}

/// UDP length and full checksum.
fn fix_udp(seg: &mut [u8], l3: L3, payload: Payload) {
    let len = (seg.len() - l3.hdr_len) as u16;
    ip::put16(seg, l3.hdr_len + 4, len);
    ip::fill_l4_checksum(seg, l3, ip::PROTO_UDP, ip::UDP_CSUM, payload);
}
