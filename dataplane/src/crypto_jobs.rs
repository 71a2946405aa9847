//! The crypto of one batch as pool jobs: consecutive messages under one key are cut
//! into chunks, each chunk one [`Job`] that seals or opens its messages with
//! `portdistrict_wg::batch` (the AVX-512 group code for runs of equal length, ring for
//! the rest).
//!
//! Chunk size: [`GROUP`] messages (a full group) when the batch runs on the loop
//! thread alone; [`POLY_LANES`] when the pool's workers are on, so that a GSO batch
//! (about 44 messages) makes enough jobs to spread over the cores. Never sizes in
//! between: the group code's Poly1305 runs eight messages per register, so a chunk of
//! 9 to 15 costs as much as one of 16 (chunks of ceil(n/4) did, and made the pool a
//! loss).
//!
//! Each chunk is told whether to use the group code at all: `false` keeps every
//! message on the one-by-one path (`PD_CRYPTO_GROUP=off`, read into the driver's
//! `Options`: for comparison and as the "fast paths off" configuration of the tests).

use crate::crypto_pool::{Job, Pool};
use portdistrict_aead::GROUP;
use portdistrict_wg::batch::{open_many, seal_prepared_many};
use portdistrict_wg::crypto::AeadKey;
use portdistrict_wg::session::SessionError;
use std::sync::Arc;

/// Messages per chunk while the batch is spread over the workers: one register of
/// the group code's Poly1305 lanes.
const POLY_LANES: usize = 8;

/// Messages per chunk for a batch of `n` (see the module documentation).
pub fn chunk_size(pool: &Pool) -> usize {
    if pool.enabled() {
        POLY_LANES
    } else {
        GROUP
    }
}

/// Seals up to [`GROUP`] prepared data messages under one key.
pub struct SealChunk<'a> {
    msgs: [&'a mut [u8]; GROUP],
    /// Where each message lies in the caller's send buffer (offset, length).
    spans: [(usize, usize); GROUP],
    len: usize,
    key: &'a AeadKey,
    /// Whether the group code may be used.
    group: bool,
    /// Messages the group code sealed (set by `run`).
    pub grouped: usize,
}

impl<'a> SealChunk<'a> {
    /// An empty chunk for messages under `key`; `group`: whether the group code may
    /// be used (it also needs the CPU's support).
    pub fn new(key: &'a AeadKey, group: bool) -> Self {
        SealChunk {
            msgs: Default::default(),
            spans: [(0, 0); GROUP],
            len: 0,
            key,
            group,
            grouped: 0,
        }
    }

    /// After `run`: the spans (as pushed) of the messages that could not be sealed.
    /// Each was wiped; the caller must take it out of what it sends (a hard drop,
    /// see `portdistrict_wg::session::seal_prepared`).
    pub fn dropped(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        // `seal_prepared_many` empties the slice of every message it dropped; a
        // prepared message is never empty.
        self.msgs[..self.len]
            .iter()
            .zip(&self.spans)
            .filter(|(m, _)| m.is_empty())
            .map(|(_, &span)| span)
    }

    /// Whether another message fits.
    pub fn is_full(&self, limit: usize) -> bool {
        self.len >= limit.min(GROUP)
    }

    /// The key of the chunk.
    pub fn key(&self) -> &'a AeadKey {
        self.key
    }

    /// Adds a message found at `span` (offset, length) of the caller's buffer (the
    /// caller checks [`SealChunk::is_full`] first).
    pub fn push(&mut self, msg: &'a mut [u8], span: (usize, usize)) {
        self.msgs[self.len] = msg;
        self.spans[self.len] = span;
        self.len += 1;
    }
}

impl Job for Option<SealChunk<'_>> {
    fn run(&mut self) {
        if let Some(c) = self {
            let sealed = seal_prepared_many(c.key, &mut c.msgs[..c.len], c.group);
            c.grouped = sealed.grouped;
        }
    }
}

/// Takes the datagrams at `spans` (offset, length; disjoint) out of `buf`, closing
/// the gaps, and returns how many it took out. A span that does not lie inside `buf`
/// (never expected) leaves nothing to send: `buf` is cleared and `None` returned.
pub fn remove_spans(buf: &mut Vec<u8>, spans: &mut [(usize, usize)]) -> Option<usize> {
    spans.sort_unstable();
    let fits = spans
        .windows(2)
        .all(|w| w[0].0.saturating_add(w[0].1) <= w[1].0)
        && spans
            .last()
            .is_none_or(|&(o, l)| o.checked_add(l).is_some_and(|end| end <= buf.len()));
    if !fits {
        buf.clear();
        return None;
    }
    for &(offset, len) in spans.iter().rev() {
        buf.drain(offset..offset + len);
    }
    Some(spans.len())
}

/// Opens up to [`GROUP`] data messages under one key; the results stay with it until
/// the caller takes them back in order.
pub struct OpenChunk<'a> {
    msgs: [&'a mut [u8]; GROUP],
    results: [Result<usize, SessionError>; GROUP],
    len: usize,
    key: Arc<AeadKey>,
    /// Whether the group code may be used.
    group: bool,
    /// Messages the group code opened (set by `run`).
    pub grouped: usize,
}

