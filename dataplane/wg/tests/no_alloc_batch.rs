//! The batch crypto allocates nothing: 100k data messages sealed and opened in batches
//! of 64 (the group code where the CPU has it, ring for the rest) under a counting
//! allocator. Its own test binary, and only the test's own thread is counted (the
//! harness's threads may allocate meanwhile, e.g. when the machine is busy).

use portdistrict_wg::batch::{open_many, seal_prepared_many};
use portdistrict_wg::crypto::AeadKey;
use portdistrict_wg::session::SessionError;
use portdistrict_wg::wire::{DATA_HEADER_LEN, DATA_MIN_LEN};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
thread_local! {
    /// Whether this thread's allocations are counted (a const initialiser: reading it
    /// allocates nothing).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const BATCH: usize = 64;
const PLAIN: usize = 1424;

#[test]
fn hundred_thousand_messages_in_batches_allocate_nothing() {
    let key = AeadKey::new(&[5u8; 32]);
    let msg_len = DATA_MIN_LEN + PLAIN;
    // One buffer holding a batch of messages back to back (like a GSO batch); the last
    // one shorter, as at the end of a super-packet.
    let mut buf = vec![0u8; BATCH * msg_len];
    let mut results = vec![Err(SessionError::Expired); BATCH];
    let mut counter = 0u64;
    let mut opened = 0usize;
    let mut grouped = 0usize;
    COUNTING.set(true);
    for _ in 0..100_000 / BATCH + 1 {
        let mut refs: [&mut [u8]; BATCH] = std::array::from_fn(|_| Default::default());
        let mut rest: &mut [u8] = &mut buf;
        for (i, r) in refs.iter_mut().enumerate() {
            let len = if i == BATCH - 1 {
                msg_len - 160
            } else {
                msg_len
            };
            let (m, tail) = std::mem::take(&mut rest).split_at_mut(msg_len);
            rest = tail;
            let m = &mut m[..len];
            m[..4].copy_from_slice(&[4, 0, 0, 0]);
            m[4..8].copy_from_slice(&9u32.to_le_bytes());
            m[8..16].copy_from_slice(&counter.to_le_bytes());
            m[DATA_HEADER_LEN] = i as u8;
            counter += 1;
            *r = m;
        }
        let sealed = seal_prepared_many(&key, &mut refs, true);
        assert_eq!(sealed.dropped, 0);
        grouped += sealed.grouped;
        grouped += open_many(&key, &mut refs, &mut results, true);
        for (i, (r, m)) in results.iter().zip(&refs).enumerate() {
            assert_eq!(*r, Ok(m.len() - DATA_MIN_LEN));
            assert_eq!(m[DATA_HEADER_LEN], i as u8);
            opened += 1;
        }
    }
    COUNTING.set(false);
    assert_eq!(
        ALLOCS.load(Ordering::SeqCst),
        0,
        "allocations in steady state"
    );
    assert!(opened >= 100_000);
    if portdistrict_aead::available() {
        assert!(
            grouped > 190_000,
            "the group code did the equal-length runs: {grouped}"
        );
    }
}
