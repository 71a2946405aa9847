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
//! `PD_CRYPTO_GROUP=off` keeps every message on the one-by-one path (for comparison
//! and as the "fast paths off" configuration of the tests).

use crate::io::{Job, Pool};
use portdistrict_aead::GROUP;
use portdistrict_wg::batch::{open_many, seal_prepared_many};
use portdistrict_wg::crypto::AeadKey;
use portdistrict_wg::session::SessionError;
use std::sync::Arc;

/// Messages per chunk while the batch is spread over the workers: one register of
/// the group code's Poly1305 lanes.
const POLY_LANES: usize = 8;

/// Whether the group code is used: the CPU has it and `PD_CRYPTO_GROUP` is not `off`.
pub fn group_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("PD_CRYPTO_GROUP").as_deref() != Ok("off") && portdistrict_aead::available()
    })
}

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
    len: usize,
    key: &'a AeadKey,
    /// Messages the group code sealed (set by `run`).
    pub grouped: usize,
}

impl<'a> SealChunk<'a> {
    /// An empty chunk for messages under `key`.
    pub fn new(key: &'a AeadKey) -> Self {
        SealChunk {
            msgs: Default::default(),
            len: 0,
            key,
            grouped: 0,
        }
    }

    /// Whether another message fits.
    pub fn is_full(&self, limit: usize) -> bool {
        self.len >= limit.min(GROUP)
    }

    /// The key of the chunk.
    pub fn key(&self) -> &'a AeadKey {
        self.key
    }

    /// Adds a message (the caller checks [`SealChunk::is_full`] first).
    pub fn push(&mut self, msg: &'a mut [u8]) {
        self.msgs[self.len] = msg;
        self.len += 1;
    }
}

impl Job for Option<SealChunk<'_>> {
    fn run(&mut self) {
        if let Some(c) = self {
            c.grouped = seal_prepared_many(c.key, &mut c.msgs[..c.len], group_enabled());
        }
    }
}

/// Opens up to [`GROUP`] data messages under one key; the results stay with it until
/// the caller takes them back in order.
pub struct OpenChunk<'a> {
    msgs: [&'a mut [u8]; GROUP],
    results: [Result<usize, SessionError>; GROUP],
    len: usize,
    key: Arc<AeadKey>,
    /// Messages the group code opened (set by `run`).
    pub grouped: usize,
}

impl<'a> OpenChunk<'a> {
    /// An empty chunk for messages under `key`.
    pub fn new(key: Arc<AeadKey>) -> Self {
        OpenChunk {
            msgs: Default::default(),
            results: [Err(SessionError::Decrypt); GROUP],
            len: 0,
            key,
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
                group_enabled(),
            );
        }
    }
}
