use super::*;
use crate::ip::get16;
use crate::testutil::{checksums_ok, ip_hdr_len, naive_sum, pattern, pseudo_bytes, Rng, Spec};
use crate::vnet::{F_NEEDS_CSUM, VIRTIO_NET_HDR_LEN};
use OffloadError::*;

const HEADROOM: usize = 16;
const TAILROOM: usize = 31;

fn out() -> Segments {
    Segments::with_capacity(128 * 1024, 128)
}

/// Splits a TCP super-packet filling an IP packet to 65535 bytes and checks
/// every segment against the original, field by field.
fn check_tcp_super(v6: bool, options: Vec<u8>, gso_size: usize) {
    let mut spec = Spec {
        options,
        flags: 0x10 | 0x08 | 0x01 | 0x80,
        ..Spec::tcp(v6)
    }; // ACK PSH FIN CWR
    spec.window = 1234;
    let ip_len = if v6 { 40 } else { 20 };
    let hdrs = ip_len + 20 + spec.options.len();
    let payload = pattern(65535 - hdrs, 3);
    let (mut hdr, packet) = spec.build_gso(&payload, gso_size as u16);
    hdr.gso_type |= GSO_ECN;
    hdr.hdr_len = 7; // untrusted: must not matter
    let mut out = out();
    split(&hdr, &packet, HEADROOM, TAILROOM, &mut out).unwrap();
    let count = payload.len().div_ceil(gso_size);
    assert_eq!(out.len(), count);
    for (i, seg) in out.iter().enumerate() {
        let chunk = &payload[i * gso_size..((i + 1) * gso_size).min(payload.len())];
        assert_eq!(seg.len(), hdrs + chunk.len());
        assert_eq!(&seg[hdrs..], chunk, "segment {i} payload");
        assert!(checksums_ok(seg), "segment {i} checksums");
        if v6 {
            assert_eq!(usize::from(get16(seg, 4)), seg.len() - 40);
            assert_eq!(seg[..4], packet[..4]);
        } else {
            assert_eq!(usize::from(get16(seg, 2)), seg.len());
            assert_eq!(get16(seg, 4), spec.id.wrapping_add(i as u16));
        }
        let t = ip_len;
        let seq = u32::from_be_bytes(seg[t + 4..t + 8].try_into().unwrap());
        assert_eq!(seq, spec.seq.wrapping_add((i * gso_size) as u32));
        assert_eq!(
            seg[t + 8..t + 13],
            packet[t + 8..t + 13],
            "ack, data offset"
        );
        assert_eq!(seg[t + 14..t + 16], packet[t + 14..t + 16], "window");
        assert_eq!(seg[t + 20..hdrs], spec.options[..]);
        let flags = seg[t + 13];
        let want = match (i == 0, i + 1 == count) {
            (true, _) => 0x10 | 0x80,
            (false, true) => 0x10 | 0x08 | 0x01,
            (false, false) => 0x10,
        };
        assert_eq!(flags, want, "segment {i} flags");
    }
    let (room, len) = out.get_with_room_mut(count - 1);
    assert_eq!(room.len(), HEADROOM + len + TAILROOM);
}

#[test]
fn tcpv4_super_packet() {
    check_tcp_super(false, Vec::new(), 1448);
}

#[test]
fn tcpv4_super_packet_with_timestamps() {
    check_tcp_super(false, vec![1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7], 1388);
}

#[test]
fn tcpv6_super_packet() {
    check_tcp_super(true, vec![1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8], 1368);
}

#[test]
fn tcpv6_super_packet_odd_gso_size() {
    check_tcp_super(true, Vec::new(), 999);
}

#[test]
fn ipv4_options_are_repeated() {
    let spec = Spec::tcp(false);
    let mut packet = spec.build(&pattern(3000, 1));
    // Insert a 4-byte NOP option block: IHL 6.
    packet.splice(20..20, [1, 1, 1, 0]);
    packet[0] = 0x46;
    let hdr = VirtioNetHdr {
        gso_type: GSO_TCPV4,
        gso_size: 1000,
        ..Default::default()
    };
    let mut out = out();
    split(&hdr, &packet, 0, 0, &mut out).unwrap();
    assert_eq!(out.len(), 3);
    for seg in out.iter() {
        assert_eq!(ip_hdr_len(seg), 24);
        assert_eq!(seg[20..24], [1, 1, 1, 0]);
        assert!(checksums_ok(seg));
    }
}

fn check_udp(v6: bool) {
    let spec = Spec::udp(v6);
    let payload = pattern(10_000, 9);
    let (hdr, packet) = spec.build_gso(&payload, 1200);
    let mut out = out();
    split(&hdr, &packet, HEADROOM, TAILROOM, &mut out).unwrap();
    let ip_len = if v6 { 40 } else { 20 };
    assert_eq!(out.len(), 9);
    for (i, seg) in out.iter().enumerate() {
        let chunk = &payload[i * 1200..((i + 1) * 1200).min(10_000)];
        assert_eq!(&seg[ip_len + 8..], chunk);
        assert_eq!(usize::from(get16(seg, ip_len + 4)), 8 + chunk.len());
        assert!(checksums_ok(seg), "segment {i}");
        if !v6 {
            assert_eq!(get16(seg, 4), spec.id.wrapping_add(i as u16));
            assert_eq!(usize::from(get16(seg, 2)), seg.len());
        } else {
            assert_eq!(usize::from(get16(seg, 4)), seg.len() - 40);
        }
    }
    assert_eq!(out.get(8).len(), ip_len + 8 + 400);
}

