use super::*;
use crate::split::{split, Segments};
use crate::testutil::{checksums_ok, naive_sum, pattern, pseudo_bytes, Rng, Spec};
use crate::vnet::GSO_NONE;

const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// Flushes and returns (header, packet) per emitted item.
fn flush(c: &mut Coalescer) -> Vec<(VirtioNetHdr, Vec<u8>)> {
    let mut items = Vec::new();
    c.flush(|b| {
        items.push((
            VirtioNetHdr::parse(b).unwrap(),
            b[VIRTIO_NET_HDR_LEN..].to_vec(),
        ))
    });
    assert_eq!(c.pending(), 0);
    items
}

/// Segment `i` of a flow: payloads of `len` bytes, consecutive seq and IP ID.
fn seg(spec: &Spec, i: u32, len: usize) -> Vec<u8> {
    let spec = Spec {
        seq: spec.seq.wrapping_add(i * len as u32),
        id: spec.id.wrapping_add(i as u16),
        ..spec.clone()
    };
    spec.build(&pattern(len, i as u8))
}

/// Splits a merged item back into its segments (or returns the packet alone).
fn resplit(hdr: &VirtioNetHdr, packet: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Segments::with_capacity(128 * 1024, 128);
    split(hdr, packet, 0, 0, &mut out).unwrap();
    out.iter().map(<[u8]>::to_vec).collect()
}

fn push_all(c: &mut Coalescer, packets: &[Vec<u8>]) {
    for p in packets {
        c.push(p);
    }
}

/// Asserts that every item went out alone and untouched.
fn assert_unmerged(items: &[(VirtioNetHdr, Vec<u8>)], inputs: &[&Vec<u8>]) {
    assert_eq!(items.len(), inputs.len());
    for ((hdr, p), input) in items.iter().zip(inputs) {
        assert_eq!(*hdr, VirtioNetHdr::default());
        assert_eq!(p, *input);
    }
}

fn round_trip(spec: Spec, gso_size: u16) {
    let hdrs = if spec.v6 { 40 } else { 20 } + if spec.udp { 8 } else { 20 + spec.options.len() };
    let payload = pattern(65535 - hdrs, 11);
    let (hdr, packet) = spec.build_gso(&payload, gso_size);
    let segments = resplit(&hdr, &packet);
    assert!(segments.len() > 40);
    let mut c = Coalescer::new();
    push_all(&mut c, &segments);
    assert_eq!(c.pending(), 1);
    let items = flush(&mut c);
    assert_eq!(items.len(), 1);
    let (got_hdr, got) = &items[0];
    assert_eq!(got_hdr.flags, F_NEEDS_CSUM);
    assert_eq!(usize::from(got_hdr.hdr_len), hdrs);
    assert_eq!(got_hdr.gso_size, gso_size);
    assert_eq!(&got[hdrs..], &payload[..]);
    // Everything else — lengths, IPv4 checksum, the partial (pseudo-header)
    // checksum, PSH, gso_type, csum_start/offset — equals what the kernel
    // itself hands out for this super-packet.
    assert_eq!(*got_hdr, hdr);
    assert_eq!(*got, packet);
}

#[test]
fn round_trip_tcpv4() {
    round_trip(
        Spec {
            flags: ACK | PSH,
            ..Spec::tcp(false)
        },
        1448,
    );
}

#[test]
fn round_trip_tcpv6_with_options() {
    round_trip(
        Spec {
            flags: ACK | PSH,
            options: vec![1, 1, 8, 10, 0, 1, 2, 3, 4, 5, 6, 7],
            ..Spec::tcp(true)
        },
        1376,
    );
}

#[test]
fn round_trip_udp() {
    round_trip(Spec::udp(false), 1200);
    round_trip(Spec::udp(true), 1232);
}

