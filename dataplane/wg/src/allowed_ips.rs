//! Cryptokey routing: the allowed-IPs table (WireGuard paper §2).
//!
//! Outbound, the destination address of a packet read from TUN is looked up
//! to pick the peer that encrypts it; inbound, the source address of a
//! decrypted packet is looked up and the packet is dropped unless the answer
//! is the peer it came from. Both are longest-prefix matches.
//!
//! Each address family is a path-compressed binary trie (like the kernel's
//! `allowedips.c`) whose nodes live in a `Vec` arena and refer to each other
//! by index: a lookup visits at most one node per address bit, whatever the
//! table size, and nothing recurses. Keys are `u128`s with the address
//! left-aligned (IPv4 in the top 32 bits), so one implementation serves both.
//! Invariant: a node without a value always has two children, so removal
//! prunes the intermediate nodes it leaves behind.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
}

impl<T: Copy + Eq> AllowedIps<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            v4: Trie::new(32),
            v6: Trie::new(128),
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
        Ok(trie.insert(key & mask(cidr), cidr, value))
    }

    /// Removes the prefix `addr/cidr` (host bits are ignored) and returns its value.
    pub fn remove(&mut self, addr: IpAddr, cidr: u8) -> Option<T> {
        let (trie, key) = self.trie_mut(addr);
        if cidr > trie.bits {
            return None;
        }
        trie.remove(key & mask(cidr), cidr)
    }

    /// Removes every prefix mapped to `value`; returns how many there were.
    pub fn remove_value(&mut self, value: T) -> usize {
        self.v4.remove_value(value) + self.v6.remove_value(value)
    }

    /// The value of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<T> {
        match addr {
            IpAddr::V4(a) => self.lookup_v4(a.octets()),
            IpAddr::V6(a) => self.lookup_v6(a.octets()),
        }
    }

    /// [`AllowedIps::lookup`] for an IPv4 address in network byte order.
    pub fn lookup_v4(&self, addr: [u8; 4]) -> Option<T> {
        self.v4.lookup(v4_key(addr))
    }

    /// [`AllowedIps::lookup`] for an IPv6 address in network byte order.
    pub fn lookup_v6(&self, addr: [u8; 16]) -> Option<T> {
        self.v6.lookup(u128::from_be_bytes(addr))
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
        self.v4.clear();
        self.v6.clear();
    }

    fn trie_mut(&mut self, addr: IpAddr) -> (&mut Trie<T>, u128) {
        match addr {
            IpAddr::V4(a) => (&mut self.v4, v4_key(a.octets())),
            IpAddr::V6(a) => (&mut self.v6, a.to_bits()),
        }
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

/// Bit `pos` of `key`, counting from the most significant bit (`pos < 128`).
fn bit_at(key: u128, pos: u8) -> usize {
    ((key >> (127 - u32::from(pos))) & 1) as usize
}

/// "No node".
const NIL: usize = usize::MAX;

#[derive(Debug, Clone)]
struct Node<T> {
    /// The prefix, left-aligned, bits past `cidr` zero.
    key: u128,
    cidr: u8,
    /// `None` for an intermediate node, which then has two children.
    value: Option<T>,
    parent: usize,
    /// Children by the bit at position `cidr` of their keys.
    child: [usize; 2],
}

impl<T> Node<T> {
    fn contains(&self, key: u128) -> bool {
        (self.key ^ key) & mask(self.cidr) == 0
    }
}

/// A path-compressed binary trie of one address family.
#[derive(Debug, Clone)]
struct Trie<T> {
    bits: u8,
    root: usize,
    nodes: Vec<Node<T>>,
    free: Vec<usize>,
    /// Number of nodes that hold a value.
    len: usize,
}

impl<T: Copy + Eq> Trie<T> {
    fn new(bits: u8) -> Self {
        Self {
            bits,
            root: NIL,
            nodes: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    fn clear(&mut self) {
        *self = Self::new(self.bits);
    }

    fn lookup(&self, key: u128) -> Option<T> {
        let mut best = None;
        let mut at = self.root;
        while let Some(node) = self.nodes.get(at) {
            if !node.contains(key) {
                break;
            }
            best = node.value.or(best);
            if node.cidr >= self.bits {
                break;
            }
            at = node.child[bit_at(key, node.cidr)];
        }
        best
    }

    /// The deepest node whose prefix contains `key/cidr` and is not longer
    /// (or `NIL`), and whether that node is exactly `key/cidr`.
    fn placement(&self, key: u128, cidr: u8) -> (usize, bool) {
        let mut parent = NIL;
        let mut at = self.root;
        while let Some(node) = self.nodes.get(at) {
            if node.cidr > cidr || !node.contains(key) {
                break;
            }
            parent = at;
            if node.cidr == cidr {
                return (at, true);
            }
            at = node.child[bit_at(key, node.cidr)];
        }
        (parent, false)
    }

    /// `key` must already be masked to `cidr <= bits`.
    fn insert(&mut self, key: u128, cidr: u8, value: T) -> Option<T> {
        let (parent, exact) = self.placement(key, cidr);
        if exact {
            let old = self.nodes[parent].value.replace(value);
            self.len += usize::from(old.is_none());
            return old;
        }
        self.len += 1;
        let new = self.alloc(key, cidr, Some(value));
        let down = match self.nodes.get(parent) {
            Some(p) => p.child[bit_at(key, p.cidr)],
            None => self.root,
        };
        let Some(down_key) = self.nodes.get(down).map(|d| d.key) else {
            self.attach(parent, new);
            return None;
        };
        // `down` lies below the new prefix, or the two split at bit `common`.
        let common = ((down_key ^ key).leading_zeros().min(u32::from(cidr))) as u8;
        if common == cidr {
            self.attach(new, down);
            self.attach(parent, new);
        } else {
            let split = self.alloc(key & mask(common), common, None);
            self.attach(split, down);
            self.attach(split, new);
            self.attach(parent, split);
        }
        None
    }

    fn remove(&mut self, key: u128, cidr: u8) -> Option<T> {
        let (at, exact) = self.placement(key, cidr);
        if !exact {
            return None;
        }
        let old = self.nodes[at].value.take()?;
        self.len -= 1;
        self.prune(at);
        Some(old)
    }

    fn remove_value(&mut self, value: T) -> usize {
        let doomed: Vec<(u128, u8)> = self
            .iter()
            .filter(|e| e.2 == value)
            .map(|(k, c, _)| (k, c))
            .collect();
        for &(key, cidr) in &doomed {
            self.remove(key, cidr);
        }
        doomed.len()
    }

    /// Splices out valueless nodes with fewer than two children, starting at
    /// `at` and going up (at most two levels can become redundant).
    fn prune(&mut self, mut at: usize) {
        while let Some(node) = self.nodes.get(at) {
            let [a, b] = node.child;
            if node.value.is_some() || (a != NIL && b != NIL) {
                return;
            }
            let parent = node.parent;
            self.replace_child(parent, at, if a != NIL { a } else { b });
            self.release(at);
            at = parent;
        }
        if self.root == NIL {
            self.clear();
        }
    }

    /// Makes `child` a child of `parent` (the root if `parent` is `NIL`), on
    /// the side given by `child`'s key.
    fn attach(&mut self, parent: usize, child: usize) {
        self.nodes[child].parent = parent;
        let key = self.nodes[child].key;
        match self.nodes.get_mut(parent) {
            Some(p) => p.child[bit_at(key, p.cidr)] = child,
            None => self.root = child,
        }
    }

    /// Puts `new` (possibly `NIL`) where `old` hung under `parent`.
    fn replace_child(&mut self, parent: usize, old: usize, new: usize) {
        if let Some(n) = self.nodes.get_mut(new) {
            n.parent = parent;
        }
        match self.nodes.get_mut(parent) {
            Some(p) => {
                let side = usize::from(p.child[1] == old);
                p.child[side] = new;
            }
            None => self.root = new,
        }
    }

    fn alloc(&mut self, key: u128, cidr: u8, value: Option<T>) -> usize {
        let node = Node {
            key,
            cidr,
            value,
            parent: NIL,
            child: [NIL; 2],
        };
        match self.free.pop() {
            Some(at) => {
                self.nodes[at] = node;
                at
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        }
    }

    fn release(&mut self, at: usize) {
        let node = &mut self.nodes[at];
        node.value = None;
        node.parent = NIL;
        node.child = [NIL; 2];
        self.free.push(at);
    }

    /// Pre-order walk, child 0 before child 1: ascending (key, cidr).
    fn iter(&self) -> TrieIter<'_, T> {
        TrieIter {
            trie: self,
            stack: if self.root == NIL {
                vec![]
            } else {
                vec![self.root]
            },
        }
    }
}

struct TrieIter<'a, T> {
    trie: &'a Trie<T>,
    stack: Vec<usize>,
}

impl<T: Copy> Iterator for TrieIter<'_, T> {
    type Item = (u128, u8, T);

    fn next(&mut self) -> Option<Self::Item> {
        while let Some(at) = self.stack.pop() {
            let node = &self.trie.nodes[at];
            self.stack
                .extend(node.child.iter().rev().filter(|&&c| c != NIL));
            if let Some(value) = node.value {
                return Some((node.key, node.cidr, value));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn table(entries: &[(&str, u8, u32)]) -> AllowedIps<u32> {
        let mut t = AllowedIps::new();
        for &(a, c, v) in entries {
            t.insert(ip(a), c, v).unwrap();
        }
        t
    }

    #[test]
    fn longest_prefix_wins_across_nesting() {
        let t = table(&[
            ("0.0.0.0", 0, 1),
            ("10.0.0.0", 8, 2),
            ("10.1.0.0", 16, 3),
            ("10.1.2.3", 32, 4),
        ]);
        assert_eq!(t.lookup(ip("192.168.1.1")), Some(1));
        assert_eq!(t.lookup(ip("10.200.0.1")), Some(2));
        assert_eq!(t.lookup(ip("10.1.255.255")), Some(3));
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(4));
        assert_eq!(t.lookup(ip("10.1.2.4")), Some(3));
        assert_eq!(t.lookup_v4([10, 0, 0, 0]), Some(2));
        assert_eq!(t.lookup(ip("::1")), None, "families are separate");
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn insertion_order_does_not_matter() {
        let t = table(&[
            ("10.1.2.3", 32, 4),
            ("10.1.0.0", 16, 3),
            ("0.0.0.0", 0, 1),
            ("10.0.0.0", 8, 2),
        ]);
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(4));
        assert_eq!(t.lookup(ip("10.1.9.9")), Some(3));
        assert_eq!(t.lookup(ip("10.9.9.9")), Some(2));
        assert_eq!(t.lookup(ip("11.0.0.0")), Some(1));
    }

    #[test]
    fn host_bits_are_masked() {
        let mut t = table(&[("10.1.2.3", 8, 7)]);
        assert_eq!(t.lookup(ip("10.200.0.0")), Some(7));
        let entries: Vec<_> = t.iter().collect();
        assert_eq!(entries, vec![(ip("10.0.0.0"), 8, 7)]);
        assert_eq!(t.insert(ip("10.9.9.9"), 8, 8), Ok(Some(7)));
        assert_eq!(t.remove(ip("10.255.0.1"), 8), Some(8));
        assert!(t.is_empty());
    }

    #[test]
    fn replace_returns_old_value() {
        let mut t = AllowedIps::new();
        assert_eq!(t.insert(ip("192.0.2.0"), 24, 1), Ok(None));
        assert_eq!(t.insert(ip("192.0.2.0"), 24, 2), Ok(Some(1)));
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(ip("192.0.2.77")), Some(2));
    }

    #[test]
    fn prefix_too_long_is_an_error() {
        let mut t = AllowedIps::<u32>::new();
        let err = t.insert(ip("10.0.0.1"), 33, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "prefix 10.0.0.1/33 is invalid: the prefix length can be at most 32"
        );
        assert!(t.insert(ip("::"), 129, 1).is_err());
        assert!(t.insert(ip("::1"), 128, 1).is_ok());
        assert_eq!(t.remove(ip("10.0.0.1"), 40), None);
    }

    #[test]
    fn remove_prunes_and_keeps_the_rest() {
        let mut t = table(&[
            ("10.0.0.0", 8, 1),
            ("10.1.0.0", 16, 2),
            ("10.2.0.0", 16, 3),
            ("10.1.1.0", 24, 4),
        ]);
        assert_eq!(t.remove(ip("10.1.0.0"), 16), Some(2));
        assert_eq!(t.remove(ip("10.1.0.0"), 16), None);
        assert_eq!(t.remove(ip("10.1.0.0"), 17), None);
        assert_eq!(t.lookup(ip("10.1.1.1")), Some(4));
        assert_eq!(t.lookup(ip("10.1.2.1")), Some(1));
        assert_eq!(t.remove(ip("10.0.0.0"), 8), Some(1));
        assert_eq!(t.lookup(ip("10.1.2.1")), None);
        assert_eq!(t.lookup(ip("10.2.2.1")), Some(3));
        t.remove(ip("10.2.0.0"), 16);
        t.remove(ip("10.1.1.0"), 24);
        assert!(t.is_empty());
        assert!(t.v4.nodes.is_empty(), "an empty trie releases its arena");
    }

    #[test]
    fn remove_value_and_entries_for() {
        let mut t = table(&[
            ("10.0.0.0", 8, 1),
            ("10.1.0.0", 16, 2),
            ("192.168.0.0", 16, 1),
            ("2001:db8::", 32, 1),
            ("2001:db8:1::", 48, 2),
        ]);
        assert_eq!(
            t.entries_for(1),
            vec![
                (ip("10.0.0.0"), 8),
                (ip("192.168.0.0"), 16),
                (ip("2001:db8::"), 32)
            ]
        );
        assert_eq!(t.remove_value(1), 3);
        assert_eq!(t.remove_value(1), 0);
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(ip("10.1.0.1")), Some(2));
        assert_eq!(t.lookup(ip("10.2.0.1")), None);
        assert_eq!(t.lookup(ip("2001:db8:1::5")), Some(2));
        assert_eq!(t.lookup(ip("2001:db8:2::5")), None);
    }

    #[test]
    fn ipv6_longest_prefix() {
        let t = table(&[
            ("::", 0, 1),
            ("2001:db8::", 32, 2),
            ("2001:db8:abcd::", 48, 3),
            ("2001:db8:abcd::1", 128, 4),
            ("fe80::", 10, 5),
        ]);
        assert_eq!(t.lookup(ip("2001:db8:abcd::1")), Some(4));
        assert_eq!(t.lookup(ip("2001:db8:abcd::2")), Some(3));
        assert_eq!(t.lookup(ip("2001:db8:1::2")), Some(2));
        assert_eq!(t.lookup(ip("febf::1")), Some(5));
        assert_eq!(t.lookup(ip("fec0::1")), Some(1));
        assert_eq!(t.lookup(ip("10.0.0.1")), None);
        let mut octets = [0u8; 16];
        octets[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(t.lookup_v6(octets), Some(2));
    }

    /// wg(8): a peer's `allowed-ips` take a range away from another peer when
    /// more specific; the less specific peer keeps the rest.
    #[test]
    fn more_specific_entry_on_another_peer_takes_the_range() {
        let (a, b) = (1u32, 2u32);
        let mut t = table(&[("10.0.0.0", 8, a)]);
        t.insert(ip("10.5.0.0"), 16, b).unwrap();
        assert_eq!(t.lookup(ip("10.5.1.1")), Some(b));
        assert_eq!(t.lookup(ip("10.6.1.1")), Some(a));
        // Re-assigning the identical prefix moves it to the new peer.
        assert_eq!(t.insert(ip("10.0.0.0"), 8, b), Ok(Some(a)));
        assert_eq!(t.entries_for(a), vec![]);
        assert_eq!(t.remove_value(b), 2);
        assert!(t.is_empty());
    }

    #[test]
    fn iter_order_is_v4_then_v6_ascending() {
        let t = table(&[
            ("2001:db8::", 32, 9),
            ("11.0.0.0", 8, 5),
            ("10.1.0.0", 16, 3),
            ("10.0.0.0", 16, 4),
            ("10.0.0.0", 8, 2),
            ("0.0.0.0", 0, 1),
            ("::", 0, 8),
        ]);
        let got: Vec<_> = t.iter().map(|(a, c, _)| format!("{a}/{c}")).collect();
        assert_eq!(
            got,
            [
                "0.0.0.0/0",
                "10.0.0.0/8",
                "10.0.0.0/16",
                "10.1.0.0/16",
                "11.0.0.0/8",
                "::/0",
                "2001:db8::/32"
            ]
        );
    }

    #[test]
    fn clear_empties_both_families() {
        let mut t = table(&[("10.0.0.0", 8, 1), ("::", 0, 2)]);
        t.clear();
        assert!(t.is_empty());
        assert_eq!(t.lookup(ip("10.0.0.1")), None);
        assert_eq!(t.iter().count(), 0);
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The obviously correct table: a list scanned in full.
    #[derive(Default)]
    struct Reference(Vec<(bool, u128, u8, u32)>);

    impl Reference {
        fn insert(&mut self, v6: bool, key: u128, cidr: u8, value: u32) -> Option<u32> {
            let key = key & mask(cidr);
            for e in &mut self.0 {
                if (e.0, e.1, e.2) == (v6, key, cidr) {
                    return Some(std::mem::replace(&mut e.3, value));
                }
            }
            self.0.push((v6, key, cidr, value));
            None
        }

        fn remove(&mut self, v6: bool, key: u128, cidr: u8) -> Option<u32> {
            let key = key & mask(cidr);
            let i = self
                .0
                .iter()
                .position(|e| (e.0, e.1, e.2) == (v6, key, cidr))?;
            Some(self.0.swap_remove(i).3)
        }

        fn lookup(&self, v6: bool, key: u128) -> Option<u32> {
            self.0
                .iter()
                .filter(|e| e.0 == v6 && (e.1 ^ key) & mask(e.2) == 0)
                .max_by_key(|e| e.2)
                .map(|e| e.3)
        }

        fn sorted(&self) -> Vec<(bool, u128, u8, u32)> {
            let mut v = self.0.clone();
            v.sort();
            v
        }
    }

    /// Structural invariants: children are strictly longer prefixes inside
    /// their parent on the side of their bit, parent links agree, valueless
    /// nodes have two children. Together they bound a lookup to bits + 1 nodes.
    fn check_invariants(trie: &Trie<u32>) {
        let mut stack = vec![(trie.root, NIL)];
        let mut reachable = 0;
        while let Some((at, parent)) = stack.pop() {
            let Some(node) = trie.nodes.get(at) else {
                continue;
            };
            reachable += 1;
            assert_eq!(node.parent, parent);
            assert!(node.cidr <= trie.bits);
            assert_eq!(node.key & !mask(node.cidr), 0, "host bits set");
            if let Some(p) = trie.nodes.get(parent) {
                assert!(node.cidr > p.cidr);
                assert!(p.contains(node.key));
                assert_eq!(p.child[bit_at(node.key, p.cidr)], at);
            }
            if node.value.is_none() {
                assert!(
                    node.child.iter().all(|&c| c != NIL),
                    "dangling intermediate"
                );
            }
            stack.extend(node.child.iter().map(|&c| (c, at)));
        }
        assert_eq!(
            reachable,
            trie.nodes.len() - trie.free.len(),
            "leaked nodes"
        );
    }

    fn to_addr(v6: bool, key: u128) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::from_bits(key))
        } else {
            IpAddr::V4(v4_addr(key))
        }
    }

    /// Keys drawn from a few clustered bases so that prefixes nest and split.
    fn random_key(rng: &mut XorShift, v6: bool) -> u128 {
        let base = [0x0a00_0000u128, 0xc0a8_0000, 0x2001_0db8 << 16][rng.below(3) as usize];
        let noise = u128::from(rng.next()) >> rng.below(64);
        let key = (base << 96) ^ (noise << 64);
        if v6 {
            key | u128::from(rng.next() >> rng.below(64))
        } else {
            key & (u128::from(u32::MAX) << 96)
        }
    }

    #[test]
    fn randomized_against_reference() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut t = AllowedIps::new();
        let mut r = Reference::default();
        for step in 0..20_000 {
            let v6 = rng.below(2) == 1;
            let bits = if v6 { 128 } else { 32 };
            let key = random_key(&mut rng, v6);
            let cidr = rng.below(bits + 1) as u8;
            let addr = to_addr(v6, key);
            match rng.below(10) {
                0..=4 => {
                    let value = rng.below(8) as u32;
                    let expected = r.insert(v6, key, cidr, value);
                    assert_eq!(t.insert(addr, cidr, value), Ok(expected), "step {step}");
                }
                5..=6 => assert_eq!(t.remove(addr, cidr), r.remove(v6, key, cidr)),
                7 if step % 50 == 0 => {
                    let value = rng.below(8) as u32;
                    let before = r.0.len();
                    r.0.retain(|e| e.3 != value);
                    assert_eq!(t.remove_value(value), before - r.0.len());
                }
                _ => {}
            }
            let probe = random_key(&mut rng, v6);
            assert_eq!(
                t.lookup(to_addr(v6, probe)),
                r.lookup(v6, probe),
                "step {step}"
            );
            assert_eq!(t.lookup(addr), r.lookup(v6, key), "step {step}");
            assert_eq!(t.len(), r.0.len());
            if step % 500 == 0 {
                check_invariants(&t.v4);
                check_invariants(&t.v6);
            }
        }
        check_invariants(&t.v4);
        check_invariants(&t.v6);
        let ours: Vec<_> = t
            .iter()
            .map(|(a, c, v)| match a {
                IpAddr::V4(a) => (false, v4_key(a.octets()), c, v),
                IpAddr::V6(a) => (true, a.to_bits(), c, v),
            })
            .collect();
        assert_eq!(ours, r.sorted());
        let live = |tr: &Trie<u32>| tr.nodes.len() - tr.free.len();
        // Valueless nodes have two children, so n values need fewer than 2n nodes.
        assert!(live(&t.v4) + live(&t.v6) < 2 * t.len().max(1));
    }

    #[test]
    fn hundred_thousand_prefixes() {
        let mut rng = XorShift(7);
        let mut t = AllowedIps::new();
        let mut inserted = Vec::new();
        for i in 0..100_000u32 {
            let key = u128::from(rng.next() as u32) << 96;
            let cidr = 8 + rng.below(25) as u8;
            if t.insert(to_addr(false, key), cidr, i).unwrap().is_none() {
                inserted.push((key & mask(cidr), cidr));
            }
        }
        assert_eq!(t.len(), inserted.len());
        check_invariants(&t.v4);
        for &(key, cidr) in &inserted {
            assert!(t.lookup(to_addr(false, key)).is_some(), "{key:x}/{cidr}");
        }
        for &(key, cidr) in &inserted {
            assert!(t.remove(to_addr(false, key), cidr).is_some());
        }
        assert!(t.is_empty());
        assert!(t.v4.nodes.is_empty());
    }
}
