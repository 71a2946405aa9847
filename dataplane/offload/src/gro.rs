//! Decrypted IP packets -> coalesced super-packets, one TUN write each (GRO).
//!
//! The receive path decrypts a batch of WireGuard data messages and offers
//! every inner IP packet to [`Coalescer::push`]. Consecutive TCP segments of one
//! flow (and, likewise, equal-sized UDP datagrams of one flow) are appended to a
//! pending item; at the end of the batch [`Coalescer::flush`] hands out every
//! item, in the order it was started, as virtio-net header plus packet:
//!
//! - a merged item carries `F_NEEDS_CSUM` and `GSO_TCPV4`/`GSO_TCPV6`/
//!   `GSO_UDP_L4` with the first segment's payload size as `gso_size`, fixed IP
//!   lengths, and the pseudo-header sum in the transport checksum field: the
//!   kernel's `CHECKSUM_PARTIAL`, which it segments again or delivers as is;
//! - anything else (a single segment, a packet that may not be merged) goes out
//!   untouched behind an all-zero header (`GSO_NONE`).
//!
//! The rules follow Linux `tcp_gro_receive` / `udp_gro_receive` and wireguard-go
//! `tcpGRO`/`udpGRO`: same addresses and ports; IPv4 without options or
//! fragmentation with equal TOS, TTL and DF; IPv6 with the transport header
//! directly after the fixed header and equal traffic class, flow label and hop
//! limit; TCP with the expected sequence number, equal ACK number, window and
//! options, only ACK (and PSH on the last segment) set; a non-empty payload no
//! larger than the first segment's, and nothing after a shorter one; at most
//! 65535 bytes. Every merged packet's transport checksum is verified first: a
//! packet with a bad one is passed through alone so the kernel drops it.
//! Only appending in sequence is done; a packet that does not continue its
//! flow's latest item starts a new one.

#[cfg(test)]
mod tests;

use crate::checksum::{self, copy_sum, sum};
use crate::ip::{self, Family, L3};
use crate::vnet::{
    VirtioNetHdr, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VIRTIO_NET_HDR_LEN,
};

/// Flows tracked for coalescing per batch; packets of further flows in the
/// same batch are passed through unmerged.
pub const MAX_FLOWS: usize = 64;

/// Most datagrams in one UDP GRO packet (Linux `UDP_GRO_CNT_MAX`).
const UDP_MAX_SEGMENTS: u16 = 64;

/// What identifies a flow: family, protocol, addresses and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct FlowKey {
    family: Family,
    protocol: u8,
    addrs: [u8; 32],
    ports: [u8; 4],
}

/// A tracked flow and the index of its latest item.
#[derive(Debug, Clone, Copy, Default)]
struct Flow {
    /// Cheap pre-filter before comparing the whole key.
    tag: u32,
    key: FlowKey,
    item: usize,
}

/// A packet that could be merged, with the fields the rules look at.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    key: FlowKey,
    l3: L3,
    l4_len: usize,
    payload: usize,
    seq: u32,
    psh: bool,
}

/// Coalescing state of an item that may take more segments.
#[derive(Debug, Clone, Copy)]
struct Meta {
    l3: L3,
    protocol: u8,
    l4_len: usize,
    gso_size: usize,
    segments: u16,
    next_seq: u32,
    /// PSH seen or a short segment appended: nothing may follow.
    closed: bool,
    /// The first packet's checksum has been verified (done on first merge).
    head_verified: bool,
    /// The sum of the first packet's transport header and payload, taken while it
    /// was copied in.
    head_l4_sum: u16,
}

/// One pending output: virtio-net header bytes followed by the packet, in
/// `buf[..len]`. The bytes behind `len` are initialised scratch: a merged segment is
/// copied (and summed) there first and only counted once its checksum verified.
#[derive(Debug, Default)]
struct Item {
    buf: Vec<u8>,
    len: usize,
    /// `None`: passed through as is.
    meta: Option<Meta>,
}

/// Outcome of offering a packet to its flow's latest item.
enum Merge {
    Merged,
    /// The packet does not continue the item; it starts a new one.
    Unable,
    /// The packet's checksum is wrong: pass it through alone.
    BadChecksum,
}