impl<'a> OpenChunk<'a> {
    /// An empty chunk for messages under `key`; `group`: whether the group code may
    /// be used (it also needs the CPU's support).
    pub fn new(key: Arc<AeadKey>, group: bool) -> Self {
        OpenChunk {
            msgs: Default::default(),
            results: [Err(SessionError::Decrypt); GROUP],
            len: 0,
            key,
            group,
            grouped: 0,
        }
    }

    /// Whether another message fits.
    pub fn is_full(&self, limit: usize) -> bool {
        self.len >= limit.min(GROUP)
    }

    /// The key of the chunk.
    pub fn key(&self) -> &Arc<AeadKey> {
        &self.key
    }

    /// Adds a message (the caller checks [`OpenChunk::is_full`] first).
    pub fn push(&mut self, msg: &'a mut [u8]) {
        self.msgs[self.len] = msg;
        self.len += 1;
    }

    /// The messages with what opening each gave, in the order pushed.
    pub fn into_results(self) -> impl Iterator<Item = (&'a mut [u8], Result<usize, SessionError>)> {
        let len = self.len;
        self.msgs.into_iter().zip(self.results).take(len)
    }
}

impl Job for Option<OpenChunk<'_>> {
    fn run(&mut self) {
        if let Some(c) = self {
            c.grouped = open_many(
                &c.key,
                &mut c.msgs[..c.len],
                &mut c.results[..c.len],
                c.group,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portdistrict_wg::wire::{DATA_HEADER_LEN, DATA_MIN_LEN};

    /// A send buffer of `n` prepared data messages of `plain` bytes (the last one
    /// `short` bytes shorter), each filled with the byte `b'A' + i` as its plaintext.
    fn batch(n: usize, plain: usize, short: usize) -> (Vec<u8>, Vec<(usize, usize)>) {
        let mut buf = Vec::new();
        let mut spans = Vec::new();
        for i in 0..n {
            let len = DATA_MIN_LEN + plain - if i == n - 1 { short } else { 0 };
            let mut m = vec![b'A' + i as u8; len];
            m[..DATA_HEADER_LEN].fill(0);
            m[0] = 4;
            m[8..16].copy_from_slice(&(i as u64).to_le_bytes());
            spans.push((buf.len(), len));
            buf.extend_from_slice(&m);
        }
        (buf, spans)
    }

    /// A chunk member that cannot be sealed (here: its header lost) is reported by
    /// `dropped` with its span, and after `remove_spans` the buffer holds only the
    /// sealed messages, in order: no plaintext is left to send. Both the group path
    /// (runs of equal lengths) and the one-by-one path.
    #[test]
    fn unsealable_members_leave_the_send_buffer() {
        let key = AeadKey::new(&[8u8; 32]);
        let (mut buf, spans) = batch(12, 96, 32);
        let bad = [1usize, 6, 11];
        for &i in &bad {
            buf[spans[i].0] = 1;
        }
        let mut dropped = Vec::new();
        {
            let mut chunk = Some(SealChunk::new(&key, portdistrict_aead::available()));
            let mut rest: &mut [u8] = &mut buf;
            let mut pos = 0;
            for &(offset, len) in &spans {
                let (_, tail) = std::mem::take(&mut rest).split_at_mut(offset - pos);
                let (msg, tail) = tail.split_at_mut(len);
                rest = tail;
                pos = offset + len;
                chunk.as_mut().unwrap().push(msg, (offset, len));
            }
            chunk.run();
            dropped.extend(chunk.as_ref().unwrap().dropped());
        }
        let want: Vec<(usize, usize)> = bad.iter().map(|&i| spans[i]).collect();
        assert_eq!(dropped, want);
        let before = buf.len();
        assert_eq!(remove_spans(&mut buf, &mut dropped), Some(3));
        assert_eq!(buf.len(), before - want.iter().map(|s| s.1).sum::<usize>());
        // What is left: the nine good messages, each sealed (opens under the key),
        // none of the wiped ones, no plaintext run of any message.
        let mut at = 0;
        for i in (0..12).filter(|i| !bad.contains(i)) {
            let len = spans[i].1;
            let msg = &mut buf[at..at + len];
            assert_eq!(msg[0], 4, "message {i} in place");
            assert!(
                !msg[DATA_HEADER_LEN..]
                    .windows(8)
                    .any(|w| w == [b'A' + i as u8; 8]),
                "message {i} is plaintext"
            );
            assert!(
                portdistrict_wg::session::open_with(&key, msg).is_ok(),
                "message {i}"
            );
            at += len;
        }
        assert_eq!(at, buf.len());
    }

    #[test]
    fn remove_spans_closes_gaps_and_refuses_what_lies_outside() {
        let mut buf: Vec<u8> = (0..10).collect();
        assert_eq!(remove_spans(&mut buf, &mut [(8, 2), (0, 3)]), Some(2));
        assert_eq!(buf, vec![3, 4, 5, 6, 7]);
        assert_eq!(remove_spans(&mut buf, &mut []), Some(0));
        assert_eq!(buf, vec![3, 4, 5, 6, 7]);
        for mut bad in [
            vec![(4usize, 2usize)],
            vec![(0, 3), (2, 1)],
            vec![(usize::MAX, 2)],
        ] {
            let mut b = buf.clone();
            assert_eq!(remove_spans(&mut b, &mut bad), None, "{bad:?}");
            assert!(b.is_empty());
        }
    }
}