#[test]
fn merged_item_fields() {
    let spec = Spec::tcp(false);
    let segs: Vec<_> = (0..3).map(|i| seg(&spec, i, 1000)).collect();
    let mut c = Coalescer::new();
    push_all(&mut c, &segs);
    let items = flush(&mut c);
    let (hdr, p) = &items[0];
    let want = VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 40,
        gso_size: 1000,
        csum_start: 20,
        csum_offset: 16,
    };
    assert_eq!((items.len(), *hdr), (1, want));
    assert_eq!(usize::from(ip::get16(p, 2)), 3040);
    assert_eq!(naive_sum(&p[..20], 0), 0xffff, "IPv4 header checksum");
    assert_eq!(
        ip::get16(p, 36),
        naive_sum(&pseudo_bytes(p), 0),
        "partial checksum"
    );
    assert_eq!(p[..2], segs[0][..2]);
    assert_eq!(p[4..10], segs[0][4..10], "ID, flags, TTL, protocol");
    assert_eq!(
        p[12..36],
        segs[0][12..36],
        "addresses and TCP header up to the checksum"
    );
    assert_eq!(
        p[40..],
        [&segs[0][40..], &segs[1][40..], &segs[2][40..]].concat()[..]
    );
}

#[test]
fn out_of_order_and_gaps_are_not_merged() {
    let spec = Spec::tcp(false);
    let s: Vec<_> = (0..3).map(|i| seg(&spec, i, 1000)).collect();
    let mut c = Coalescer::new();
    push_all(&mut c, &[s[0].clone(), s[2].clone(), s[1].clone()]);
    assert_unmerged(&flush(&mut c), &[&s[0], &s[2], &s[1]]);
    push_all(&mut c, &[s[0].clone(), s[2].clone()]);
    assert_unmerged(&flush(&mut c), &[&s[0], &s[2]]);
    push_all(&mut c, &[s[1].clone(), s[0].clone()]);
    assert_unmerged(&flush(&mut c), &[&s[1], &s[0]]);
}

#[test]
fn flags_other_than_ack_psh_are_not_merged() {
    let spec = Spec::tcp(true);
    let first = seg(&spec, 0, 500);
    for flags in [
        0x02 | ACK,
        0x01 | ACK,
        0x04 | ACK,
        0x20 | ACK,
        0x80 | ACK,
        0x40 | ACK,
        0,
        PSH,
    ] {
        let second = seg(
            &Spec {
                flags,
                ..spec.clone()
            },
            1,
            500,
        );
        let mut c = Coalescer::new();
        push_all(&mut c, &[first.clone(), second.clone()]);
        assert_unmerged(&flush(&mut c), &[&first, &second]);
    }
}

#[test]
fn psh_ends_an_item() {
    let spec = Spec::tcp(false);
    let psh = Spec {
        flags: ACK | PSH,
        ..spec.clone()
    };
    let (a, b, c2) = (seg(&spec, 0, 700), seg(&psh, 1, 700), seg(&spec, 2, 700));
    let mut c = Coalescer::new();
    push_all(&mut c, &[a.clone(), b.clone(), c2.clone()]);
    let items = flush(&mut c);
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].1[33], ACK | PSH, "PSH moved to the merged head");
    assert_eq!(items[0].1.len(), 40 + 1400);
    assert_unmerged(&items[1..], &[&c2]);
    // An item that starts with PSH takes nothing more.
    let (p0, p1) = (seg(&psh, 0, 700), seg(&spec, 1, 700));
    push_all(&mut c, &[p0.clone(), p1.clone()]);
    assert_unmerged(&flush(&mut c), &[&p0, &p1]);
}

