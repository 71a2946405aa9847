//! Test helpers: a seeded RNG, a naive checksum, and a packet builder whose
//! checksums come from the naive reference, independent of the code under test.

use crate::vnet::{VirtioNetHdr, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};

/// splitmix64.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One's-complement sum, two bytes at a time, the textbook way.
pub(crate) fn naive_sum(data: &[u8], initial: u32) -> u16 {
    let mut acc = u64::from(initial);
    for pair in data.chunks(2) {
        let hi = u64::from(pair[0]) << 8;
        let lo = pair.get(1).map_or(0, |&b| u64::from(b));
        acc += hi | lo;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The pseudo-header bytes of the transport segment of an IP packet.
pub(crate) fn pseudo_bytes(p: &[u8]) -> Vec<u8> {
    let (v6, hl) = (p[0] >> 4 == 6, ip_hdr_len(p));
    let l4_len = (p.len() - hl) as u32;
    let mut out = Vec::new();
    if v6 {
        out.extend_from_slice(&p[8..40]);
        out.extend_from_slice(&l4_len.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, p[6]]);
    } else {
        out.extend_from_slice(&p[12..20]);
        out.extend_from_slice(&[0, p[9]]);
        out.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    out
}

/// IP header length of a v4 or v6 packet (no extension headers).
pub(crate) fn ip_hdr_len(p: &[u8]) -> usize {
    if p[0] >> 4 == 6 {
        40
    } else {
        usize::from(p[0] & 0x0f) * 4
    }
}

/// Whether the IPv4 header checksum and transport checksum of `p` verify.
pub(crate) fn checksums_ok(p: &[u8]) -> bool {
    let hl = ip_hdr_len(p);
    let ip_ok = p[0] >> 4 == 6 || naive_sum(&p[..hl], 0) == 0xffff;
    let mut all = pseudo_bytes(p);
    all.extend_from_slice(&p[hl..]);
    ip_ok && naive_sum(&all, 0) == 0xffff
}

/// Offset of the transport checksum field in `p`.
pub(crate) fn l4_csum_at(p: &[u8]) -> usize {
    let proto = if p[0] >> 4 == 6 { p[6] } else { p[9] };
    ip_hdr_len(p) + if proto == 17 { 6 } else { 16 }
}

/// Builds TCP or UDP over IPv4 or IPv6 with valid checksums.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) v6: bool,
    pub(crate) udp: bool,
    pub(crate) src_port: u16,
    pub(crate) dst_port: u16,
    pub(crate) seq: u32,
    pub(crate) ack: u32,
    pub(crate) flags: u8,
    pub(crate) window: u16,
    pub(crate) options: Vec<u8>,
    pub(crate) tos: u8,
    pub(crate) ttl: u8,
    pub(crate) id: u16,
    pub(crate) frag: u16,
    pub(crate) flow_label: u32,
    pub(crate) src_last: u8,
}

impl Spec {
    pub(crate) fn tcp(v6: bool) -> Self {
        Self {
            v6,
            udp: false,
            src_port: 40000,
            dst_port: 5201,
            seq: 0xffff_f000, // wraps inside a super-packet
            ack: 77,
            flags: 0x10,
            window: 500,
            options: Vec::new(),
            tos: 0,
            ttl: 64,
            id: 0xfff0,
            frag: 0x4000, // DF
            flow_label: 0x12345,
            src_last: 1,
        }
    }

    pub(crate) fn udp(v6: bool) -> Self {
        Self {
            udp: true,
            ..Self::tcp(v6)
        }
    }

    fn l4_header(&self, payload_len: usize) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&self.src_port.to_be_bytes());
        h.extend_from_slice(&self.dst_port.to_be_bytes());
        if self.udp {
            h.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0]);
            return h;
        }
        h.extend_from_slice(&self.seq.to_be_bytes());
        h.extend_from_slice(&self.ack.to_be_bytes());
        h.push((((20 + self.options.len()) / 4) as u8) << 4);
        h.push(self.flags);
        h.extend_from_slice(&self.window.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0]);
        h.extend_from_slice(&self.options);
        h
    }

    fn ip_header(&self, l4_len: usize) -> Vec<u8> {
        let proto = if self.udp { 17 } else { 6 };
        let mut h = Vec::new();
        if self.v6 {
            let first = 0x6000_0000 | u32::from(self.tos) << 20 | self.flow_label;
            h.extend_from_slice(&first.to_be_bytes());
            h.extend_from_slice(&(l4_len as u16).to_be_bytes());
            h.extend_from_slice(&[proto, self.ttl]);
            h.extend_from_slice(&[
                0xfd,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                self.src_last,
            ]);
            h.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            return h;
        }
        h.extend_from_slice(&[0x45, self.tos]);
        h.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.extend_from_slice(&[self.ttl, proto, 0, 0, 10, 0, 0, self.src_last, 10, 0, 0, 2]);
        let csum = !naive_sum(&h, 0);
        h[10..12].copy_from_slice(&csum.to_be_bytes());
        h
    }

    /// A complete packet with valid checksums (a computed 0 sent as 0xffff).
    pub(crate) fn build(&self, payload: &[u8]) -> Vec<u8> {
        let l4 = self.l4_header(payload.len());
        let mut p = self.ip_header(l4.len() + payload.len());
        p.extend_from_slice(&l4);
        p.extend_from_slice(payload);
        let at = l4_csum_at(&p);
        let mut all = pseudo_bytes(&p);
        all.extend_from_slice(&p[ip_hdr_len(&p)..]);
        let csum = match !naive_sum(&all, 0) {
            0 => 0xffff,
            c => c,
        };
        p[at..at + 2].copy_from_slice(&csum.to_be_bytes());
        p
    }

    /// A super-packet as the kernel hands it to a TUN reader: the transport
    /// checksum field holds the pseudo-header sum, the virtio header asks for
    /// segmentation by `gso_size`.
    pub(crate) fn build_gso(&self, payload: &[u8], gso_size: u16) -> (VirtioNetHdr, Vec<u8>) {
        let mut p = self.build(payload);
        let at = l4_csum_at(&p);
        let partial = naive_sum(&pseudo_bytes(&p), 0);
        p[at..at + 2].copy_from_slice(&partial.to_be_bytes());
        let hl = ip_hdr_len(&p);
        let gso_type = match (self.udp, self.v6) {
            (true, _) => GSO_UDP_L4,
            (false, false) => GSO_TCPV4,
            (false, true) => GSO_TCPV6,
        };
        let l4_len = if self.udp { 8 } else { 20 + self.options.len() };
        let hdr = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: (hl + l4_len) as u16,
            gso_size,
            csum_start: hl as u16,
            csum_offset: (at - hl) as u16,
        };
        (hdr, p)
    }
}

/// `len` bytes of a recognisable pattern.
pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
