//! Golden bytes of the requests, and parsing of answers built by hand.

use super::*;
use std::net::Ipv4Addr;

/// The bytes after the 16-byte header.
fn body(msg: &[u8]) -> &[u8] {
    &msg[field::NLMSG_HDR_LEN..]
}

fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(payload);
    v.resize(align4(v.len()), 0);
    v
}

#[test]
fn header_has_length_type_flags_and_seq() {
    let msg = Builder::new(RTM_GETLINK, NLM_F_DUMP)
        .fixed(&[1, 2, 3])
        .finish(77);
    assert_eq!(msg.len(), 20, "fixed part padded to 4");
    assert_eq!(read_u32(&msg, field::NLMSG_LEN), 20);
    assert_eq!(read_u16(&msg, field::NLMSG_TYPE), RTM_GETLINK);
    assert_eq!(
        read_u16(&msg, field::NLMSG_FLAGS),
        NLM_F_DUMP | NLM_F_REQUEST
    );
    assert_eq!(read_u32(&msg, field::NLMSG_SEQ), 77);
    let parsed: Vec<_> = messages(&msg).collect();
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[0].payload, &[1, 2, 3, 0]);
}

#[test]
fn rule_golden() {
    // ip -6 rule add priority 32761 not fwmark 0xca6c table 51820
    let r = Rule {
        family: Family::V6,
        priority: Some(32761),
        fwmark: Some(0xca6c),
        invert: true,
        table: 51820,
        suppress_prefixlength: None,
    };
    let msg = rule(Verb::Add, &r).finish(1);
    assert_eq!(
        read_u16(&msg, field::NLMSG_FLAGS),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    );
    let mut want = vec![libc::AF_INET6 as u8, 0, 0, 0, 0, 0, 0, FR_ACT_TO_TBL];
    want.extend_from_slice(&FIB_RULE_INVERT.to_ne_bytes());
    want.extend(attr(FRA_PRIORITY, &32761u32.to_ne_bytes()));
    want.extend(attr(FRA_FWMARK, &0xca6cu32.to_ne_bytes()));
    want.extend(attr(FRA_TABLE, &51820u32.to_ne_bytes()));
    assert_eq!(body(&msg), want);
    assert_eq!(parse_rule(body(&msg)), Some(r));
    let del = rule(Verb::Del, &r).finish(2);
    assert_eq!(read_u16(&del, field::NLMSG_TYPE), RTM_DELRULE);
    assert_eq!(
        read_u16(&del, field::NLMSG_FLAGS),
        NLM_F_REQUEST | NLM_F_ACK
    );
    assert_eq!(body(&del), want, "a delete names the same rule");
}

#[test]
fn suppress_rule_in_main() {
    let r = Rule {
        family: Family::V4,
        priority: Some(32760),
        fwmark: None,
        invert: false,
        table: 254,
        suppress_prefixlength: Some(0),
    };
    let msg = rule(Verb::Add, &r).finish(1);
    assert_eq!(body(&msg)[4], 254, "main fits the header's table byte");
    assert_eq!(parse_rule(body(&msg)), Some(r));
    // The kernel lists "no suppress" as u32::MAX and "no mark" as 0.
    let mut listed = body(&msg)[..field::RTMSG_LEN].to_vec();
    listed.extend(attr(FRA_SUPPRESS_PREFIXLEN, &u32::MAX.to_ne_bytes()));
    listed.extend(attr(FRA_FWMARK, &0u32.to_ne_bytes()));
    let got = parse_rule(&listed).unwrap();
    assert_eq!(
        (got.suppress_prefixlength, got.fwmark, got.table),
        (None, None, 254)
    );
}

#[test]
fn route_golden() {
    // ip -4 route add default dev (ifindex 9) table 51820
    let r = Route {
        family: Family::V4,
        dst: None,
        oif: Some(9),
        table: 51820,
        kind: RouteKind::Unicast,
    };
    let msg = route(Verb::Add, &r).finish(1);
    let mut want = vec![
        libc::AF_INET as u8,
        0,
        0,
        0,
        0,
        RTPROT_BOOT,
        RT_SCOPE_LINK,
        RTN_UNICAST,
    ];
    want.extend_from_slice(&0u32.to_ne_bytes());
    want.extend(attr(RTA_TABLE, &51820u32.to_ne_bytes()));
    want.extend(attr(RTA_OIF, &9u32.to_ne_bytes()));
    assert_eq!(body(&msg), want);
    assert_eq!(parse_route(body(&msg)), Some(r));
    let rep = route(Verb::Replace, &r).finish(1);
    assert_eq!(
        read_u16(&rep, field::NLMSG_FLAGS),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    );
    let del = route(Verb::Del, &r).finish(1);
    assert_eq!(read_u16(&del, field::NLMSG_TYPE), RTM_DELROUTE);
    assert_eq!(&body(&del)[5..8], &[0, RT_SCOPE_NOWHERE, RTN_UNSPEC]);
}

