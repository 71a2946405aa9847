//! The mapping: creating, opening and validating a region file, the checks before
//! every access (shrunk, reset), and raw access to the header and the entries.

use std::fs::{File, OpenOptions};
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::layout::{
    CommandEntry, Header, Layout, PeerEntry, StatsEntry, ABI_VERSION, MAGIC, MAX_PEERS,
    RING_CAPACITY,
};
use crate::ShmError;

/// A mapped region, and its file (kept open to check its size before every access).
pub struct Region {
    ptr: *mut u8,
    pub(crate) layout: Layout,
    file: File,
    path: PathBuf,
}

// SAFETY: the region is plain shared memory; every access goes through atomics or
// seqlock-guarded volatile copies, so handing it to another thread is as sound as
// sharing it with another process.
unsafe impl Send for Region {}
// SAFETY: as for Send: no method relies on exclusive access to the mapping.
unsafe impl Sync for Region {}

fn io_err(what: &'static str, path: &Path, source: std::io::Error) -> ShmError {
    ShmError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

fn map(file: &File, len: usize, path: &Path) -> Result<*mut u8, ShmError> {
    // SAFETY: mmap of `len` bytes of a file we hold open, shared, read-write; the
    // result is checked against MAP_FAILED before use. The mapping outlives the file
    // descriptor (closing it does not unmap).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io_err("mapping", path, std::io::Error::last_os_error()));
    }
    Ok(p.cast())
}

