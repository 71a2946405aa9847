//! Tests of the allowed-IPs table against a brute-force reference.

use super::trie::{bit_at, NIL};
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
fn cached_lookup_follows_every_change() {
    let mut t = table(&[("10.0.0.0", 8, 1)]);
    let a = ip("10.1.2.3");
    assert_eq!(t.lookup_cached(a), Some(1));
    assert_eq!(t.lookup_cached(a), Some(1));
    t.insert(ip("10.1.0.0"), 16, 2).unwrap();
    assert_eq!(t.lookup_cached(a), Some(2), "insert");
    assert_eq!(t.remove(ip("10.1.0.0"), 16), Some(2));
    assert_eq!(t.lookup_cached(a), Some(1), "remove");
    assert_eq!(t.remove_value(1), 1);
    assert_eq!(t.lookup_cached(a), None, "remove_value");
    t.insert(ip("0.0.0.0"), 0, 3).unwrap();
    assert_eq!(t.lookup_cached(a), Some(3));
    t.clear();
    assert_eq!(t.lookup_cached(a), None, "clear");
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

/// One random insert, remove or (every 50th step, maybe) `remove_value` on
/// both `t` and `r`; returns the address it used.
fn random_change(
    rng: &mut XorShift,
    t: &mut AllowedIps<u32>,
    r: &mut Reference,
    v6: bool,
    step: usize,
) -> u128 {
    let bits = if v6 { 128 } else { 32 };
    let key = random_key(rng, v6);
    let cidr = rng.below(bits + 1) as u8;
    let addr = to_addr(v6, key);
    match rng.below(10) {
        0..=4 => {
            let value = rng.below(8) as u32;
            let expected = r.insert(v6, key, cidr, value);
            assert_eq!(t.insert(addr, cidr, value), Ok(expected), "step {step}");
        }
        5..=6 => assert_eq!(t.remove(addr, cidr), r.remove(v6, key, cidr)),
        7 if step.is_multiple_of(50) => {
            let value = rng.below(8) as u32;
            let before = r.0.len();
            r.0.retain(|e| e.3 != value);
            assert_eq!(t.remove_value(value), before - r.0.len());
        }
        _ => {}
    }
    key
}

#[test]
fn randomized_against_reference() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut t = AllowedIps::new();
    let mut r = Reference::default();
    for step in 0..20_000 {
        let v6 = rng.below(2) == 1;
        let key = random_change(&mut rng, &mut t, &mut r, v6, step);
        let probe = random_key(&mut rng, v6);
        assert_eq!(
            t.lookup(to_addr(v6, probe)),
            r.lookup(v6, probe),
            "step {step}"
        );
        assert_eq!(t.lookup(to_addr(v6, key)), r.lookup(v6, key), "step {step}");
        // The one-entry cache never outlives a change: the key just changed, asked
        // twice (the second answer comes from the cache), and the probe.
        for k in [key, key, probe] {
            assert_eq!(
                t.lookup_cached(to_addr(v6, k)),
                r.lookup(v6, k),
                "step {step}"
            );
        }
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

/// The first and the last address of every entry, and random addresses.
fn probes(rng: &mut XorShift, r: &Reference) -> Vec<(bool, u128)> {
    let family = |v6: bool| if v6 { u128::MAX } else { mask(32) };
    let mut out: Vec<_> =
        r.0.iter()
            .flat_map(|&(v6, key, cidr, _)| [(v6, key), (v6, key | (!mask(cidr) & family(v6)))])
            .collect();
    for _ in 0..500 {
        let v6 = rng.below(2) == 1;
        out.push((v6, random_key(rng, v6)));
    }
    out
}

/// After each batch of random changes (no lookup in between, so the IPv4
/// poptrie is rebuilt once per batch), the IPv4 poptrie behind `lookup`, a
/// poptrie built from the IPv6 trie and both tries agree with the reference.
#[test]
fn lookup_tables_match_reference_after_random_batches() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut t = AllowedIps::new();
    let mut r = Reference::default();
    for batch in 0..80 {
        for step in 0..rng.below(300) as usize {
            let v6 = rng.below(2) == 1;
            random_change(&mut rng, &mut t, &mut r, v6, step);
        }
        let v6_entries: Vec<_> = t.v6.iter().collect();
        let v6_fib = Fib::build(&v6_entries, 128);
        for (v6, key) in probes(&mut rng, &r) {
            let expected = r.lookup(v6, key);
            let context = format!("batch {batch}, v6 {v6}, key {key:032x}");
            assert_eq!(t.lookup(to_addr(v6, key)), expected, "{context}");
            if v6 {
                assert_eq!(v6_fib.lookup(key), expected, "{context}");
                assert_eq!(t.v6.lookup(key), expected, "{context}");
            } else {
                assert_eq!(t.v4.lookup(key), expected, "{context}");
            }
        }
    }
    assert!(r.0.len() > 100, "the batches built up a sizeable table");
}

#[test]
fn every_change_reaches_the_next_lookup() {
    let mut t = table(&[("10.0.0.0", 8, 1)]);
    let at = ip("10.1.1.1");
    assert_eq!(t.lookup(at), Some(1));
    t.insert(ip("10.1.0.0"), 16, 2).unwrap();
    assert_eq!(t.lookup(at), Some(2));
    t.insert(ip("10.1.0.0"), 16, 3).unwrap();
    assert_eq!(t.lookup(at), Some(3));
    t.remove(ip("10.1.0.0"), 16);
    assert_eq!(t.lookup(at), Some(1));
    t.insert(ip("10.1.1.0"), 24, 4).unwrap();
    assert_eq!(t.lookup(at), Some(4));
    t.remove_value(4);
    assert_eq!(t.lookup(at), Some(1));
    t.clear();
    assert_eq!(t.lookup(at), None);
}

#[test]
fn only_ipv4_changes_drop_the_ipv4_lookup_table() {
    let mut t = table(&[("10.0.0.0", 8, 1)]);
    t.prepare_lookup();
    assert!(t.v4_fib.get().is_some());
    t.insert(ip("fd00::"), 8, 5).unwrap();
    t.insert(ip("10.0.0.0"), 8, 1).unwrap();
    assert_eq!(t.remove(ip("11.0.0.0"), 8), None);
    assert_eq!(t.remove_value(9), 0);
    assert_eq!(t.remove_value(5), 1);
    assert!(t.v4_fib.get().is_some(), "no IPv4 change, no rebuild");
    t.insert(ip("10.0.0.0"), 8, 2).unwrap();
    assert!(t.v4_fib.get().is_none());
    assert_eq!(t.lookup_v4([10, 9, 9, 9]), Some(2));
    assert!(t.v4_fib.get().is_some(), "the lookup rebuilt it");
}

#[test]
fn lookup_table_memory_follows_the_table_size() {
    let heap = |t: &AllowedIps<u32>| {
        t.prepare_lookup();
        t.v4_fib.get().map(Fib::heap_bytes)
    };
    assert_eq!(heap(&AllowedIps::new()), Some(0));
    let small = table(&[
        ("10.0.0.0", 8, 1),
        ("10.1.2.3", 32, 2),
        ("192.0.2.0", 24, 3),
    ]);
    let bytes = heap(&small).unwrap();
    assert!(bytes <= 4096, "3 prefixes take {bytes} bytes");
}

/// A prefix of every length on one address, probed with each bit flipped:
/// every depth of the direct array and of the inner nodes is resolved.
#[test]
fn every_prefix_length_resolves_at_every_depth() {
    for extra in [0, 40_000] {
        let mut t = AllowedIps::new();
        let mut rng = XorShift(11);
        for i in 0..extra {
            t.insert(
                to_addr(false, u128::from(rng.next() as u32) << 96),
                32,
                1000 + i,
            )
            .unwrap();
        }
        let base = 0xc0a8_2a17u32;
        for cidr in (0..=32).step_by(3).chain([32]) {
            t.insert(IpAddr::V4(Ipv4Addr::from_bits(base)), cidr, u32::from(cidr))
                .unwrap();
        }
        for flip in 0..=32u32 {
            let addr = base ^ 1u32.checked_shl(32 - flip).unwrap_or(0);
            let key = u128::from(addr) << 96;
            assert_eq!(
                t.lookup_v4(addr.to_be_bytes()),
                t.v4.lookup(key),
                "flip {flip}"
            );
        }
    }
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
        let last = key | (!mask(cidr) & mask(32));
        for probe in [key, last, u128::from(rng.next() as u32) << 96] {
            let got = t.lookup(to_addr(false, probe));
            assert_eq!(got, t.v4.lookup(probe), "{key:x}/{cidr}");
        }
    }
    let bytes = t.v4_fib.get().map_or(0, Fib::heap_bytes);
    assert!(bytes < 32 << 20, "100k prefixes take {bytes} bytes");
    for &(key, cidr) in &inserted {
        assert!(t.remove(to_addr(false, key), cidr).is_some());
    }
    assert!(t.is_empty());
    assert!(t.v4.nodes.is_empty());
}
