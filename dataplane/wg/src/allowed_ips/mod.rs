//! Cryptokey routing: the allowed-IPs table (WireGuard paper §2).
//!
//! Outbound, the destination address of a packet read from TUN is looked up
//! to pick the peer that encrypts it; inbound, the source address of a
//! decrypted packet is looked up and the packet is dropped unless the answer
//! is the peer it came from. Both are longest-prefix matches.
//!
//! Each address family keeps its prefixes in a path-compressed binary
//! [`trie`], the source of truth that configuration (insert, remove,
//! iteration) works on. Keys are `u128`s with the address left-aligned (IPv4
//! in the top 32 bits), so one implementation serves both families.
//!
//! IPv4 lookups read a [`fib`] instead: a poptrie built from the trie, at
//! most five dependent memory loads whatever the table size, where the
//! binary trie needs about one per level (some 18 at 100,000 prefixes, each a
//! likely cache miss). Any change to the IPv4 prefixes drops that table; it
//! is rebuilt, from scratch, by the first IPv4 lookup after the change or by
//! [`AllowedIps::prepare_lookup`], whichever comes first. A configuration
//! that changes 100,000 prefixes therefore pays for one rebuild (tens of
//! milliseconds) when it is done, not one per prefix; a driver that calls
//! `prepare_lookup` after applying a configuration keeps that rebuild (and
//! its allocations) off the packet path entirely. Lookups without a pending
//! rebuild never allocate.
//!
//! IPv6 lookups walk the binary trie: typical IPv6 allowed-IPs are long
//! (/64, /128) and sparse, where a multibit trie needs more levels and memory
//! than the path-compressed one.

mod fib;
#[cfg(test)]
mod tests;
mod trie;

use fib::{Entry, Fib};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;
use trie::Trie;

/// Why a prefix cannot be inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AllowedIpsError {
    /// The prefix length exceeds the address width (32 for IPv4, 128 for IPv6).
    #[error("prefix {addr}/{cidr} is invalid: the prefix length can be at most {max}")]
    PrefixTooLong {
        /// The address given.
        addr: IpAddr,
        /// The prefix length given.
        cidr: u8,
        /// The largest prefix length of that family.
        max: u8,
    },
}

/// A table mapping IP prefixes to values (peers), with longest-prefix lookup.
#[derive(Debug, Clone)]
pub struct AllowedIps<T> {
    v4: Trie<T>,
    v6: Trie<T>,
    /// The lookup table of `v4`; empty after a change until the next lookup
    /// or [`AllowedIps::prepare_lookup`] builds it.
    v4_fib: OnceLock<Fib<T>>,
    /// The last address [`AllowedIps::lookup_cached`] answered, and its answer;
    /// dropped by every change. The segments of one TUN super-packet, and a GRO
    /// run of received packets, all share one address.
    last: Option<(IpAddr, Option<T>)>,
}