#[test]
fn route_with_destination_and_blackhole() {
    let r = Route {
        family: Family::V4,
        dst: Some((Ipv4Addr::new(100, 64, 0, 1).into(), 32)),
        oif: None,
        table: 254,
        kind: RouteKind::Blackhole,
    };
    let msg = route(Verb::Add, &r).finish(1);
    assert_eq!(
        &body(&msg)[..8],
        &[
            2,
            32,
            0,
            0,
            254,
            RTPROT_BOOT,
            RT_SCOPE_UNIVERSE,
            RTN_BLACKHOLE
        ]
    );
    assert_eq!(parse_route(body(&msg)), Some(r));
}

#[test]
fn address_golden_and_parse() {
    let spec = AddressSpec {
        ifindex: 3,
        addr: "fd00::2".parse().unwrap(),
        prefix_len: 128,
        nodad: true,
        deprecated: false,
    };
    let msg = address(Verb::Add, &spec).finish(1);
    let ip = spec_bytes(&spec);
    let mut want = vec![libc::AF_INET6 as u8, 128, IFA_F_NODAD as u8, 0];
    want.extend_from_slice(&3u32.to_ne_bytes());
    want.extend(attr(IFA_LOCAL, &ip));
    want.extend(attr(IFA_ADDRESS, &ip));
    want.extend(attr(IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes()));
    assert_eq!(body(&msg), want);
    let a = parse_address(body(&msg)).unwrap();
    assert_eq!(
        (a.ifindex, a.local, a.peer, a.prefix_len),
        (3, spec.addr, None, 128)
    );
    assert_eq!(a.flags, IFA_F_NODAD);
    assert!(a.is_usable_global());
    // A point-to-point address: IFA_ADDRESS is the peer.
    let mut p2p = vec![libc::AF_INET as u8, 24, 0, 0];
    p2p.extend_from_slice(&4u32.to_ne_bytes());
    p2p.extend(attr(IFA_LOCAL, &[10, 0, 0, 1]));
    p2p.extend(attr(IFA_ADDRESS, &[10, 0, 1, 1]));
    let a = parse_address(&p2p).unwrap();
    assert_eq!(a.peer, Some("10.0.1.1".parse().unwrap()));
    assert_eq!(a.local, "10.0.0.1".parse::<IpAddr>().unwrap());
}

fn spec_bytes(spec: &AddressSpec) -> Vec<u8> {
    ip_bytes(&spec.addr)
}

#[test]
fn link_requests_and_parse() {
    let msg = setlink(5, Some(true), Some(1300)).finish(1);
    let b = body(&msg);
    assert_eq!(read_u32(b, field::IFINFO_INDEX), 5);
    assert_eq!(read_u32(b, field::IFINFO_FLAGS), libc::IFF_UP as u32);
    assert_eq!(read_u32(b, field::IFINFO_CHANGE), libc::IFF_UP as u32);
    assert_eq!(find_u32(&b[field::IFINFO_LEN..], IFLA_MTU), Some(1300));
    let by_name = getlink_by_name("pd0").finish(1);
    let link = parse_link(body(&by_name)).unwrap();
    assert_eq!((link.index, link.name.as_str(), link.mtu), (0, "pd0", None));
    let down = setlink(5, Some(false), None).finish(1);
    assert_eq!(read_u32(body(&down), field::IFINFO_FLAGS), 0);
    assert_eq!(
        read_u32(body(&down), field::IFINFO_CHANGE),
        libc::IFF_UP as u32
    );
}

#[test]
fn errors_and_truncation() {
    let mut payload = (-libc::EEXIST).to_ne_bytes().to_vec();
    payload.extend_from_slice(&Builder::new(RTM_NEWRULE, 0).finish(42));
    assert_eq!(error_code(&payload), Some(libc::EEXIST));
    assert_eq!(error_seq(&payload), Some(42));
    assert_eq!(error_code(&[0, 0, 0, 0]), Some(0));
    assert_eq!(error_code(&[1]), None);
    let msg = rule(
        Verb::Add,
        &Rule {
            family: Family::V4,
            priority: Some(1),
            fwmark: Some(2),
            invert: false,
            table: 3,
            suppress_prefixlength: Some(0),
        },
    )
    .finish(1);
    for cut in 0..msg.len() {
        for m in messages(&msg[..cut]) {
            let _ = parse_rule(m.payload);
            let _ = parse_route(m.payload);
            let _ = parse_address(m.payload);
            let _ = parse_link(m.payload);
        }
        let _ = parse_rule(&msg[field::NLMSG_HDR_LEN.min(cut)..cut]);
        let _ = parse_address(&msg[field::NLMSG_HDR_LEN.min(cut)..cut]);
    }
}

#[test]
fn a_conntrack_flush_is_a_ctnetlink_delete_with_only_the_family() {
    let m = flush_conntrack(Family::V4).finish(7);
    let mut want = Vec::new();
    want.extend_from_slice(&20u32.to_ne_bytes());
    want.extend_from_slice(&0x0102u16.to_ne_bytes());
    want.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    want.extend_from_slice(&7u32.to_ne_bytes());
    want.extend_from_slice(&0u32.to_ne_bytes());
    want.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
    assert_eq!(m, want);
}