#[test]
fn segment_sizes_follow_the_first() {
    let spec = Spec::tcp(false);
    let full = seg(&spec, 0, 1000);
    let short = seg(&spec, 1, 1000);
    let short = {
        let mut s = short;
        s.truncate(40 + 400);
        Spec {
            seq: spec.seq.wrapping_add(1000),
            id: spec.id + 1,
            ..spec.clone()
        }
        .build(&s[40..])
    };
    let after = Spec {
        seq: spec.seq.wrapping_add(1400),
        ..spec.clone()
    }
    .build(&pattern(400, 9));
    let mut c = Coalescer::new();
    push_all(&mut c, &[full.clone(), short, after.clone()]);
    let items = flush(&mut c);
    assert_eq!(items.len(), 2, "nothing after a shorter segment");
    assert_eq!((items[0].0.gso_size, items[0].1.len()), (1000, 1440));
    assert_unmerged(&items[1..], &[&after]);
    // A larger segment after a smaller first one starts a new item.
    let small = seg(&spec, 0, 500);
    let large = Spec {
        seq: spec.seq.wrapping_add(500),
        ..spec.clone()
    }
    .build(&pattern(1000, 1));
    push_all(&mut c, &[small.clone(), large.clone()]);
    assert_unmerged(&flush(&mut c), &[&small, &large]);
}

#[test]
fn header_differences_are_not_merged() {
    let v4 = Spec::tcp(false);
    let v6 = Spec::tcp(true);
    let variants = [
        (
            v4.clone(),
            Spec {
                ack: 78,
                ..v4.clone()
            },
        ),
        (
            v4.clone(),
            Spec {
                window: 501,
                ..v4.clone()
            },
        ),
        (
            v4.clone(),
            Spec {
                ttl: 63,
                ..v4.clone()
            },
        ),
        (
            v4.clone(),
            Spec {
                tos: 2,
                ..v4.clone()
            },
        ),
        (
            v4.clone(),
            Spec {
                frag: 0,
                ..v4.clone()
            },
        ),
        (
            v4.clone(),
            Spec {
                dst_port: 1,
                ..v4.clone()
            },
        ),
        (
            v4.clone(),
            Spec {
                src_last: 9,
                ..v4.clone()
            },
        ),
        (
            Spec {
                options: vec![1, 1, 1, 1],
                ..v4.clone()
            },
            Spec {
                options: vec![1, 1, 1, 0],
                ..v4.clone()
            },
        ),
        (
            v4.clone(),
            Spec {
                options: vec![1, 1, 1, 1],
                ..v4.clone()
            },
        ),
        (
            v6.clone(),
            Spec {
                flow_label: 7,
                ..v6.clone()
            },
        ),
        (
            v6.clone(),
            Spec {
                tos: 4,
                ..v6.clone()
            },
        ),
        (
            v6.clone(),
            Spec {
                ttl: 1,
                ..v6.clone()
            },
        ),
        (
            v4.clone(),
            Spec {
                v6: true,
                ..v4.clone()
            },
        ),
        (
            v4.clone(),
            Spec {
                udp: true,
                ..v4.clone()
            },
        ),
    ];
    for (n, (a, b)) in variants.iter().enumerate() {
        let (p0, p1) = (seg(a, 0, 600), seg(b, 1, 600));
        let mut c = Coalescer::new();
        push_all(&mut c, &[p0.clone(), p1.clone()]);
        let items = flush(&mut c);
        assert_eq!(items.len(), 2, "variant {n}");
        assert_unmerged(&items, &[&p0, &p1]);
    }
}