/// The coalescing table. Reuse one per receive worker: item buffers keep
/// their capacity across batches, so steady state does not allocate. Memory
/// is bounded by the batch size: one buffer per item of a batch, and an item
/// that takes a second segment reserves the full 64 KiB once.
#[derive(Debug)]
pub struct Coalescer {
    items: Vec<Item>,
    pending: usize,
    flows: [Flow; MAX_FLOWS],
    flow_count: usize,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl Coalescer {
    /// An empty coalescer.
    pub fn new() -> Self {
        Self {
            items: Vec::new(),
            pending: 0,
            flows: [Flow::default(); MAX_FLOWS],
            flow_count: 0,
        }
    }

    /// Offers one IP packet (no vnet header). Coalesces it into a pending item
    /// of the same flow when it can, else starts a new item or keeps it as is.
    /// Call [`Coalescer::flush`] at the end of every batch.
    pub fn push(&mut self, packet: &[u8]) {
        let Some(c) = candidate(packet) else {
            self.add_item(packet, None);
            return;
        };
        let tag = flow_tag(&c.key);
        let Some(slot) = self.find_flow(tag, &c.key) else {
            let item = self.add_item(packet, Some(Meta::first(&c)));
            if self.flow_count < MAX_FLOWS {
                self.flows[self.flow_count] = Flow {
                    tag,
                    key: c.key,
                    item,
                };
                self.flow_count += 1;
            }
            return;
        };
        match self.try_merge(self.flows[slot].item, packet, &c) {
            Merge::Merged => {}
            Merge::BadChecksum => {
                self.add_item(packet, None);
            }
            Merge::Unable => self.flows[slot].item = self.add_item(packet, Some(Meta::first(&c))),
        }
    }

    /// Emits every pending item as (10-byte vnet header ++ packet) through
    /// `out`, in the order the items were started, then empties the table.
    pub fn flush(&mut self, mut out: impl FnMut(&[u8])) {
        for item in &mut self.items[..self.pending] {
            item.finish();
            out(&item.buf[..item.len]);
        }
        self.pending = 0;
        self.flow_count = 0;
    }

    /// Number of items waiting for [`Coalescer::flush`].
    pub fn pending(&self) -> usize {
        self.pending
    }

    fn find_flow(&self, tag: u32, key: &FlowKey) -> Option<usize> {
        let flows = &self.flows[..self.flow_count];
        flows.iter().rposition(|f| f.tag == tag && f.key == *key)
    }

    /// Appends a new item holding `packet` behind a zeroed header (a candidate's
    /// transport bytes summed on the way in).
    fn add_item(&mut self, packet: &[u8], mut meta: Option<Meta>) -> usize {
        if self.pending == self.items.len() {
            self.items.push(Item::default());
        }
        let index = self.pending;
        let item = &mut self.items[index];
        let end = VIRTIO_NET_HDR_LEN + packet.len();
        item.reserve(end);
        item.buf[..VIRTIO_NET_HDR_LEN].fill(0);
        let out = &mut item.buf[VIRTIO_NET_HDR_LEN..end];
        match meta.as_mut() {
            Some(m) => {
                let t = m.l3.hdr_len;
                out[..t].copy_from_slice(&packet[..t]);
                m.head_l4_sum = copy_sum(&mut out[t..], &packet[t..]);
            }
            None => out.copy_from_slice(packet),
        }
        item.len = end;
        item.meta = meta;
        self.pending += 1;
        index
    }

    fn try_merge(&mut self, index: usize, packet: &[u8], c: &Candidate) -> Merge {
        let item = &mut self.items[index];
        let Some(mut meta) = item.meta else {
            return Merge::Unable;
        };
        let head = &item.buf[VIRTIO_NET_HDR_LEN..item.len];
        if !compatible(head, &meta, packet, c) {
            return Merge::Unable;
        }
        if !meta.head_verified {
            if !ip::l4_checksum_ok_with(head, meta.l3, meta.protocol, meta.head_l4_sum) {
                item.meta = None;
                return Merge::Unable;
            }
            meta.head_verified = true;
        }
        // The payload goes behind the item while it is summed; it only becomes part
        // of the item if the packet's checksum verifies.
        let (t, l4_end) = (c.l3.hdr_len, c.l3.hdr_len + c.l4_len);
        let payload = &packet[l4_end..];
        item.reserve(VIRTIO_NET_HDR_LEN + ip::MAX_PACKET_LEN);
        let payload_sum = copy_sum(&mut item.buf[item.len..item.len + payload.len()], payload);
        // The transport header is even-sized, so its sum and the payload's add up.
        let l4_sum = checksum::add(sum(&packet[t..l4_end], 0), payload_sum);
        if !ip::l4_checksum_ok_with(packet, c.l3, c.key.protocol, l4_sum) {
            item.meta = Some(meta);
            return Merge::BadChecksum;
        }
        item.append(payload.len(), &mut meta, c);
        item.meta = Some(meta);
        Merge::Merged
    }
}

impl Meta {
    /// State of an item that starts with candidate `c`.
    fn first(c: &Candidate) -> Self {
        Self {
            l3: c.l3,
            protocol: c.key.protocol,
            l4_len: c.l4_len,
            gso_size: c.payload,
            segments: 1,
            next_seq: c.seq.wrapping_add(c.payload as u32),
            closed: c.psh,
            head_verified: false,
            head_l4_sum: 0,
        }
    }
}

impl Item {
    /// Makes `buf` at least `len` bytes long. An item that merges grows to the
    /// maximum once and keeps it: one allocation per item buffer, ever.
    fn reserve(&mut self, len: usize) {
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
    }

