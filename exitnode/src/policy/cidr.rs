//! An IP prefix (`10.0.0.0/8`, `fd00::/8`): what the provider's firewall blocks and
//! what `--allow-dest` opens.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 or IPv6 prefix whose host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// Why a prefix is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not `ADDRESS` or `ADDRESS/LENGTH`.
    #[error("{0:?} is not an IP prefix: expected ADDRESS or ADDRESS/LENGTH, like 10.0.0.0/8")]
    Syntax(String),
    /// The length is beyond the family's (32 or 128).
    #[error("{0:?}: the prefix length is at most 32 for IPv4 and 128 for IPv6")]
    Length(String),
    /// Bits below the prefix length are set (`10.1.2.3/8`).
    #[error("{given:?} has host bits set: did you mean {net}?")]
    HostBits {
        /// What was given.
        given: String,
        /// The prefix it lies in.
        net: Cidr,
    },
}

impl Cidr {
    /// The prefix of length `len` that `addr` lies in (host bits cleared); `len` is
    /// capped at the family's width.
    pub fn containing(addr: IpAddr, len: u8) -> Cidr {
        let len = len.min(width(addr));
        Cidr {
            addr: mask(addr, len),
            len,
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether this is IPv4.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `other` lies wholly inside this prefix.
    pub fn contains(&self, other: &Cidr) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && other.len >= self.len
            && mask(other.addr, self.len) == self.addr
    }
}

fn width(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| CidrError::Syntax(s.to_owned()))?;
        let len = match l {
            None => width(addr),
            Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => l
                .parse::<u8>()
                .map_err(|_| CidrError::Length(s.to_owned()))?,
            Some(_) => return Err(CidrError::Syntax(s.to_owned())),
        };
        if len > width(addr) {
            return Err(CidrError::Length(s.to_owned()));
        }
        let net = Cidr::containing(addr, len);
        if net.addr != addr {
            return Err(CidrError::HostBits {
                given: s.to_owned(),
                net,
            });
        }
        Ok(net)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// `prefixes` without those that lie inside another one (nftables refuses overlapping
/// elements in an interval set), in their first order.
pub(crate) fn outermost(prefixes: &[Cidr]) -> Vec<Cidr> {
    let mut out: Vec<Cidr> = Vec::new();
    for (i, p) in prefixes.iter().enumerate() {
        let covered = prefixes
            .iter()
            .enumerate()
            .any(|(j, q)| j != i && q.contains(p) && (q != p || j < i));
        if !covered {
            out.push(*p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(c("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(c("169.254.169.254").to_string(), "169.254.169.254/32");
        assert_eq!(c("fd00:ec2::254").to_string(), "fd00:ec2::254/128");
        assert_eq!(c("0.0.0.0/0").prefix_len(), 0);
        assert_eq!(c("::/0").to_string(), "::/0");
    }

    #[test]
    fn refuses_bad_prefixes_with_what_is_wrong() {
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Length(_))
        ));
        assert!(matches!(
            "::/129".parse::<Cidr>(),
            Err(CidrError::Length(_))
        ));
        for bad in [
            "",
            "10.0.0.0/",
            "10/8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "x",
            "10.0.0.0/1000",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
        let e = "10.1.2.3/8".parse::<Cidr>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"10.1.2.3/8\" has host bits set: did you mean 10.0.0.0/8?"
        );
    }

    #[test]
    fn containment_and_outermost() {
        assert!(c("10.0.0.0/8").contains(&c("10.77.42.0/24")));
        assert!(!c("10.77.42.0/24").contains(&c("10.0.0.0/8")));
        assert!(!c("0.0.0.0/0").contains(&c("::/128")));
        let list = [
            c("10.0.0.0/8"),
            c("10.77.42.0/24"),
            c("203.0.113.0/24"),
            c("10.0.0.0/8"),
        ];
        assert_eq!(outermost(&list), [c("10.0.0.0/8"), c("203.0.113.0/24")]);
    }

    #[test]
    fn containing_clears_host_bits() {
        let p = Cidr::containing("2001:db8::1234".parse().unwrap(), 64);
        assert_eq!(p.to_string(), "2001:db8::/64");
        let p = Cidr::containing("203.0.113.7".parse().unwrap(), 24);
        assert_eq!(p.to_string(), "203.0.113.0/24");
    }
}
