//! The rtnetlink message layout (linux/netlink.h, rtnetlink.h, if_addr.h,
//! fib_rules.h): requests built into byte vectors, answers parsed from byte slices.
//! Pure: no socket, golden-tested below. Integers are native-endian, as the kernel
//! reads them; every message and attribute is padded to 4 bytes.

use crate::types::{Address, AddressSpec, Family, Link, Route, RouteKind, Rule, Verb};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Message and attribute type numbers and flags (kernel UAPI values).
pub mod consts {
    #![allow(missing_docs)]
    pub const NLMSG_ERROR: u16 = 2;
    pub const NLMSG_DONE: u16 = 3;
    pub const NLM_F_REQUEST: u16 = 0x1;
    pub const NLM_F_ACK: u16 = 0x4;
    pub const NLM_F_DUMP: u16 = 0x300;
    pub const NLM_F_REPLACE: u16 = 0x100;
    pub const NLM_F_EXCL: u16 = 0x200;
    pub const NLM_F_CREATE: u16 = 0x400;
    pub const RTM_NEWLINK: u16 = 16;
    pub const RTM_DELLINK: u16 = 17;
    pub const RTM_GETLINK: u16 = 18;
    pub const RTM_NEWADDR: u16 = 20;
    pub const RTM_DELADDR: u16 = 21;
    pub const RTM_GETADDR: u16 = 22;
    pub const RTM_NEWROUTE: u16 = 24;
    pub const RTM_DELROUTE: u16 = 25;
    pub const RTM_GETROUTE: u16 = 26;
    pub const RTM_NEWRULE: u16 = 32;
    pub const RTM_DELRULE: u16 = 33;
    pub const RTM_GETRULE: u16 = 34;
    pub const IFLA_IFNAME: u16 = 3;
    pub const IFLA_MTU: u16 = 4;
    pub const IFA_ADDRESS: u16 = 1;
    pub const IFA_LOCAL: u16 = 2;
    pub const IFA_FLAGS: u16 = 8;
    pub const IFA_CACHEINFO: u16 = 6;
    pub const IFA_F_NODAD: u32 = 0x02;
    pub const RTA_DST: u16 = 1;
    pub const RTA_OIF: u16 = 4;
    pub const RTA_TABLE: u16 = 15;
    pub const RTPROT_BOOT: u8 = 3;
    pub const RT_SCOPE_UNIVERSE: u8 = 0;
    pub const RT_SCOPE_LINK: u8 = 253;
    pub const RT_SCOPE_NOWHERE: u8 = 255;
    pub const RTN_UNSPEC: u8 = 0;
    pub const RTN_UNICAST: u8 = 1;
    pub const RTN_BLACKHOLE: u8 = 6;
    pub const RTN_UNREACHABLE: u8 = 7;
    pub const FRA_PRIORITY: u16 = 6;
    pub const FRA_FWMARK: u16 = 10;
    pub const FRA_SUPPRESS_PREFIXLEN: u16 = 14;
    pub const FRA_TABLE: u16 = 15;
    pub const FR_ACT_TO_TBL: u8 = 1;
    pub const FIB_RULE_INVERT: u32 = 0x2;
    /// Attribute-type bits without `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER`.
    pub const NLA_TYPE_MASK: u16 = 0x3fff;
}
use consts::*;

/// Sizes and offsets of the fixed headers.
pub mod field {
    #![allow(missing_docs)]
    use std::ops::Range;
    pub const NLMSG_HDR_LEN: usize = 16;
    pub const NLMSG_LEN: Range<usize> = 0..4;
    pub const NLMSG_TYPE: Range<usize> = 4..6;
    pub const NLMSG_FLAGS: Range<usize> = 6..8;
    pub const NLMSG_SEQ: Range<usize> = 8..12;
    pub const IFINFO_LEN: usize = 16;
    pub const IFINFO_INDEX: Range<usize> = 4..8;
    pub const IFINFO_FLAGS: Range<usize> = 8..12;
    pub const IFINFO_CHANGE: Range<usize> = 12..16;
    pub const IFADDR_LEN: usize = 8;
    pub const IFADDR_INDEX: Range<usize> = 4..8;
    /// `rtmsg` and `fib_rule_hdr` have the same size and byte positions.
    pub const RTMSG_LEN: usize = 12;
    pub const RTMSG_FLAGS: Range<usize> = 8..12;
    pub const RTA_HDR_LEN: usize = 4;
    pub const RTA_LEN: Range<usize> = 0..2;
    pub const RTA_TYPE: Range<usize> = 2..4;
    pub const NLMSGERR_ERROR: Range<usize> = 0..4;
    /// In an `NLMSG_ERROR`, the header of the request that failed follows the errno.
    pub const NLMSGERR_REQ_SEQ: Range<usize> = 12..16;
}