#[test]
fn packets_that_are_never_candidates_pass_through() {
    let v4 = Spec::tcp(false);
    let v6 = Spec::tcp(true);
    let mut with_options = seg(&v4, 1, 600);
    with_options.splice(20..20, [1, 1, 1, 0]);
    with_options[0] = 0x46;
    with_options[3] += 4;
    let mut ext = seg(&v6, 1, 600);
    ext[6] = 0;
    let mut bad_ip_csum = seg(&v4, 1, 600);
    bad_ip_csum[10] ^= 1;
    let mut bad_len = seg(&v4, 1, 600);
    bad_len[3] -= 1;
    let mut bad_len6 = seg(&v6, 1, 600);
    bad_len6[5] += 1;
    let odd = [
        (
            seg(
                &Spec {
                    frag: 0x2000,
                    ..v4.clone()
                },
                1,
                600,
            ),
            &v4,
        ), // more fragments
        (
            seg(
                &Spec {
                    frag: 0x0001,
                    ..v4.clone()
                },
                1,
                600,
            ),
            &v4,
        ), // fragment offset
        (with_options, &v4),
        (ext, &v6),
        (bad_ip_csum, &v4),
        (bad_len, &v4),
        (bad_len6, &v6),
        (v4.build(&[]), &v4),
        (v6.build(&[]), &v6),
        (vec![], &v4),
        (vec![0x45; 7], &v4),
        (vec![0x60; 50], &v6),
    ];
    for (n, (odd, spec)) in odd.iter().enumerate() {
        let (first, next) = (seg(spec, 0, 600), seg(spec, 1, 600));
        let mut c = Coalescer::new();
        push_all(&mut c, &[first, odd.clone(), next]);
        let items = flush(&mut c);
        assert_eq!(
            items.len(),
            2,
            "case {n}: the odd packet neither merges nor blocks the flow"
        );
        assert_eq!(
            items[0].0.gso_type,
            if spec.v6 { GSO_TCPV6 } else { GSO_TCPV4 }
        );
        assert_unmerged(&items[1..], &[odd]);
    }
}

#[test]
fn bad_checksums_are_not_merged() {
    let spec = Spec::tcp(false);
    let s: Vec<_> = (0..3).map(|i| seg(&spec, i, 1000)).collect();
    let mut bad = s[1].clone();
    bad[500] ^= 0x40;
    let mut c = Coalescer::new();
    push_all(&mut c, &[s[0].clone(), bad.clone(), s[2].clone()]);
    assert_unmerged(&flush(&mut c), &[&s[0], &bad, &s[2]]);
    // A bad first packet stays alone and untouched; the rest still merge.
    let mut bad_head = s[0].clone();
    bad_head[36] ^= 1;
    push_all(&mut c, &[bad_head.clone(), s[1].clone(), s[2].clone()]);
    let items = flush(&mut c);
    assert_eq!(items.len(), 2);
    assert_unmerged(&items[..1], &[&bad_head]);
    assert_eq!(resplit(&items[1].0, &items[1].1), s[1..]);
    // A bad packet behind a merged run leaves its bytes in the item's scratch space
    // only: the good copy that follows continues the run, and nothing of the bad
    // one is in it.
    let mut bad2 = s[2].clone();
    bad2[900] ^= 0x10;
    push_all(
        &mut c,
        &[s[0].clone(), s[1].clone(), bad2.clone(), s[2].clone()],
    );
    let items = flush(&mut c);
    assert_eq!(items.len(), 2);
    assert_eq!(resplit(&items[0].0, &items[0].1), s);
    assert_unmerged(&items[1..], &[&bad2]);
    // UDP over IPv4 without a checksum is not merged either.
    let u: Vec<_> = (0..2)
        .map(|i| {
            let mut p = seg(&Spec::udp(false), i, 300);
            p[26..28].copy_from_slice(&[0, 0]);
            p
        })
        .collect();
    push_all(&mut c, &u);
    assert_unmerged(&flush(&mut c), &[&u[0], &u[1]]);
}

#[test]
fn size_limits_start_new_items() {
    let spec = Spec::tcp(false);
    let segs: Vec<_> = (0..50).map(|i| seg(&spec, i, 1448)).collect();
    let mut c = Coalescer::new();
    push_all(&mut c, &segs);
    let items = flush(&mut c);
    assert_eq!(items.len(), 2);
    assert_eq!(
        items[0].1.len(),
        40 + 45 * 1448,
        "45 segments fit in 65535 bytes"
    );
    assert!(items.iter().all(|(_, p)| p.len() <= 65535));
    let back: Vec<_> = items.iter().flat_map(|(h, p)| resplit(h, p)).collect();
    assert_eq!(back, segs);
    let udp: Vec<_> = (0..70).map(|i| seg(&Spec::udp(true), i, 100)).collect();
    push_all(&mut c, &udp);
    let items = flush(&mut c);
    assert_eq!(items.len(), 2);
    assert_eq!(
        resplit(&items[0].0, &items[0].1).len(),
        64,
        "UDP_GRO_CNT_MAX"
    );
    let back: Vec<_> = items.iter().flat_map(|(h, p)| resplit(h, p)).collect();
    assert_eq!(back, udp);
}

