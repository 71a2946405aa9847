//! Why a TUN read could not be split into packets.

/// An error of [`crate::split::split`] or [`crate::vnet::VirtioNetHdr::parse`]:
/// the kernel handed us something we cannot segment. The caller drops the
/// packet (and may count it); nothing here is fatal for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// Fewer bytes than the 10-byte virtio-net header were read.
    #[error("virtio-net header truncated: got {len} bytes, need 10")]
    VnetHeaderTruncated {
        /// Bytes available.
        len: usize,
    },
    /// The packet ends before the IP or transport header it announces.
    #[error("packet truncated: {len} bytes, but its headers need {need}")]
    PacketTruncated {
        /// Length of the packet.
        len: usize,
        /// Bytes its headers need.
        need: usize,
    },
    /// The packet is longer than an IP packet can be (65535 bytes).
    #[error("packet of {len} bytes exceeds the 65535-byte IP maximum")]
    PacketTooLong {
        /// Length of the packet.
        len: usize,
    },
    /// `gso_type` is not one this crate knows (or GSO_ECN on a non-TCP type).
    #[error("unknown virtio-net gso_type {0:#04x}")]
    UnknownGsoType(u8),
    /// `VIRTIO_NET_HDR_GSO_UDP` (UDP fragmentation offload) was requested; it
    /// is deprecated and never enabled by us (`TUNSETOFFLOAD` without UFO).
    #[error("UDP fragmentation offload (GSO_UDP) is not supported")]
    UfoUnsupported,
    /// A GSO type was given with `gso_size` 0, which would never end.
    #[error("gso_type {gso_type:#04x} with gso_size 0")]
    ZeroGsoSize {
        /// The `gso_type` field.
        gso_type: u8,
    },
    /// `csum_start + csum_offset` does not leave room for the 2-byte checksum
    /// field inside the packet.
    #[error("checksum field at {csum_start}+{csum_offset} is outside the {len}-byte packet")]
    ChecksumOutOfBounds {
        /// The `csum_start` field.
        csum_start: u16,
        /// The `csum_offset` field.
        csum_offset: u16,
        /// Length of the packet.
        len: usize,
    },
    /// The IP version nibble is neither 4 nor 6.
    #[error("IP version {0} is neither 4 nor 6")]
    UnknownIpVersion(u8),
    /// The IP version does not match the GSO type (e.g. TCPV4 on an IPv6 packet).
    #[error("gso_type {gso_type:#04x} does not fit an IPv{version} packet")]
    IpVersionMismatch {
        /// The `gso_type` field.
        gso_type: u8,
        /// The packet's IP version.
        version: u8,
    },
    /// The IPv4 header length field is below the 20-byte minimum.
    #[error("IPv4 header length {0} bytes is below the 20-byte minimum")]
    BadIpv4HeaderLength(usize),
    /// The transport protocol is not the one the GSO type segments.
    #[error("GSO needs IP protocol {expected}, the packet carries {found}")]
    TransportMismatch {
        /// Protocol number the GSO type needs (6 for TCP, 17 for UDP).
        expected: u8,
        /// Protocol number in the packet.
        found: u8,
    },
    /// An IPv6 packet under TCP/UDP GSO has an extension header; we only
    /// segment packets whose transport header directly follows the IPv6 header.
    #[error("IPv6 extension header {0} under GSO is not supported")]
    Ipv6ExtensionHeader(u8),
    /// The TCP data offset is below the 20-byte minimum.
    #[error("TCP header length {0} bytes is below the 20-byte minimum")]
    BadTcpHeaderLength(usize),
    /// The packet needs more segments than the output buffer holds.
    #[error("packet needs {needed} segments, the output holds {capacity}")]
    TooManySegments {
        /// Segments the packet needs.
        needed: usize,
        /// Segments the output can hold.
        capacity: usize,
    },
    /// The segments with their headroom and tailroom need more bytes than the
    /// output buffer has.
    #[error("segments need {needed} bytes of output buffer, it has {capacity}")]
    SegmentBufferFull {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        capacity: usize,
    },
}
