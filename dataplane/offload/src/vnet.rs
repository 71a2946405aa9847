//! The `virtio_net_hdr` that `IFF_VNET_HDR` puts in front of every TUN read and
//! write (Linux `include/uapi/linux/virtio_net.h`). TUN uses the host's byte
//! order for it unless `TUNSETVNETBE` is set; this crate encodes it
//! little-endian, which is the host order on the x86 and arm64 machines we run on.

use crate::OffloadError;

/// Size of `struct virtio_net_hdr` (without `num_buffers`).
pub const VIRTIO_NET_HDR_LEN: usize = 10;
/// `flags`: the checksum from `csum_start` to the end still has to be
/// computed and stored at `csum_start + csum_offset` (the field holds the
/// pseudo-header sum). On a write this is the kernel's `CHECKSUM_PARTIAL`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum has been validated.
pub const F_DATA_VALID: u8 = 2;
/// `gso_type`: not a GSO packet.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 segmentation.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload (UFO); deprecated and rejected here.
pub const GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 segmentation.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation (USO), IPv4 or IPv6.
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP packet carries ECN (CWR only on the first segment).
pub const GSO_ECN: u8 = 0x80;

/// A decoded `virtio_net_hdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VirtioNetHdr {
    /// `F_NEEDS_CSUM` / `F_DATA_VALID`.
    pub flags: u8,
    /// One of the `GSO_*` types, possibly with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of the IP plus transport headers (advisory; not trusted here).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Offset of the checksummed region (the transport header).
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// Decodes the first [`VIRTIO_NET_HDR_LEN`] bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, OffloadError> {
        let Some((b, _)) = bytes.split_first_chunk::<VIRTIO_NET_HDR_LEN>() else {
            return Err(OffloadError::VnetHeaderTruncated { len: bytes.len() });
        };
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    /// Encodes the header into `out`.
    pub fn emit(&self, out: &mut [u8; VIRTIO_NET_HDR_LEN]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }

    /// Whether `F_NEEDS_CSUM` is set.
    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_bytes_round_trip() {
        let bytes = [
            1, 0x81, 0x34, 0x00, 0x8c, 0x05, 0x14, 0x00, 0x10, 0x00, 0xee,
        ];
        let hdr = VirtioNetHdr::parse(&bytes).unwrap();
        let want = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 52,
            gso_size: 1420,
            csum_start: 20,
            csum_offset: 16,
        };
        assert_eq!(hdr, want);
        assert!(hdr.needs_csum());
        let mut out = [0u8; VIRTIO_NET_HDR_LEN];
        hdr.emit(&mut out);
        assert_eq!(out[..], bytes[..10]);
    }

    #[test]
    fn truncated_header_is_rejected() {
        for len in 0..VIRTIO_NET_HDR_LEN {
            let err = VirtioNetHdr::parse(&[0; 16][..len]).unwrap_err();
            assert_eq!(err, OffloadError::VnetHeaderTruncated { len });
        }
    }
}