impl<T: Copy + Eq> AllowedIps<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            v4: Trie::new(32),
            v6: Trie::new(128),
            v4_fib: OnceLock::new(),
            last: None,
        }
    }

    /// Maps `addr/cidr` (host bits are ignored) to `value`; returns the value
    /// the identical prefix had before, if any.
    pub fn insert(
        &mut self,
        addr: IpAddr,
        cidr: u8,
        value: T,
    ) -> Result<Option<T>, AllowedIpsError> {
        let (trie, key) = self.trie_mut(addr);
        if cidr > trie.bits {
            let max = trie.bits;
            return Err(AllowedIpsError::PrefixTooLong { addr, cidr, max });
        }
        let old = trie.insert(key & mask(cidr), cidr, value);
        if old != Some(value) {
            self.changed(addr);
        }
        Ok(old)
    }

    /// Removes the prefix `addr/cidr` (host bits are ignored) and returns its value.
    pub fn remove(&mut self, addr: IpAddr, cidr: u8) -> Option<T> {
        let (trie, key) = self.trie_mut(addr);
        if cidr > trie.bits {
            return None;
        }
        let old = trie.remove(key & mask(cidr), cidr)?;
        self.changed(addr);
        Some(old)
    }

    /// Removes every prefix mapped to `value`; returns how many there were.
    pub fn remove_value(&mut self, value: T) -> usize {
        self.last = None;
        let v4 = self.v4.remove_value(value);
        if v4 > 0 {
            self.v4_fib.take();
        }
        v4 + self.v6.remove_value(value)
    }

    /// The value of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<T> {
        match addr {
            IpAddr::V4(a) => self.lookup_v4(a.octets()),
            IpAddr::V6(a) => self.lookup_v6(a.octets()),
        }
    }

    /// [`AllowedIps::lookup`], answered from a one-entry cache when `addr` is the
    /// address asked last (and nothing changed since).
    pub fn lookup_cached(&mut self, addr: IpAddr) -> Option<T> {
        match self.last {
            Some((last, value)) if last == addr => value,
            _ => {
                let value = self.lookup(addr);
                self.last = Some((addr, value));
                value
            }
        }
    }

    /// [`AllowedIps::lookup`] for an IPv4 address in network byte order.
    ///
    /// The first call after a change rebuilds the lookup table (see the
    /// module documentation) unless [`AllowedIps::prepare_lookup`] did.
    pub fn lookup_v4(&self, addr: [u8; 4]) -> Option<T> {
        self.fib_v4().lookup(v4_key(addr))
    }

    /// [`AllowedIps::lookup`] for an IPv6 address in network byte order.
    pub fn lookup_v6(&self, addr: [u8; 16]) -> Option<T> {
        self.v6.lookup(u128::from_be_bytes(addr))
    }

    /// Builds the lookup tables that changes since the last lookup dropped,
    /// so that the next lookups neither rebuild nor allocate. Call it after
    /// applying a batch of changes; lookups do it themselves otherwise.
    pub fn prepare_lookup(&self) {
        self.fib_v4();
    }

    /// Every entry: IPv4 first, then IPv6, each in ascending (address, prefix length).
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, u8, T)> + '_ {
        let v4 = self
            .v4
            .iter()
            .map(|(k, c, v)| (IpAddr::V4(v4_addr(k)), c, v));
        let v6 = self
            .v6
            .iter()
            .map(|(k, c, v)| (IpAddr::V6(Ipv6Addr::from_bits(k)), c, v));
        v4.chain(v6)
    }

    /// The prefixes mapped to `value`, in the order of [`AllowedIps::iter`].
    pub fn entries_for(&self, value: T) -> Vec<(IpAddr, u8)> {
        self.iter()
            .filter(|e| e.2 == value)
            .map(|(a, c, _)| (a, c))
            .collect()
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.v4.len + self.v6.len
    }

    /// Whether the table holds no prefix.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every prefix.
    pub fn clear(&mut self) {
        self.last = None;
        self.v4.clear();
        self.v6.clear();
        self.v4_fib.take();
    }

    fn trie_mut(&mut self, addr: IpAddr) -> (&mut Trie<T>, u128) {
        match addr {
            IpAddr::V4(a) => (&mut self.v4, v4_key(a.octets())),
            IpAddr::V6(a) => (&mut self.v6, a.to_bits()),
        }
    }

    /// Drops the lookup table of `addr`'s family after its prefixes changed.
    fn changed(&mut self, addr: IpAddr) {
        self.last = None;
        if addr.is_ipv4() {
            self.v4_fib.take();
        }
    }

    /// The IPv4 lookup table, built now if a change dropped it.
    fn fib_v4(&self) -> &Fib<T> {
        self.v4_fib.get_or_init(|| {
            let entries: Vec<Entry<T>> = self.v4.iter().collect();
            Fib::build(&entries, self.v4.bits)
        })
    }
}

impl<T: Copy + Eq> Default for AllowedIps<T> {
    fn default() -> Self {
        Self::new()
    }
}

fn v4_key(addr: [u8; 4]) -> u128 {
    u128::from(u32::from_be_bytes(addr)) << 96
}

fn v4_addr(key: u128) -> Ipv4Addr {
    Ipv4Addr::from_bits((key >> 96) as u32)
}

/// The left-aligned mask of a `cidr`-bit prefix.
fn mask(cidr: u8) -> u128 {
    match cidr {
        0 => 0,
        c => u128::MAX << (128 - u32::from(c.min(128))),
    }
}