/// Rounds up to the 4-byte netlink alignment.
pub fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// Reads a native-endian u32 at `range`; callers check that `bytes` is long enough.
pub fn read_u32(bytes: &[u8], range: std::ops::Range<usize>) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[range]);
    u32::from_ne_bytes(raw)
}

/// Reads a native-endian u16 at `range`; callers check that `bytes` is long enough.
pub fn read_u16(bytes: &[u8], range: std::ops::Range<usize>) -> u16 {
    let mut raw = [0u8; 2];
    raw.copy_from_slice(&bytes[range]);
    u16::from_ne_bytes(raw)
}

/// A request being built: header, fixed part, attributes.
#[derive(Debug, Clone)]
pub struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    /// Starts a message of type `ty` with `flags` (`NLM_F_REQUEST` is added).
    pub fn new(ty: u16, flags: u16) -> Builder {
        let mut buf = vec![0u8; field::NLMSG_HDR_LEN];
        buf[field::NLMSG_TYPE].copy_from_slice(&ty.to_ne_bytes());
        buf[field::NLMSG_FLAGS].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        Builder { buf }
    }

    /// Appends the fixed part (`ifinfomsg`, `rtmsg`, ...).
    pub fn fixed(mut self, bytes: &[u8]) -> Builder {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// Appends an attribute.
    pub fn attr(mut self, ty: u16, payload: &[u8]) -> Builder {
        let len = (field::RTA_HDR_LEN + payload.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// Appends a u32 attribute.
    pub fn attr_u32(self, ty: u16, value: u32) -> Builder {
        self.attr(ty, &value.to_ne_bytes())
    }

    /// The finished message with sequence number `seq`.
    pub fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[field::NLMSG_LEN].copy_from_slice(&len.to_ne_bytes());
        self.buf[field::NLMSG_SEQ].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// `IPCTNL_MSG_CT_DELETE` with no tuple (`NETLINK_NETFILTER`): every conntrack entry
/// of `family` goes.
pub fn flush_conntrack(family: Family) -> Builder {
    // NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE; then `nfgenmsg`: family,
    // version NFNETLINK_V0, res_id 0 (big-endian).
    Builder::new(1 << 8 | 2, NLM_F_ACK).fixed(&[family.af(), 0, 0, 0])
}

/// One message of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// Its type.
    pub ty: u16,
    /// Its sequence number.
    pub seq: u32,
    /// What follows the header.
    pub payload: &'a [u8],
}

/// The messages of a datagram; stops at the first malformed one.
pub fn messages(mut bytes: &[u8]) -> impl Iterator<Item = Message<'_>> {
    std::iter::from_fn(move || {
        if bytes.len() < field::NLMSG_HDR_LEN {
            return None;
        }
        let len = read_u32(bytes, field::NLMSG_LEN) as usize;
        if len < field::NLMSG_HDR_LEN || len > bytes.len() {
            return None;
        }
        let msg = Message {
            ty: read_u16(bytes, field::NLMSG_TYPE),
            seq: read_u32(bytes, field::NLMSG_SEQ),
            payload: &bytes[field::NLMSG_HDR_LEN..len],
        };
        bytes = bytes.get(align4(len)..).unwrap_or(&[]);
        Some(msg)
    })
}

/// The attributes (type without flag bits, payload) of a run of rtattrs.
pub fn attrs(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < field::RTA_HDR_LEN {
            return None;
        }
        let len = usize::from(read_u16(bytes, field::RTA_LEN));
        if len < field::RTA_HDR_LEN || len > bytes.len() {
            return None;
        }
        let item = (
            read_u16(bytes, field::RTA_TYPE) & NLA_TYPE_MASK,
            &bytes[field::RTA_HDR_LEN..len],
        );
        bytes = bytes.get(align4(len)..).unwrap_or(&[]);
        Some(item)
    })
}