#[test]
fn udp_l4_split_v4() {
    check_udp(false);
}

#[test]
fn udp_l4_split_v6() {
    check_udp(true);
}

#[test]
fn udp_zero_checksum_is_sent_as_ffff() {
    let spec = Spec::udp(true);
    let mut payload = pattern(100, 5);
    payload[..2].copy_from_slice(&[0, 0]);
    // Choose the first two payload bytes so that the segment sums to 0xffff.
    let probe = spec.build(&payload);
    let mut all = pseudo_bytes(&probe);
    let mut body = probe[40..].to_vec();
    body[6..8].copy_from_slice(&[0, 0]);
    all.extend_from_slice(&body);
    payload[..2].copy_from_slice(&(!naive_sum(&all, 0)).to_be_bytes());
    let (hdr, packet) = spec.build_gso(&payload, 1200);
    let mut out = out();
    split(&hdr, &packet, 0, 0, &mut out).unwrap();
    assert_eq!(get16(out.get(0), 46), 0xffff);
    assert!(checksums_ok(out.get(0)));
}

#[test]
fn needs_csum_is_completed_for_gso_none() {
    for spec in [
        Spec::tcp(false),
        Spec::tcp(true),
        Spec::udp(false),
        Spec::udp(true),
    ] {
        let whole = spec.build(&pattern(1001, 4));
        let (mut hdr, partial) = spec.build_gso(&pattern(1001, 4), 0);
        hdr.gso_type = GSO_NONE;
        assert_ne!(partial, whole);
        let mut out = out();
        split(&hdr, &partial, HEADROOM, TAILROOM, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out.get(0), &whole[..]);
    }
}

#[test]
fn gso_none_without_needs_csum_is_copied_untouched() {
    let junk = pattern(77, 1);
    let mut out = out();
    split(&VirtioNetHdr::default(), &junk, 4, 4, &mut out).unwrap();
    assert_eq!(out.get(0), &junk[..]);
}

#[test]
fn empty_payload_gso_gives_one_segment() {
    let spec = Spec {
        flags: 0x11,
        ..Spec::tcp(false)
    };
    let (hdr, packet) = spec.build_gso(&[], 1000);
    let mut out = out();
    split(&hdr, &packet, 0, 0, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out.get(0)[33], 0x11, "FIN kept on the only segment");
    assert!(checksums_ok(out.get(0)));
}

fn err(hdr: VirtioNetHdr, packet: &[u8]) -> OffloadError {
    split(&hdr, packet, 0, 0, &mut out()).unwrap_err()
}

#[test]
fn gso_type_errors() {
    let (hdr, packet) = Spec::tcp(false).build_gso(&pattern(3000, 0), 1000);
    let with = |gso_type| VirtioNetHdr { gso_type, ..hdr };
    assert_eq!(err(with(2), &packet), UnknownGsoType(2));
    assert_eq!(err(with(GSO_ECN), &packet), UnknownGsoType(GSO_ECN));
    assert_eq!(
        err(with(GSO_UDP_L4 | GSO_ECN), &packet),
        UnknownGsoType(0x85)
    );
    assert_eq!(err(with(GSO_UDP), &packet), UfoUnsupported);
    assert_eq!(
        err(VirtioNetHdr { gso_size: 0, ..hdr }, &packet),
        ZeroGsoSize {
            gso_type: GSO_TCPV4
        }
    );
    assert_eq!(
        err(with(GSO_TCPV6), &packet),
        IpVersionMismatch {
            gso_type: GSO_TCPV6,
            version: 4
        }
    );
    assert_eq!(
        err(with(GSO_UDP_L4), &packet),
        TransportMismatch {
            expected: 17,
            found: 6
        }
    );
    let (hdr6, packet6) = Spec::tcp(true).build_gso(&pattern(3000, 0), 1000);
    let v4_on_v6 = VirtioNetHdr {
        gso_type: GSO_TCPV4,
        ..hdr6
    };
    assert_eq!(
        err(v4_on_v6, &packet6),
        IpVersionMismatch {
            gso_type: GSO_TCPV4,
            version: 6
        }
    );
}