#[test]
fn flows_beyond_the_table_pass_through() {
    let flows: Vec<_> = (0..70)
        .map(|f| Spec {
            src_port: 1000 + f,
            ..Spec::tcp(f % 2 == 0)
        })
        .collect();
    let mut c = Coalescer::new();
    for i in 0..2 {
        for spec in &flows {
            c.push(&seg(spec, i, 800));
        }
    }
    let items = flush(&mut c);
    assert_eq!(items.len(), MAX_FLOWS + 2 * (70 - MAX_FLOWS));
    assert!(items[..MAX_FLOWS]
        .iter()
        .all(|(h, _)| h.gso_type != GSO_NONE));
    assert!(items[MAX_FLOWS..]
        .iter()
        .all(|(h, _)| *h == VirtioNetHdr::default()));
}

/// 1000 packets of 8 flows (TCP and UDP, v4 and v6) interleaved at random, with
/// junk in between: every flow comes back intact and in order, merged.
#[test]
fn interleaved_flows() {
    let mut rng = Rng(42);
    let specs: Vec<Spec> = (0..8u16)
        .map(|f| {
            let base = if f < 6 {
                Spec::tcp(f % 2 == 1)
            } else {
                Spec::udp(f == 7)
            };
            Spec {
                src_port: 2000 + f,
                seq: rng.next() as u32,
                id: rng.next() as u16,
                ..base
            }
        })
        .collect();
    let sizes = [1448, 1380, 1000, 1200, 576, 1440, 1200, 1300];
    let mut next = [0u32; 8];
    let mut sent: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 9]; // index 8: junk
    let mut c = Coalescer::new();
    for _ in 0..1000 {
        let f = rng.below(9);
        let packet = if f == 8 {
            let mut junk = vec![0u8; rng.below(100)];
            rng.fill(&mut junk);
            junk
        } else {
            next[f] += 1;
            seg(&specs[f], next[f] - 1, sizes[f])
        };
        c.push(&packet);
        sent[f].push(packet);
    }
    let items = flush(&mut c);
    assert!(items.len() < 250, "{} items", items.len());
    let mut got: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 9];
    for (hdr, p) in &items {
        let f = match p.first().map(|b| b >> 4) {
            Some(4) if p.len() >= 40 && ip::get16(p, 20) >= 2000 && p[9] != 0 => {
                usize::from(ip::get16(p, 20) - 2000)
            }
            Some(6) if p.len() >= 60 && ip::get16(p, 40) >= 2000 => {
                usize::from(ip::get16(p, 40) - 2000)
            }
            _ => 8,
        };
        let f = if f < 8 && (checksums_ok(p) || hdr.gso_type != GSO_NONE) {
            f
        } else {
            8
        };
        got[f].extend(resplit(hdr, p));
    }
    for f in 0..8 {
        assert_eq!(got[f], sent[f], "flow {f}");
    }
    let mut junk_sent = sent[8].clone();
    let mut junk_got = got[8].clone();
    junk_sent.sort();
    junk_got.sort();
    assert_eq!(junk_got, junk_sent);
}

#[test]
fn reuse_across_batches() {
    let spec = Spec::tcp(false);
    let mut c = Coalescer::default();
    for batch in 0..5u32 {
        let segs: Vec<_> = (0..4).map(|i| seg(&spec, batch * 4 + i, 900)).collect();
        push_all(&mut c, &segs);
        assert_eq!(c.pending(), 1);
        let items = flush(&mut c);
        assert_eq!(resplit(&items[0].0, &items[0].1), segs);
    }
}