/// The payload of the first attribute `ty` as a u32.
pub fn find_u32(bytes: &[u8], ty: u16) -> Option<u32> {
    attrs(bytes)
        .find(|(t, p)| *t == ty && p.len() >= 4)
        .map(|(_, p)| read_u32(p, 0..4))
}

/// The errno of an `NLMSG_ERROR` payload (0 for an acknowledgement), positive.
pub fn error_code(payload: &[u8]) -> Option<i32> {
    (payload.len() >= 4).then(|| -(read_u32(payload, field::NLMSGERR_ERROR) as i32))
}

/// The sequence number of the request an `NLMSG_ERROR` answers.
pub fn error_seq(payload: &[u8]) -> Option<u32> {
    (payload.len() >= field::NLMSGERR_REQ_SEQ.end)
        .then(|| read_u32(payload, field::NLMSGERR_REQ_SEQ))
}

fn ip_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn ip_from(family: Family, bytes: &[u8]) -> Option<IpAddr> {
    match family {
        Family::V4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| Ipv4Addr::from(b).into()),
        Family::V6 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| Ipv6Addr::from(b).into()),
    }
}

fn create_flags(verb: Verb) -> u16 {
    match verb {
        Verb::Add => NLM_F_CREATE | NLM_F_EXCL,
        Verb::Replace => NLM_F_CREATE | NLM_F_REPLACE,
        Verb::Del => 0,
    }
}

/// An `ifinfomsg` for `index` with `flags` changed by `change`.
fn ifinfo(index: u32, flags: u32, change: u32) -> [u8; field::IFINFO_LEN] {
    let mut b = [0u8; field::IFINFO_LEN];
    b[field::IFINFO_INDEX].copy_from_slice(&index.to_ne_bytes());
    b[field::IFINFO_FLAGS].copy_from_slice(&flags.to_ne_bytes());
    b[field::IFINFO_CHANGE].copy_from_slice(&change.to_ne_bytes());
    b
}

/// `RTM_GETLINK` for one interface by index (no ack: the answer is the link).
pub fn getlink_by_index(index: u32) -> Builder {
    Builder::new(RTM_GETLINK, 0).fixed(&ifinfo(index, 0, 0))
}

/// `RTM_GETLINK` for one interface by name.
pub fn getlink_by_name(name: &str) -> Builder {
    let mut z = name.as_bytes().to_vec();
    z.push(0);
    Builder::new(RTM_GETLINK, 0)
        .fixed(&ifinfo(0, 0, 0))
        .attr(IFLA_IFNAME, &z)
}

/// `RTM_NEWLINK` changing an existing link: up or down, and/or its MTU.
pub fn setlink(index: u32, up: Option<bool>, mtu: Option<u32>) -> Builder {
    let iff_up = libc::IFF_UP as u32;
    let (flags, change) = match up {
        Some(true) => (iff_up, iff_up),
        Some(false) => (0, iff_up),
        None => (0, 0),
    };
    let b = Builder::new(RTM_NEWLINK, NLM_F_ACK).fixed(&ifinfo(index, flags, change));
    match mtu {
        Some(m) => b.attr_u32(IFLA_MTU, m),
        None => b,
    }
}

/// `RTM_DELLINK` for `index`.
pub fn dellink(index: u32) -> Builder {
    Builder::new(RTM_DELLINK, NLM_F_ACK).fixed(&ifinfo(index, 0, 0))
}

/// Parses an `RTM_NEWLINK` payload.
pub fn parse_link(payload: &[u8]) -> Option<Link> {
    if payload.len() < field::IFINFO_LEN {
        return None;
    }
    let rest = &payload[field::IFINFO_LEN..];
    let name = attrs(rest).find(|(t, _)| *t == IFLA_IFNAME).map(|(_, p)| {
        let end = p.iter().position(|b| *b == 0).unwrap_or(p.len());
        String::from_utf8_lossy(&p[..end]).into_owned()
    });
    Some(Link {
        index: read_u32(payload, field::IFINFO_INDEX),
        name: name.unwrap_or_default(),
        flags: read_u32(payload, field::IFINFO_FLAGS),
        mtu: find_u32(rest, IFLA_MTU),
    })
}

