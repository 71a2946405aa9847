//! Encoding and decoding of the table entries: endpoints and peers, validating every
//! field read back from shared memory.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::layout::{AllowedEntry, PeerEntry, MAX_ALLOWED};
use crate::{PeerConfig, ShmError};

pub(crate) fn encode_endpoint(e: Option<SocketAddr>) -> (u8, u16, [u8; 16]) {
    match e {
        None => (0, 0, [0; 16]),
        Some(SocketAddr::V4(a)) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&a.ip().octets());
            (4, a.port(), b)
        }
        Some(SocketAddr::V6(a)) => (6, a.port(), a.ip().octets()),
    }
}

pub(crate) fn decode_endpoint(
    family: u8,
    port: u16,
    addr: [u8; 16],
) -> Result<Option<SocketAddr>, ShmError> {
    match family {
        0 => Ok(None),
        4 => Ok(Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
            port,
        ))),
        6 => Ok(Some(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::from(addr)),
            port,
        ))),
        f => Err(ShmError::Corrupt(format!("endpoint family {f}"))),
    }
}

pub(crate) fn encode_peer(p: &PeerConfig) -> Result<PeerEntry, ShmError> {
    if p.allowed.len() > MAX_ALLOWED {
        return Err(ShmError::TooManyAllowed(p.allowed.len()));
    }
    let (family, port, addr) = encode_endpoint(p.endpoint);
    let mut allowed = [AllowedEntry {
        addr: [0; 16],
        family: 0,
        cidr: 0,
        _pad: [0; 2],
    }; MAX_ALLOWED];
    for (slot, (ip, cidr)) in allowed.iter_mut().zip(&p.allowed) {
        *slot = match ip {
            IpAddr::V4(a) => {
                let mut b = [0; 16];
                b[..4].copy_from_slice(&a.octets());
                AllowedEntry {
                    addr: b,
                    family: 4,
                    cidr: (*cidr).min(32),
                    _pad: [0; 2],
                }
            }
            IpAddr::V6(a) => AllowedEntry {
                addr: a.octets(),
                family: 6,
                cidr: (*cidr).min(128),
                _pad: [0; 2],
            },
        };
    }
    Ok(PeerEntry {
        public_key: p.public_key,
        preshared_key: p.preshared_key.unwrap_or([0; 32]),
        endpoint_family: family,
        has_preshared_key: u8::from(p.preshared_key.is_some()),
        endpoint_port: port,
        endpoint_addr: addr,
        keepalive: p.keepalive,
        allowed_count: p.allowed.len() as u16,
        flags: 0,
        allowed,
    })
}

pub(crate) fn decode_peer(e: &PeerEntry) -> Result<PeerConfig, ShmError> {
    let n = usize::from(e.allowed_count);
    if n > MAX_ALLOWED {
        return Err(ShmError::Corrupt(format!("{n} AllowedIPs in one entry")));
    }
    let mut allowed = Vec::with_capacity(n);
    for a in &e.allowed[..n] {
        let ip = match (a.family, a.cidr) {
            (4, c) if c <= 32 => {
                IpAddr::V4(Ipv4Addr::new(a.addr[0], a.addr[1], a.addr[2], a.addr[3]))
            }
            (6, c) if c <= 128 => IpAddr::V6(Ipv6Addr::from(a.addr)),
            (f, c) => return Err(ShmError::Corrupt(format!("AllowedIP family {f} /{c}"))),
        };
        allowed.push((ip, a.cidr));
    }
    Ok(PeerConfig {
        public_key: e.public_key,
        preshared_key: match e.has_preshared_key {
            0 => None,
            1 => Some(e.preshared_key),
            x => return Err(ShmError::Corrupt(format!("preshared-key flag {x}"))),
        },
        endpoint: decode_endpoint(e.endpoint_family, e.endpoint_port, e.endpoint_addr)?,
        keepalive: e.keepalive,
        allowed,
    })
}