    /// Takes in the `payload` bytes of a compatible, verified segment, already
    /// copied behind the item.
    fn append(&mut self, payload: usize, meta: &mut Meta, c: &Candidate) {
        self.len += payload;
        meta.segments += 1;
        meta.next_seq = meta.next_seq.wrapping_add(payload as u32);
        meta.closed |= payload < meta.gso_size;
        if c.psh {
            self.buf[VIRTIO_NET_HDR_LEN + meta.l3.hdr_len + ip::TCP_FLAGS] |= ip::TCP_PSH;
            meta.closed = true;
        }
    }

    /// Writes the virtio-net header, and for a merged item the IP lengths and
    /// the partial transport checksum.
    fn finish(&mut self) {
        let Some(meta) = self.meta.filter(|m| m.segments > 1) else {
            return; // the header is still all zero: GSO_NONE, packet untouched
        };
        let Some((hdr, packet)) =
            self.buf[..self.len].split_first_chunk_mut::<VIRTIO_NET_HDR_LEN>()
        else {
            return;
        };
        let t = meta.l3.hdr_len;
        ip::set_length(packet, meta.l3);
        let (gso_type, csum_offset) = match (meta.protocol, meta.l3.family) {
            (ip::PROTO_TCP, Family::V4) => (GSO_TCPV4, ip::TCP_CSUM),
            (ip::PROTO_TCP, Family::V6) => (GSO_TCPV6, ip::TCP_CSUM),
            _ => {
                let udp_len = (packet.len() - t) as u16;
                ip::put16(packet, t + 4, udp_len);
                (GSO_UDP_L4, ip::UDP_CSUM)
            }
        };
        let partial = ip::l4_pseudo_sum(packet, meta.l3, meta.protocol);
        ip::put16(packet, t + csum_offset, partial);
        let vnet = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: (t + meta.l4_len) as u16,
            gso_size: meta.gso_size as u16,
            csum_start: t as u16,
            csum_offset: csum_offset as u16,
        };
        vnet.emit(hdr);
    }
}

/// Whether `p` (candidate `c`) may be appended to the item with first packet
/// `head` and state `m` (same flow already established).
fn compatible(head: &[u8], m: &Meta, p: &[u8], c: &Candidate) -> bool {
    if m.closed || c.l4_len != m.l4_len || c.payload > m.gso_size {
        return false;
    }
    if head.len() + c.payload > ip::MAX_PACKET_LEN {
        return false;
    }
    let same_ip = match m.l3.family {
        Family::V4 => head[1] == p[1] && head[8] == p[8] && head[6] >> 5 == p[6] >> 5,
        Family::V6 => head[..4] == p[..4] && head[7] == p[7],
    };
    if !same_ip {
        return false;
    }
    let t = m.l3.hdr_len;
    match m.protocol {
        ip::PROTO_TCP => {
            c.seq == m.next_seq
                && head[t + 8..t + 13] == p[t + 8..t + 13] // ACK number, data offset
                && head[t + 14..t + 16] == p[t + 14..t + 16] // window
                && head[t + 20..t + m.l4_len] == p[t + 20..t + m.l4_len] // options
        }
        _ => m.segments < UDP_MAX_SEGMENTS,
    }
}

