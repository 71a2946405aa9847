//! Memory the kernel reads or writes behind Rust's back: anonymous mappings holding
//! the TUN read buffers and the provided-buffer rings of the UDP sockets.
//!
//! No reference to a whole region is ever made while operations are in flight: the
//! kernel may be writing into one buffer while the caller looks at another, so only
//! the completed buffer is borrowed, through [`Region::slice_mut`].

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

use super::super::error::{cvt, IoError};

/// A page-aligned anonymous private mapping of `len` bytes, unmapped on drop.
#[derive(Debug)]
pub(super) struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

impl Region {
    /// Maps `len` zeroed bytes (`len > 0`).
    pub(super) fn new(len: usize, what: &'static str) -> Result<Region, IoError> {
        // SAFETY: an anonymous private mapping at an address the kernel chooses; no
        // existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(IoError::syscall(what, io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| IoError::syscall(what, io::Error::from_raw_os_error(libc::ENOMEM)))?;
        Ok(Region { ptr, len })
    }

    /// The start of the mapping.
    pub(super) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// `len` bytes at `offset`, borrowed mutably.
    ///
    /// # Safety
    ///
    /// The range must lie inside the region, and no operation the kernel may still
    /// complete may target it while the slice lives (its read has completed and it has
    /// not been handed back to the kernel).
    pub(super) unsafe fn slice_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        debug_assert!(offset + len <= self.len);
        // SAFETY: in bounds and not shared with the kernel, per this function's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset), len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `new`, unmapped once.
        let ret = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        if let Err(e) = cvt(ret) {
            tracing::warn!("munmap of an io_uring buffer region failed: {e}");
        }
    }
}

/// A provided-buffer ring (`IORING_REGISTER_PBUF_RING`): `count` buffers of `size`
/// bytes the kernel picks from for multishot receives, returned with [`BufRing::recycle`].
#[derive(Debug)]
pub(super) struct BufRing {
    /// `count` ring entries of 16 bytes; the tail overlaps entry 0's reserved field.
    ring: Region,
    bufs: Region,
    size: usize,
    count: u16,
    /// Our copy of the tail (the kernel only reads it).
    tail: u16,
}

impl BufRing {
    /// Maps the ring and `count` (a power of two, at most 32768) buffers of `size`
    /// bytes, every buffer in the ring.
    pub(super) fn new(count: u16, size: usize) -> Result<BufRing, IoError> {
        let ring_len = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        let mut ring = BufRing {
            ring: Region::new(ring_len, "mmap(io_uring buffer ring)")?,
            bufs: Region::new(usize::from(count) * size, "mmap(io_uring UDP buffers)")?,
            size,
            count,
            tail: 0,
        };
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// The ring's address, for registration.
    pub(super) fn ring_addr(&self) -> u64 {
        self.ring.as_ptr() as u64
    }

    /// Number of entries.
    pub(super) fn count(&self) -> u16 {
        self.count
    }

    /// Buffer `bid`, which the kernel has filled and handed to us in a completion.
    ///
    /// # Safety
    ///
    /// `bid` must have come from a completion of this ring's group and not have been
    /// recycled since; the slice must be gone before [`BufRing::recycle`] of `bid`.
    pub(super) unsafe fn buffer(&mut self, bid: u16) -> Option<&mut [u8]> {
        if bid >= self.count {
            return None;
        }
        // SAFETY: in bounds (checked); owned by us until recycled, per the contract.
        Some(unsafe { self.bufs.slice_mut(usize::from(bid) * self.size, self.size) })
    }

    /// Hands buffer `bid` back to the kernel (visible after [`BufRing::publish`]).
    pub(super) fn recycle(&mut self, bid: u16) {
        if bid < self.count {
            self.push(bid);
        }
    }

    fn push(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.count - 1));
        let addr = self.bufs.as_ptr() as u64 + (usize::from(bid) * self.size) as u64;
        let entries = self.ring.as_ptr().cast::<BufRingEntry>();
        // SAFETY: `index < count` entries fit in the ring mapping; the kernel does not
        // read entries between the published tail and ours. The setters leave the
        // reserved field (entry 0's is the shared tail) alone.
        let entry = unsafe { &mut *entries.add(index) };
        entry.set_addr(addr);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the recycled buffers visible to the kernel (one release store).
    pub(super) fn publish(&mut self) {
        let base = self.ring.as_ptr().cast::<BufRingEntry>();
        // SAFETY: the ring mapping starts with entry 0, whose reserved field is the
        // 2-byte-aligned tail the kernel reads atomically; we are its only writer.
        let tail = unsafe { AtomicU16::from_ptr(BufRingEntry::tail(base).cast_mut()) };
        tail.store(self.tail, Ordering::Release);
    }
}