#[test]
fn checksum_field_out_of_bounds() {
    let (hdr, packet) = Spec::udp(false).build_gso(&pattern(10, 0), 1000);
    for (start, offset) in [(28, 10), (36, 1), (u16::MAX, u16::MAX), (0, 37)] {
        let bad = VirtioNetHdr {
            csum_start: start,
            csum_offset: offset,
            ..hdr
        };
        let want = ChecksumOutOfBounds {
            csum_start: start,
            csum_offset: offset,
            len: 38,
        };
        assert_eq!(err(bad, &packet), want);
        assert_eq!(
            err(
                VirtioNetHdr {
                    gso_type: GSO_NONE,
                    ..bad
                },
                &packet
            ),
            want
        );
    }
    // The last two bytes are still inside.
    let edge = VirtioNetHdr {
        gso_type: GSO_NONE,
        csum_start: 20,
        csum_offset: 16,
        ..hdr
    };
    assert!(split(&edge, &packet, 0, 0, &mut out()).is_ok());
}

#[test]
fn header_errors() {
    let tcp4 = VirtioNetHdr {
        gso_type: GSO_TCPV4,
        gso_size: 100,
        ..Default::default()
    };
    let tcp6 = VirtioNetHdr {
        gso_type: GSO_TCPV6,
        ..tcp4
    };
    let packet = Spec::tcp(false).build(&pattern(500, 0));
    assert_eq!(
        err(tcp4, &packet[..30]),
        PacketTruncated { len: 30, need: 40 }
    );
    assert_eq!(
        err(tcp4, &packet[..10]),
        PacketTruncated { len: 10, need: 20 }
    );
    assert_eq!(err(tcp4, &[]), PacketTruncated { len: 0, need: 20 });
    let mut bad = packet.clone();
    bad[0] = 0x43;
    assert_eq!(err(tcp4, &bad), BadIpv4HeaderLength(12));
    bad[0] = 0x75;
    assert_eq!(err(tcp4, &bad), UnknownIpVersion(7));
    let mut short_tcp = packet.clone();
    short_tcp[32] = 0x40;
    assert_eq!(err(tcp4, &short_tcp), BadTcpHeaderLength(16));
    short_tcp[32] = 0xf0;
    assert_eq!(
        err(tcp4, &short_tcp[..60]),
        PacketTruncated { len: 60, need: 80 }
    );
    let mut ext = Spec::tcp(true).build(&pattern(500, 0));
    ext[6] = 0; // hop-by-hop options
    assert_eq!(err(tcp6, &ext), Ipv6ExtensionHeader(0));
    let udp6 = VirtioNetHdr {
        gso_type: GSO_UDP_L4,
        ..tcp4
    };
    assert_eq!(err(udp6, &ext), Ipv6ExtensionHeader(0));
    assert_eq!(err(udp6, &ext[..44]), Ipv6ExtensionHeader(0));
}

#[test]
fn too_long_and_capacity_errors() {
    let huge = vec![0x45; 65536];
    assert_eq!(
        err(VirtioNetHdr::default(), &huge),
        PacketTooLong { len: 65536 }
    );
    let (hdr, packet) = Spec::tcp(false).build_gso(&pattern(10_000, 0), 1000);
    let mut few = Segments::with_capacity(64 * 1024, 9);
    let e = split(&hdr, &packet, 0, 0, &mut few).unwrap_err();
    assert_eq!(
        e,
        TooManySegments {
            needed: 10,
            capacity: 9
        }
    );
    let mut small = Segments::with_capacity(10_000, 64);
    let e = split(&hdr, &packet, 16, 32, &mut small).unwrap_err();
    assert_eq!(
        e,
        SegmentBufferFull {
            needed: 10 * (40 + 48) + 10_000,
            capacity: 10_000
        }
    );
    let e = split(&VirtioNetHdr::default(), &huge[..20_000], 0, 0, &mut small).unwrap_err();
    assert_eq!(
        e,
        SegmentBufferFull {
            needed: 20_000,
            capacity: 10_000
        }
    );
    // Exactly enough is enough.
    let mut exact = Segments::with_capacity(10 * (40 + 48) + 10_000, 10);
    split(&hdr, &packet, 16, 32, &mut exact).unwrap();
    assert_eq!(exact.len(), 10);
}

#[test]
fn random_input_never_panics() {
    let mut rng = Rng(7);
    let mut out = Segments::with_capacity(70_000, 64);
    let mut buf = vec![0u8; 3000];
    for round in 0..20_000 {
        let len = rng.below(buf.len());
        rng.fill(&mut buf[..len]);
        // Make the IP header plausible half of the time to reach deeper code.
        if len > 60 && round % 2 == 0 {
            buf[0] = if round % 4 == 0 { 0x45 } else { 0x60 };
            buf[6] = 6;
            buf[9] = if round % 8 == 0 { 17 } else { 6 };
        }
        let hdr_bytes: [u8; VIRTIO_NET_HDR_LEN] = std::array::from_fn(|_| rng.next() as u8);
        let mut hdr = VirtioNetHdr::parse(&hdr_bytes).unwrap();
        hdr.gso_type = [0, 1, 4, 5, 0x81, 3, 9][rng.below(7)];
        hdr.gso_size = (rng.below(1500) + 1) as u16;
        hdr.flags &= F_NEEDS_CSUM;
        hdr.csum_start %= 100;
        hdr.csum_offset %= 20;
        let _ = split(&hdr, &buf[..len], rng.below(40), rng.below(40), &mut out);
    }
}
