//! The source of truth of one address family: a path-compressed binary trie
//! (like the kernel's `allowedips.c`) whose nodes live in a `Vec` arena and
//! refer to each other by index. Insert, remove and iteration work here; the
//! packet path reads the [`super::fib`] built from it when the family has one.
//!
//! A lookup visits at most one node per address bit, whatever the table
//! size, and nothing recurses. Invariant: a node without a value always has
//! two children, so removal prunes the intermediate nodes it leaves behind.

use super::mask;

/// Bit `pos` of `key`, counting from the most significant bit (`pos < 128`).
pub(super) fn bit_at(key: u128, pos: u8) -> usize {
    ((key >> (127 - u32::from(pos))) & 1) as usize
}

/// "No node".
pub(super) const NIL: usize = usize::MAX;

#[derive(Debug, Clone)]
pub(super) struct Node<T> {
    /// The prefix, left-aligned, bits past `cidr` zero.
    pub(super) key: u128,
    pub(super) cidr: u8,
    /// `None` for an intermediate node, which then has two children.
    pub(super) value: Option<T>,
    pub(super) parent: usize,
    /// Children by the bit at position `cidr` of their keys.
    pub(super) child: [usize; 2],
}

impl<T> Node<T> {
    pub(super) fn contains(&self, key: u128) -> bool {
        (self.key ^ key) & mask(self.cidr) == 0
    }
}

/// A path-compressed binary trie of one address family.
#[derive(Debug, Clone)]
pub(super) struct Trie<T> {
    pub(super) bits: u8,
    pub(super) root: usize,
    pub(super) nodes: Vec<Node<T>>,
    pub(super) free: Vec<usize>,
    /// Number of nodes that hold a value.
    pub(super) len: usize,
}

impl<T: Copy + Eq> Trie<T> {
    pub(super) fn new(bits: u8) -> Self {
        Self {
            bits,
            root: NIL,
            nodes: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    pub(super) fn clear(&mut self) {
        *self = Self::new(self.bits);
    }

    pub(super) fn lookup(&self, key: u128) -> Option<T> {
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
    pub(super) fn insert(&mut self, key: u128, cidr: u8, value: T) -> Option<T> {
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

    pub(super) fn remove(&mut self, key: u128, cidr: u8) -> Option<T> {
        let (at, exact) = self.placement(key, cidr);
        if !exact {
            return None;
        }
        let old = self.nodes[at].value.take()?;
        self.len -= 1;
        self.prune(at);
        Some(old)
    }

    pub(super) fn remove_value(&mut self, value: T) -> usize {
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

    /// Pre-order walk, child 0 before child 1: ascending (key, cidr), so a
    /// prefix always comes before the longer prefixes inside it.
    pub(super) fn iter(&self) -> TrieIter<'_, T> {
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

/// The entries of a [`Trie`] as `(key, cidr, value)`, see [`Trie::iter`].
pub(super) struct TrieIter<'a, T> {
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
