//! The lookup side of an address family: a poptrie (Asai & Ohara, "Poptrie:
//! A Compressed Trie with Population Count for Fast and Scalable Software IP
//! Routing Table Lookup", SIGCOMM 2015), built in one pass from the entries
//! of the binary [`super::trie`].
//!
//! A lookup reads the direct-pointing array at the top `direct_bits` bits of
//! the address, then walks inner nodes that each consume [`STRIDE`] bits, and
//! ends in a leaf that holds the answer (leaf pushing: every leaf already
//! carries the value of the longest prefix covering it). For IPv4 with 16
//! direct bits that is at most five dependent loads (direct slot, three
//! nodes, leaf), against up to 33 binary trie nodes, so the cost stays flat
//! as the table grows. Nodes stay small because children and leaves are not
//! arrays of 64: a node holds a bitmap of which of its 64 slots are inner
//! nodes (`vector`) and one of where a run of equal leaves starts
//! (`leafvec`); the children and the leaves of a node are contiguous, and the
//! population count of the bitmap below a slot is its offset.
//!
//! The table is immutable: [`Fib::build`] makes a new one, which takes a few
//! tens of milliseconds for 100,000 prefixes.

/// Address bits an inner node consumes: one `u64` bitmap covers its slots.
const STRIDE: u8 = 6;
/// Slots of an inner node.
const FANOUT: usize = 1 << STRIDE;
/// Bounds of the direct-pointing array's index width. The width grows with
/// the number of prefixes (about one slot per prefix), so a small table
/// stays small: 256 slots, 2 KiB for 4-byte values, up to 2^16 slots.
const MIN_DIRECT_BITS: u8 = 8;
const MAX_DIRECT_BITS: u8 = 16;

/// One entry of the direct-pointing array.
#[derive(Debug, Clone, Copy)]
enum Direct<T> {
    /// The answer for every address under this slot.
    Leaf(Option<T>),
    /// Index of the inner node that resolves the next [`STRIDE`] bits.
    Node(u32),
}

/// An inner node: 64 slots, each an inner node or a leaf.
#[derive(Debug, Clone, Copy, Default)]
struct Node {
    /// Bit `i` set: slot `i` is an inner node.
    vector: u64,
    /// Bit `i` set: slot `i` is a leaf whose value differs from the previous
    /// leaf slot's (the first leaf slot always has its bit set).
    leafvec: u64,
    /// Index in `leaves` of the value of the first run of leaves.
    base0: u32,
    /// Index in `nodes` of the first child node.
    base1: u32,
}

/// An immutable longest-prefix-match table of one address family.
#[derive(Debug, Clone)]
pub(super) struct Fib<T> {
    direct_bits: u8,
    direct: Box<[Direct<T>]>,
    nodes: Box<[Node]>,
    leaves: Box<[Option<T>]>,
}

/// An entry of the binary trie: left-aligned masked key, prefix length, value.
pub(super) type Entry<T> = (u128, u8, T);

impl<T: Copy + Eq> Fib<T> {
    /// The table of `entries`, which must be in pre-order: a prefix before
    /// every longer prefix inside it, and the entries inside any prefix
    /// contiguous (ascending `(key, cidr)`, as [`super::trie::Trie::iter`]
    /// yields them). `bits` is the address width.
    pub(super) fn build(entries: &[Entry<T>], bits: u8) -> Self {
        if entries.is_empty() {
            return Self::empty();
        }
        let direct_bits = direct_bits(entries.len(), bits);
        let mut values = vec![None; 1 << direct_bits];
        paint(entries, 0, direct_bits, &mut values);
        let mut direct: Box<[Direct<T>]> = values.iter().map(|&v| Direct::Leaf(v)).collect();
        let mut builder = Builder::default();
        for (slot, inside) in groups(entries, 0, direct_bits) {
            let (Some(d), Some(&value)) = (direct.get_mut(slot), values.get(slot)) else {
                continue;
            };
            let at = builder.nodes.len();
            builder.nodes.push(Node::default());
            builder.fill(at, inside, direct_bits, value);
            *d = Direct::Node(index(at));
        }
        Self {
            direct_bits,
            direct,
            nodes: builder.nodes.into_boxed_slice(),
            leaves: builder.leaves.into_boxed_slice(),
        }
    }

    /// The table without prefixes: it owns no heap memory.
    pub(super) fn empty() -> Self {
        Self {
            direct_bits: MIN_DIRECT_BITS,
            direct: Box::default(),
            nodes: Box::default(),
            leaves: Box::default(),
        }
    }

    /// The value of the longest prefix containing the left-aligned `key`.
    pub(super) fn lookup(&self, key: u128) -> Option<T> {
        let mut node = match *self.direct.get(chunk(key, 0, self.direct_bits))? {
            Direct::Leaf(value) => return value,
            Direct::Node(at) => self.nodes.get(at as usize)?,
        };
        let mut depth = self.direct_bits;
        loop {
            let slot = chunk(key, depth, STRIDE) as u32;
            let upto = u64::MAX >> (63 - slot);
            if node.vector & (1 << slot) != 0 {
                let rank = (node.vector & upto).count_ones();
                node = self.nodes.get(offset(node.base1, rank)?)?;
                depth += STRIDE;
            } else {
                let rank = (node.leafvec & upto).count_ones();
                return *self.leaves.get(offset(node.base0, rank)?)?;
            }
        }
    }