/// A cheap hash of the flow key for the table scan.
fn flow_tag(key: &FlowKey) -> u32 {
    let word = |at: usize| {
        u32::from_ne_bytes([
            key.addrs[at],
            key.addrs[at + 1],
            key.addrs[at + 2],
            key.addrs[at + 3],
        ])
    };
    u32::from_ne_bytes(key.ports)
        ^ word(0)
        ^ word(12)
        ^ word(16).rotate_left(7)
        ^ word(28).rotate_left(13)
}

/// Parses `p` as a packet the rules allow merging, or `None` to pass it through.
fn candidate(p: &[u8]) -> Option<Candidate> {
    if p.len() > ip::MAX_PACKET_LEN {
        return None;
    }
    let (l3, protocol) = match p.first()? >> 4 {
        4 => ipv4_candidate(p)?,
        6 => ipv6_candidate(p)?,
        _ => return None,
    };
    let t = l3.hdr_len;
    let (l4_len, seq, psh) = match protocol {
        ip::PROTO_TCP => tcp_candidate(p, t)?,
        ip::PROTO_UDP => udp_candidate(p, t)?,
        _ => return None,
    };
    let payload = p.len() - t - l4_len;
    if payload == 0 {
        return None;
    }
    let (src, dst) = ip::addrs(p, l3.family);
    let mut key = FlowKey {
        family: l3.family,
        protocol,
        ..FlowKey::default()
    };
    key.addrs[..src.len()].copy_from_slice(src);
    key.addrs[16..16 + dst.len()].copy_from_slice(dst);
    key.ports.copy_from_slice(&p[t..t + 4]);
    Some(Candidate {
        key,
        l3,
        l4_len,
        payload,
        seq,
        psh,
    })
}

/// IPv4 without options or fragmentation, consistent length, good header checksum.
fn ipv4_candidate(p: &[u8]) -> Option<(L3, u8)> {
    let ok = p.len() >= ip::MIN_HDR_LEN
        && p[0] == 0x45
        && usize::from(ip::get16(p, 2)) == p.len()
        && p[6] & 0x3f == 0 // MF and fragment offset
        && p[7] == 0
        && sum(&p[..ip::MIN_HDR_LEN], 0) == 0xffff;
    ok.then(|| {
        (
            L3 {
                family: Family::V4,
                hdr_len: ip::MIN_HDR_LEN,
            },
            p[9],
        )
    })
}

/// IPv6 with a consistent payload length.
fn ipv6_candidate(p: &[u8]) -> Option<(L3, u8)> {
    let ok =
        p.len() >= ip::IPV6_HDR_LEN && usize::from(ip::get16(p, 4)) == p.len() - ip::IPV6_HDR_LEN;
    ok.then(|| {
        (
            L3 {
                family: Family::V6,
                hdr_len: ip::IPV6_HDR_LEN,
            },
            p[6],
        )
    })
}

/// TCP header length, sequence number and PSH, if only ACK (and PSH) are set.
fn tcp_candidate(p: &[u8], t: usize) -> Option<(usize, u32, bool)> {
    if p.len() < t + ip::MIN_HDR_LEN {
        return None;
    }
    let len = usize::from(p[t + 12] >> 4) * 4;
    if len < ip::MIN_HDR_LEN || p.len() < t + len {
        return None;
    }
    let psh = match p[t + ip::TCP_FLAGS] {
        ip::TCP_ACK => false,
        f if f == ip::TCP_ACK | ip::TCP_PSH => true,
        _ => return None,
    };
    Some((len, ip::get32(p, t + 4), psh))
}

/// UDP with a length field matching the packet.
fn udp_candidate(p: &[u8], t: usize) -> Option<(usize, u32, bool)> {
    let ok = p.len() >= t + ip::UDP_HDR_LEN && usize::from(ip::get16(p, t + 4)) == p.len() - t;
    ok.then_some((ip::UDP_HDR_LEN, 0, false))
}
