//! The typed objects the [`crate::Handle`] changes and lists.

use std::net::IpAddr;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 (`AF_INET`).
    V4,
    /// IPv6 (`AF_INET6`).
    V6,
}

impl Family {
    /// The family of `addr`.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The `AF_*` number.
    pub fn af(self) -> u8 {
        match self {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        }
    }

    /// The family of an `AF_*` number, if it is one of the two.
    pub fn from_af(af: u8) -> Option<Family> {
        match i32::from(af) {
            libc::AF_INET => Some(Family::V4),
            libc::AF_INET6 => Some(Family::V6),
            _ => None,
        }
    }
}

/// What a request does with its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// Create it; an identical one already there is `EEXIST`.
    Add,
    /// Create it or replace the one with the same key.
    Replace,
    /// Delete it; one that is not there is `ESRCH`/`ENOENT`.
    Del,
}

/// A link as listed by `RTM_GETLINK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its ifindex.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its `IFF_*` flags.
    pub flags: u32,
    /// Its MTU, when reported.
    pub mtu: Option<u32>,
}

/// An address to add or delete on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressSpec {
    /// The interface.
    pub ifindex: u32,
    /// The address.
    pub addr: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Skip duplicate address detection (IPv6 `nodad`).
    pub nodad: bool,
    /// Deprecated from the start (`preferred_lft 0`, valid forever): never chosen as
    /// the source of a connection that did not bind it (RFC 6724 rule 3), still
    /// usable by a socket bound to it.
    pub deprecated: bool,
}

/// An address as listed by `RTM_GETADDR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// The interface it is on.
    pub ifindex: u32,
    /// Its family.
    pub family: Family,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The local address (`IFA_LOCAL`, or `IFA_ADDRESS` where there is none).
    pub local: IpAddr,
    /// The peer address of a point-to-point address (`IFA_ADDRESS` when it differs
    /// from `IFA_LOCAL`).
    pub peer: Option<IpAddr>,
    /// Its scope (`RT_SCOPE_UNIVERSE` 0 is global, 253 link, 254 host).
    pub scope: u8,
    /// Its `IFA_F_*` flags (from `IFA_FLAGS` when present).
    pub flags: u32,
}

impl Address {
    /// A global address (scope universe), as `ip addr show scope global` lists.
    pub fn is_global(&self) -> bool {
        self.scope == libc::RT_SCOPE_UNIVERSE
    }

    /// A global address that is neither tentative nor deprecated.
    pub fn is_usable_global(&self) -> bool {
        self.is_global() && self.flags & (libc::IFA_F_TENTATIVE | libc::IFA_F_DEPRECATED) == 0
    }
}

/// The type of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// Forward through an interface.
    Unicast,
    /// Drop silently.
    Blackhole,
    /// Drop with ICMP unreachable.
    Unreachable,
}

/// A route: what `ip route add [TYPE] DST [dev DEV] [table T]` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    /// Its family.
    pub family: Family,
    /// The destination prefix; `None` is the default route.
    pub dst: Option<(IpAddr, u8)>,
    /// The output interface.
    pub oif: Option<u32>,
    /// The routing table (254 is main).
    pub table: u32,
    /// Its type.
    pub kind: RouteKind,
}

/// A routing policy rule: `ip rule add priority P [not] fwmark M table T
/// suppress_prefixlength L`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Its family.
    pub family: Family,
    /// Its priority (lower first).
    pub priority: Option<u32>,
    /// Match packets with this firewall mark.
    pub fwmark: Option<u32>,
    /// Invert the match (`not`).
    pub invert: bool,
    /// The table to look up.
    pub table: u32,
    /// Reject a table's routes with a prefix this long or shorter.
    pub suppress_prefixlength: Option<u32>,
}