    /// Bytes the table holds on the heap.
    #[cfg(test)]
    pub(super) fn heap_bytes(&self) -> usize {
        size_of_val(&*self.direct) + size_of_val(&*self.nodes) + size_of_val(&*self.leaves)
    }
}

/// Width of the direct-pointing index for `len` prefixes of a `bits`-bit family.
fn direct_bits(len: usize, bits: u8) -> u8 {
    let log2 = (usize::BITS - len.leading_zeros()) as u8;
    log2.clamp(MIN_DIRECT_BITS, MAX_DIRECT_BITS).min(bits)
}

/// The `width` (1..=64) bits of `key` starting at bit `depth` from the top;
/// bits past the end of the key read as zero.
fn chunk(key: u128, depth: u8, width: u8) -> usize {
    (key.checked_shl(u32::from(depth)).unwrap_or(0) >> (128 - u32::from(width))) as usize
}

/// `base + rank - 1`: the element a population count `rank >= 1` selects.
fn offset(base: u32, rank: u32) -> Option<usize> {
    (base as usize + rank as usize).checked_sub(1)
}

/// A `Vec` index as stored in a node. A table of 2^32 nodes would need over
/// 100 GiB; should one exist, the index saturates to one that reads as "not
/// found" rather than wrapping to a wrong node.
fn index(at: usize) -> u32 {
    u32::try_from(at).unwrap_or(u32::MAX)
}

/// Paints the `2^width` slots (`values`) of the node at `depth` that
/// `entries` lie in: each slot gets the value of the longest entry covering
/// all of it, on top of the value it starts with. Entries shorter than
/// `depth` are already accounted for in the starting values, entries longer
/// than `depth + width` are left to the slot's child (see [`groups`]).
fn paint<T: Copy>(entries: &[Entry<T>], depth: u8, width: u8, values: &mut [Option<T>]) {
    let end = depth + width;
    for &(key, cidr, value) in entries {
        if (depth..=end).contains(&cidr) {
            let first = chunk(key, depth, width);
            let count = 1usize << (end - cidr);
            let covered = values.get_mut(first..first + count).into_iter().flatten();
            covered.for_each(|slot| *slot = Some(value));
        }
    }
}

/// The entries longer than `depth + width`, grouped by the slot of the node
/// at `depth` they lie in, in ascending slot order. Pre-order keeps the
/// entries inside one slot contiguous.
fn groups<T>(
    entries: &[Entry<T>],
    depth: u8,
    width: u8,
) -> impl Iterator<Item = (usize, &[Entry<T>])> {
    let end = depth + width;
    let mut rest = entries;
    std::iter::from_fn(move || {
        let start = rest.iter().position(|e| e.1 > end)?;
        let (_, tail) = rest.split_at(start);
        let slot = chunk(tail.first()?.0, depth, width);
        let len = tail
            .iter()
            .take_while(|e| e.1 > end && chunk(e.0, depth, width) == slot)
            .count();
        let (group, after) = tail.split_at(len);
        rest = after;
        Some((slot, group))
    })
}

/// The growing node and leaf arrays of a [`Fib`] under construction.
struct Builder<T> {
    nodes: Vec<Node>,
    leaves: Vec<Option<T>>,
}

impl<T> Default for Builder<T> {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            leaves: Vec::new(),
        }
    }
}

impl<T: Copy + Eq> Builder<T> {
    /// Builds the node at index `at` (already allocated) for the prefix at
    /// `depth` that `entries` lie in, whose covering value is `inherited`.
    /// Its children are allocated as one block, then built depth-first.
    fn fill(&mut self, at: usize, entries: &[Entry<T>], depth: u8, inherited: Option<T>) {
        let mut values = [inherited; FANOUT];
        paint(entries, depth, STRIDE, &mut values);
        let vector = groups(entries, depth, STRIDE).fold(0u64, |v, (slot, _)| v | 1 << slot);
        let first_child = self.nodes.len();
        let node = self.node_of(&values, vector, first_child);
        self.nodes
            .resize(first_child + vector.count_ones() as usize, Node::default());
        if let Some(slot) = self.nodes.get_mut(at) {
            *slot = node;
        }
        let children = groups(entries, depth, STRIDE);
        for (child, (slot, inside)) in (first_child..).zip(children) {
            let value = values.get(slot).copied().flatten();
            self.fill(child, inside, depth + STRIDE, value);
        }
    }

    /// The node whose slots hold `values` or, where `vector` has a bit set,
    /// the children from `first_child` on; pushes its leaves.
    fn node_of(&mut self, values: &[Option<T>], vector: u64, first_child: usize) -> Node {
        let mut node = Node {
            vector,
            leafvec: 0,
            base0: index(self.leaves.len()),
            base1: index(first_child),
        };
        let mut last = None;
        for (i, &value) in values.iter().enumerate() {
            if vector & 1 << i == 0 && last != Some(value) {
                node.leafvec |= 1 << i;
                self.leaves.push(value);
                last = Some(value);
            }
        }
        node
    }
}