impl Region {
    /// Creates a fresh region at `path` for `capacity` peers (mode 0600). Whatever
    /// was at `path` is unlinked, never truncated: a process that maps it keeps its own
    /// region, untouched.
    pub fn create(path: &Path, capacity: u32) -> Result<Region, ShmError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        if capacity == 0 || capacity > MAX_PEERS {
            return Err(ShmError::TooManyPeers(capacity as usize, MAX_PEERS));
        }
        let layout = Layout::new(capacity);
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("replacing", path, e)),
        }
        // Exclusive: if another process put a file here since, it is not ours to size.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io_err("creating", path, e))?;
        file.set_len(layout.len as u64)
            .map_err(|e| io_err("sizing", path, e))?;
        let ptr = map(&file, layout.len, path)?;
        let r = Region {
            ptr,
            layout,
            file,
            path: path.to_owned(),
        };
        let h = Header {
            magic: MAGIC,
            abi_version: ABI_VERSION,
            header_size: size_of::<Header>() as u32,
            peer_capacity: capacity,
            peer_size: size_of::<PeerEntry>() as u32,
            stats_size: size_of::<StatsEntry>() as u32,
            ring_capacity: RING_CAPACITY,
            config_gen: AtomicU64::new(0),
            stats_gen: AtomicU64::new(0),
            ring_head: AtomicU32::new(0),
            ring_tail: AtomicU32::new(0),
            private_key: [0; 32],
            has_private_key: 0,
            listen_port: 0,
            fwmark: 0,
            peer_count: 0,
            stats_count: 0,
            _pad: 0,
            applied_gen: AtomicU64::new(0),
            _reserved: [0; 8],
        };
        // SAFETY: the mapping is at least size_of::<Header>() bytes, page-aligned, and
        // nobody else has it yet (the file was created exclusively just now; a consumer
        // validates the magic, written here).
        unsafe { std::ptr::write_volatile(r.ptr.cast::<Header>(), h) };
        Ok(r)
    }

    /// Opens and validates the region at `path`.
    pub fn open(path: &Path) -> Result<Region, ShmError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_err("opening", path, e))?;
        let size = file
            .metadata()
            .map_err(|e| io_err("reading the size of", path, e))?
            .len() as usize;
        if size < size_of::<Header>() {
            return Err(ShmError::Corrupt(format!(
                "{size} bytes, smaller than its header"
            )));
        }
        let ptr = map(&file, size, path)?;
        let h = ptr.cast::<Header>();
        // SAFETY: the mapping holds at least a header (checked above) and is
        // page-aligned; these fields are plain integers the producer writes once,
        // before the file is handed over, and every value is checked before use. They
        // are read one by one through raw pointers: no reference to memory that
        // another process writes.
        let (magic, abi_version, header_size, peer_capacity, peer_size, stats_size, ring) = unsafe {
            (
                std::ptr::read_volatile(&raw const (*h).magic),
                std::ptr::read_volatile(&raw const (*h).abi_version),
                std::ptr::read_volatile(&raw const (*h).header_size),
                std::ptr::read_volatile(&raw const (*h).peer_capacity),
                std::ptr::read_volatile(&raw const (*h).peer_size),
                std::ptr::read_volatile(&raw const (*h).stats_size),
                std::ptr::read_volatile(&raw const (*h).ring_capacity),
            )
        };
        let fail = |why: String| {
            // SAFETY: unmapping what was mapped above, once, before returning the error.
            unsafe { libc::munmap(ptr.cast(), size) };
            Err(ShmError::Corrupt(why))
        };
        if magic != MAGIC {
            return fail(format!("magic {magic:#x}, expected {MAGIC:#x}"));
        }
        if abi_version != ABI_VERSION {
            return fail(format!(
                "ABI version {abi_version}, this dataplane speaks {ABI_VERSION}"
            ));
        }
        if header_size as usize != size_of::<Header>()
            || peer_size as usize != size_of::<PeerEntry>()
            || stats_size as usize != size_of::<StatsEntry>()
            || ring != RING_CAPACITY
        {
            return fail("entry sizes differ from this ABI".to_owned());
        }
        if peer_capacity == 0 || peer_capacity > MAX_PEERS {
            return fail(format!("peer capacity {peer_capacity}"));
        }
        let layout = Layout::new(peer_capacity);
        if layout.len != size {
            return fail(format!("{size} bytes, its header describes {}", layout.len));
        }
        Ok(Region {
            ptr,
            layout,
            file,
            path: path.to_owned(),
        })
    }

    /// Checks, before an access, that the file still covers the whole mapping (a
    /// mapping touched beyond the end of its file faults with SIGBUS) and that it was
    /// not re-initialised in place.
    pub(crate) fn check(&self) -> Result<(), ShmError> {
        let size = self
            .file
            .metadata()
            .map_err(|e| io_err("checking the size of", &self.path, e))?
            .len();
        if size < self.layout.len as u64 {
            return Err(ShmError::Shrunk {
                size,
                need: self.layout.len,
            });
        }
        // SAFETY: the file covers the header (checked just above); the magic is a
        // plain integer, read through a raw pointer.
        let magic = unsafe { std::ptr::read_volatile(&raw const (*self.header_ptr()).magic) };
        if magic != MAGIC {
            return Err(ShmError::Reset(magic));
        }
        Ok(())
    }

    pub(crate) fn header_ptr(&self) -> *mut Header {
        self.ptr.cast()
    }

    pub(crate) fn config_gen(&self) -> &AtomicU64 {
        // SAFETY: the field lies inside the mapping, which lives as long as self; a
        // reference to an atomic is sound while other processes write it atomically
        // (never a reference to the whole header, whose plain fields they write too).
        unsafe { &(*self.header_ptr()).config_gen }
    }

    pub(crate) fn stats_gen(&self) -> &AtomicU64 {
        // SAFETY: as in config_gen.
        unsafe { &(*self.header_ptr()).stats_gen }
    }

    pub(crate) fn applied_gen(&self) -> &AtomicU64 {
        // SAFETY: as in config_gen.
        unsafe { &(*self.header_ptr()).applied_gen }
    }

    pub(crate) fn ring_head(&self) -> &AtomicU32 {
        // SAFETY: as in config_gen.
        unsafe { &(*self.header_ptr()).ring_head }
    }

    pub(crate) fn ring_tail(&self) -> &AtomicU32 {
        // SAFETY: as in config_gen.
        unsafe { &(*self.header_ptr()).ring_tail }
    }

    pub(crate) fn peer_ptr(&self, i: usize) -> *mut PeerEntry {
        debug_assert!(i < self.layout.capacity as usize);
        // SAFETY: i < capacity, so the entry lies inside the mapping (Layout).
        unsafe { self.ptr.add(self.layout.peers).cast::<PeerEntry>().add(i) }
    }

    pub(crate) fn stats_ptr(&self, i: usize) -> *mut StatsEntry {
        debug_assert!(i < self.layout.capacity as usize);
        // SAFETY: i < capacity, so the entry lies inside the mapping (Layout).
        unsafe { self.ptr.add(self.layout.stats).cast::<StatsEntry>().add(i) }
    }

    pub(crate) fn ring_ptr(&self, i: usize) -> *mut CommandEntry {
        debug_assert!(i < RING_CAPACITY as usize);
        // SAFETY: i < RING_CAPACITY, so the entry lies inside the mapping (Layout).
        unsafe { self.ptr.add(self.layout.ring).cast::<CommandEntry>().add(i) }
    }

    /// The peers this region holds at most.
    pub fn capacity(&self) -> u32 {
        self.layout.capacity
    }

    /// The file the region was created or opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsFd for Region {
    /// The region's file (a process that closes every descriptor it does not know,
    /// as a daemon does, must keep this one: the size checks use it).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("capacity", &self.layout.capacity)
            .field("len", &self.layout.len)
            .finish()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what was mapped, once.
        unsafe { libc::munmap(self.ptr.cast(), self.layout.len) };
    }
}