/// `RTM_NEWADDR` (add/replace) or `RTM_DELADDR` for `spec`.
pub fn address(verb: Verb, spec: &AddressSpec) -> Builder {
    let family = Family::of(spec.addr);
    let flags = if spec.nodad { IFA_F_NODAD } else { 0 };
    let mut fixed = [0u8; field::IFADDR_LEN];
    fixed[0] = family.af();
    fixed[1] = spec.prefix_len;
    fixed[2] = flags as u8;
    fixed[3] = RT_SCOPE_UNIVERSE;
    fixed[field::IFADDR_INDEX].copy_from_slice(&spec.ifindex.to_ne_bytes());
    let ty = if verb == Verb::Del {
        RTM_DELADDR
    } else {
        RTM_NEWADDR
    };
    let ip = ip_bytes(&spec.addr);
    let b = Builder::new(ty, NLM_F_ACK | create_flags(verb))
        .fixed(&fixed)
        .attr(IFA_LOCAL, &ip)
        .attr(IFA_ADDRESS, &ip);
    if verb == Verb::Del {
        b
    } else if spec.deprecated {
        // struct ifa_cacheinfo: preferred 0, valid forever, two timestamps the
        // kernel ignores on input.
        let mut ci = [0u8; 16];
        ci[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        b.attr_u32(IFA_FLAGS, flags).attr(IFA_CACHEINFO, &ci)
    } else {
        b.attr_u32(IFA_FLAGS, flags)
    }
}

/// A dump of every address (of `family`, or both).
pub fn dump_addresses(family: Option<Family>) -> Builder {
    let mut fixed = [0u8; field::IFADDR_LEN];
    fixed[0] = family.map_or(0, Family::af);
    Builder::new(RTM_GETADDR, NLM_F_DUMP).fixed(&fixed)
}

/// Parses an `RTM_NEWADDR` payload.
pub fn parse_address(payload: &[u8]) -> Option<Address> {
    if payload.len() < field::IFADDR_LEN {
        return None;
    }
    let family = Family::from_af(payload[0])?;
    let rest = &payload[field::IFADDR_LEN..];
    let get = |ty| {
        attrs(rest)
            .find(|(t, _)| *t == ty)
            .and_then(|(_, p)| ip_from(family, p))
    };
    let (local, address) = (get(IFA_LOCAL), get(IFA_ADDRESS));
    let (local, peer) = match (local, address) {
        (Some(l), Some(a)) if l != a => (l, Some(a)),
        (Some(l), _) => (l, None),
        (None, Some(a)) => (a, None),
        (None, None) => return None,
    };
    Some(Address {
        ifindex: read_u32(payload, field::IFADDR_INDEX),
        family,
        prefix_len: payload[1],
        local,
        peer,
        scope: payload[3],
        flags: find_u32(rest, IFA_FLAGS).unwrap_or(u32::from(payload[2])),
    })
}

/// The `rtmsg`/`fib_rule_hdr` table byte: the table itself when it fits, else
/// `RT_TABLE_UNSPEC` and the table goes in an attribute.
fn table_byte(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(0)
}

/// `RTM_NEWROUTE` (add/replace) or `RTM_DELROUTE` for `route`, as `ip route` sends it.
pub fn route(verb: Verb, route: &Route) -> Builder {
    let (dst, dst_len) = match route.dst {
        Some((a, l)) => (Some(a), l),
        None => (None, 0),
    };
    let del = verb == Verb::Del;
    let kind = match route.kind {
        RouteKind::Unicast => RTN_UNICAST,
        RouteKind::Blackhole => RTN_BLACKHOLE,
        RouteKind::Unreachable => RTN_UNREACHABLE,
    };
    let mut fixed = [0u8; field::RTMSG_LEN];
    fixed[0] = route.family.af();
    fixed[1] = dst_len;
    fixed[4] = table_byte(route.table);
    fixed[5] = if del { 0 } else { RTPROT_BOOT };
    fixed[6] = match (del, route.kind) {
        (true, _) => RT_SCOPE_NOWHERE,
        (false, RouteKind::Unicast) => RT_SCOPE_LINK,
        (false, _) => RT_SCOPE_UNIVERSE,
    };
    fixed[7] = match (del, route.kind) {
        (true, RouteKind::Unicast) => RTN_UNSPEC,
        _ => kind,
    };
    let ty = if del { RTM_DELROUTE } else { RTM_NEWROUTE };
    let mut b = Builder::new(ty, NLM_F_ACK | create_flags(verb))
        .fixed(&fixed)
        .attr_u32(RTA_TABLE, route.table);
    if let Some(d) = dst {
        b = b.attr(RTA_DST, &ip_bytes(&d));
    }
    if let Some(oif) = route.oif {
        b = b.attr_u32(RTA_OIF, oif);
    }
    b
}

/// A dump of every route of `family`.
pub fn dump_routes(family: Family) -> Builder {
    let mut fixed = [0u8; field::RTMSG_LEN];
    fixed[0] = family.af();
    Builder::new(RTM_GETROUTE, NLM_F_DUMP).fixed(&fixed)
}

/// Parses an `RTM_NEWROUTE` payload (unicast, blackhole and unreachable routes;
/// others are skipped).
pub fn parse_route(payload: &[u8]) -> Option<Route> {
    if payload.len() < field::RTMSG_LEN {
        return None;
    }
    let family = Family::from_af(payload[0])?;
    let rest = &payload[field::RTMSG_LEN..];
    let kind = match payload[7] {
        RTN_UNICAST => RouteKind::Unicast,
        RTN_BLACKHOLE => RouteKind::Blackhole,
        RTN_UNREACHABLE => RouteKind::Unreachable,
        _ => return None,
    };
    let dst = attrs(rest)
        .find(|(t, _)| *t == RTA_DST)
        .and_then(|(_, p)| ip_from(family, p))
        .map(|a| (a, payload[1]));
    Some(Route {
        family,
        dst,
        oif: find_u32(rest, RTA_OIF),
        table: find_u32(rest, RTA_TABLE).unwrap_or(u32::from(payload[4])),
        kind,
    })
}

/// `RTM_NEWRULE` (add) or `RTM_DELRULE` for `rule`, as `ip rule` sends it.
pub fn rule(verb: Verb, rule: &Rule) -> Builder {
    let mut fixed = [0u8; field::RTMSG_LEN];
    fixed[0] = rule.family.af();
    fixed[4] = table_byte(rule.table);
    fixed[7] = FR_ACT_TO_TBL;
    let flags = if rule.invert { FIB_RULE_INVERT } else { 0 };
    fixed[field::RTMSG_FLAGS].copy_from_slice(&flags.to_ne_bytes());
    let ty = if verb == Verb::Del {
        RTM_DELRULE
    } else {
        RTM_NEWRULE
    };
    let mut b = Builder::new(ty, NLM_F_ACK | create_flags(verb)).fixed(&fixed);
    if let Some(p) = rule.priority {
        b = b.attr_u32(FRA_PRIORITY, p);
    }
    if let Some(m) = rule.fwmark {
        b = b.attr_u32(FRA_FWMARK, m);
    }
    b = b.attr_u32(FRA_TABLE, rule.table);
    if let Some(s) = rule.suppress_prefixlength {
        b = b.attr_u32(FRA_SUPPRESS_PREFIXLEN, s);
    }
    b
}

/// A dump of every rule of `family`.
pub fn dump_rules(family: Family) -> Builder {
    let mut fixed = [0u8; field::RTMSG_LEN];
    fixed[0] = family.af();
    Builder::new(RTM_GETRULE, NLM_F_DUMP).fixed(&fixed)
}

/// Parses an `RTM_NEWRULE` payload (rules that look a table up; others are skipped).
/// A suppress_prefixlength of `u32::MAX` is the kernel's "none".
pub fn parse_rule(payload: &[u8]) -> Option<Rule> {
    if payload.len() < field::RTMSG_LEN || payload[7] != FR_ACT_TO_TBL {
        return None;
    }
    let family = Family::from_af(payload[0])?;
    let rest = &payload[field::RTMSG_LEN..];
    Some(Rule {
        family,
        priority: find_u32(rest, FRA_PRIORITY),
        fwmark: find_u32(rest, FRA_FWMARK).filter(|m| *m != 0),
        invert: read_u32(payload, field::RTMSG_FLAGS) & FIB_RULE_INVERT != 0,
        table: find_u32(rest, FRA_TABLE).unwrap_or(u32::from(payload[4])),
        suppress_prefixlength: find_u32(rest, FRA_SUPPRESS_PREFIXLEN).filter(|l| *l != u32::MAX),
    })
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
