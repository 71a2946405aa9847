//! The shared-memory region between `portdistrictd` (the producer of configuration)
//! and `portdistrict-dataplane` (its consumer), one per interface: a file (under the
//! run directory or `/dev/shm`) mapped `MAP_SHARED` by both.
//!
//! A region file is never truncated or re-initialised in place: [`Region::create`]
//! unlinks whatever was at the path and creates a fresh file exclusively, so a
//! dataplane that maps the old one keeps its own (unlinked) region. Both sides keep
//! the file open and check its size and magic before every access
//! ([`ShmError::Shrunk`], [`ShmError::Reset`]): a file someone else truncated is an
//! error, not a SIGBUS. (Only a truncation in the microseconds between that check and
//! the access could still fault; the programs of this project never truncate it.)
//!
//! ```text
//! Header (repr(C), 128 bytes): magic, ABI version, sizes, the configuration's
//!   generation (a seqlock: odd while the producer writes), the stats' generation
//!   (the dataplane's seqlock), the command ring's head and tail, the interface
//!   configuration (private key, listen port, fwmark, peer count) and the applied
//!   generation (offset 112: the configuration generation the dataplane applied last,
//!   written by the dataplane only, which the producer waits for after a write)
//! PeerEntry  x peer_capacity   (412 bytes each, under the configuration seqlock)
//! StatsEntry x peer_capacity   (80 bytes each, from an 8-aligned offset, under the
//!                               stats seqlock)
//! Command    x ring_capacity   (40 bytes each, a single-producer single-consumer ring)
//! ```
//!
//! ABI version 2 added the applied generation (version 1 had reserved bytes there).
//!
//! Readers never trust the region: every count, family, prefix length and size is
//! checked and a violation is [`ShmError::Corrupt`], never a panic; a read that raced
//! a write (generation odd or changed) is retried a bounded number of times. This is
//! the one crate besides the I/O layers that uses `unsafe` (the mapping and the raw
//! reads and writes of shared memory); each block says why it is sound.

use std::fs::{File, OpenOptions};
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// `PDSHM` + version in the first 8 bytes.
pub const MAGIC: u64 = u64::from_be_bytes(*b"PDSHM\0\0\x01");
/// The ABI version of this layout.
pub const ABI_VERSION: u32 = 2;
/// AllowedIPs per peer in the table.
pub const MAX_ALLOWED: usize = 16;
/// Most peers a region may be created for.
pub const MAX_PEERS: u32 = 65_536;
/// Commands the ring holds.
pub const RING_CAPACITY: u32 = 64;
/// Attempts of a seqlock read before giving up for now.
const READ_ATTEMPTS: usize = 1000;

/// Why the region cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// Opening, sizing or mapping the file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The region's content is not valid.
    #[error("shared-memory region is corrupt: {0}")]
    Corrupt(String),
    /// The file is smaller than the region (someone truncated it): touching the
    /// mapping beyond its end would fault, so nothing is read or written.
    #[error("the shared-memory file shrank to {size} bytes; the region needs {need}")]
    Shrunk {
        /// The file's size now.
        size: u64,
        /// The region's size.
        need: usize,
    },
    /// The header's magic changed: the file was re-initialised or overwritten in place.
    #[error("the shared-memory region was overwritten in place (magic {0:#x})")]
    Reset(u64),
    /// The producer kept writing through every attempt.
    #[error("shared-memory region kept changing while being read")]
    Busy,
    /// More peers than the region holds.
    #[error("{0} peers do not fit a region made for {1}")]
    TooManyPeers(usize, u32),
    /// A peer with more AllowedIPs than an entry holds.
    #[error("a peer has {0} AllowedIPs; the region holds {MAX_ALLOWED} per peer")]
    TooManyAllowed(usize),
    /// The command ring is full.
    #[error("the command ring is full")]
    RingFull,
}

/// The fixed header.
#[repr(C)]
pub struct Header {
    magic: u64,
    abi_version: u32,
    header_size: u32,
    peer_capacity: u32,
    peer_size: u32,
    stats_size: u32,
    ring_capacity: u32,
    config_gen: AtomicU64,
    stats_gen: AtomicU64,
    ring_head: AtomicU32,
    ring_tail: AtomicU32,
    private_key: [u8; 32],
    has_private_key: u32,
    listen_port: u32,
    fwmark: u32,
    peer_count: u32,
    stats_count: u32,
    _pad: u32,
    applied_gen: AtomicU64,
    _reserved: [u8; 8],
}

/// One AllowedIPs prefix.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AllowedEntry {
    addr: [u8; 16],
    family: u8,
    cidr: u8,
    _pad: [u8; 2],
}

/// One peer of the table.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PeerEntry {
    public_key: [u8; 32],
    preshared_key: [u8; 32],
    endpoint_family: u8,
    has_preshared_key: u8,
    endpoint_port: u16,
    endpoint_addr: [u8; 16],
    keepalive: u16,
    allowed_count: u16,
    flags: u32,
    allowed: [AllowedEntry; MAX_ALLOWED],
}

/// One peer's statistics, written back by the dataplane.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StatsEntry {
    public_key: [u8; 32],
    rx_bytes: u64,
    tx_bytes: u64,
    last_handshake: u64,
    endpoint_family: u8,
    _pad: u8,
    endpoint_port: u16,
    endpoint_addr: [u8; 16],
    _pad2: [u8; 4],
}

/// One command.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CommandEntry {
    kind: u32,
    _pad: u32,
    public_key: [u8; 32],
}

/// What the producer publishes: the interface and its peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// The private key (`None`: none set).
    pub private_key: Option<[u8; 32]>,
    /// The UDP port (0: any).
    pub listen_port: u16,
    /// The socket mark (0: none).
    pub fwmark: u32,
    /// The peers.
    pub peers: Vec<PeerConfig>,
}

/// One peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Its public key.
    pub public_key: [u8; 32],
    /// Its preshared key.
    pub preshared_key: Option<[u8; 32]>,
    /// Its endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Persistent keepalive in seconds (0: off).
    pub keepalive: u16,
    /// AllowedIPs.
    pub allowed: Vec<(IpAddr, u8)>,
}

/// One peer's statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer.
    pub public_key: [u8; 32],
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Last handshake, Unix seconds (0: never).
    pub last_handshake: u64,
    /// Current endpoint.
    pub endpoint: Option<SocketAddr>,
}

/// A command for the dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Start a handshake with this peer now.
    Handshake([u8; 32]),
}

/// Where each part lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    peers: usize,
    stats: usize,
    ring: usize,
    len: usize,
    capacity: u32,
}

impl Layout {
    fn new(capacity: u32) -> Layout {
        let peers = size_of::<Header>();
        // PeerEntry is 412 bytes: after an odd number of them the (8-aligned) stats
        // entries would start misaligned, and their volatile reads and writes would be
        // undefined behaviour. Even capacities (1024, the daemon's) are unchanged.
        let stats = (peers + capacity as usize * size_of::<PeerEntry>())
            .next_multiple_of(std::mem::align_of::<StatsEntry>());
        let ring = stats + capacity as usize * size_of::<StatsEntry>();
        let len = ring + RING_CAPACITY as usize * size_of::<CommandEntry>();
        Layout {
            peers,
            stats,
            ring,
            len,
            capacity,
        }
    }
}

/// A mapped region, and its file (kept open to check its size before every access).
pub struct Region {
    ptr: *mut u8,
    layout: Layout,
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
    fn check(&self) -> Result<(), ShmError> {
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

    fn header_ptr(&self) -> *mut Header {
        self.ptr.cast()
    }

    fn config_gen(&self) -> &AtomicU64 {
        // SAFETY: the field lies inside the mapping, which lives as long as self; a
        // reference to an atomic is sound while other processes write it atomically
        // (never a reference to the whole header, whose plain fields they write too).
        unsafe { &(*self.header_ptr()).config_gen }
    }

    fn stats_gen(&self) -> &AtomicU64 {
        // SAFETY: as in config_gen.
        unsafe { &(*self.header_ptr()).stats_gen }
    }

    fn applied_gen(&self) -> &AtomicU64 {
        // SAFETY: as in config_gen.
        unsafe { &(*self.header_ptr()).applied_gen }
    }

    fn ring_head(&self) -> &AtomicU32 {
        // SAFETY: as in config_gen.
        unsafe { &(*self.header_ptr()).ring_head }
    }

    fn ring_tail(&self) -> &AtomicU32 {
        // SAFETY: as in config_gen.
        unsafe { &(*self.header_ptr()).ring_tail }
    }

    fn peer_ptr(&self, i: usize) -> *mut PeerEntry {
        debug_assert!(i < self.layout.capacity as usize);
        // SAFETY: i < capacity, so the entry lies inside the mapping (Layout).
        unsafe { self.ptr.add(self.layout.peers).cast::<PeerEntry>().add(i) }
    }

    fn stats_ptr(&self, i: usize) -> *mut StatsEntry {
        debug_assert!(i < self.layout.capacity as usize);
        // SAFETY: i < capacity, so the entry lies inside the mapping (Layout).
        unsafe { self.ptr.add(self.layout.stats).cast::<StatsEntry>().add(i) }
    }

    fn ring_ptr(&self, i: usize) -> *mut CommandEntry {
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

    /// The configuration's generation (even when stable); changes with every write.
    pub fn config_generation(&self) -> Result<u64, ShmError> {
        self.check()?;
        Ok(self.config_gen().load(Ordering::Acquire))
    }

    /// The configuration generation the dataplane reported applied last (0: none).
    /// The dataplane writes it, so to the producer it is a claim, not a fact: any
    /// value may be found here, and only equality with a generation the producer
    /// wrote means that one was applied.
    pub fn applied_generation(&self) -> Result<u64, ShmError> {
        self.check()?;
        Ok(self.applied_gen().load(Ordering::Acquire))
    }

    /// Reports that the configuration of generation `gen` (as [`Self::read_config`]
    /// returned it) is applied (the consumer, after applying it or refusing it for
    /// good).
    pub fn set_applied_generation(&self, gen: u64) -> Result<(), ShmError> {
        self.check()?;
        self.applied_gen().store(gen, Ordering::Release);
        Ok(())
    }

    /// Publishes `cfg` (the producer; one writer per region) and returns its
    /// generation, which [`Self::applied_generation`] shows once the dataplane
    /// applied it.
    pub fn write_config(&self, cfg: &Config) -> Result<u64, ShmError> {
        if cfg.peers.len() > self.layout.capacity as usize {
            return Err(ShmError::TooManyPeers(
                cfg.peers.len(),
                self.layout.capacity,
            ));
        }
        let mut entries = Vec::with_capacity(cfg.peers.len());
        for p in &cfg.peers {
            entries.push(encode_peer(p)?);
        }
        self.check()?;
        let gen = self.config_gen();
        let g = gen.load(Ordering::Relaxed);
        let start = if g % 2 == 1 { g } else { g + 1 };
        gen.store(start, Ordering::Relaxed);
        fence(Ordering::Release);
        let h = self.header_ptr();
        // SAFETY: plain-field writes into our mapping while the generation is odd;
        // readers discard anything they copy in that state (seqlock).
        unsafe {
            std::ptr::write_volatile(
                &raw mut (*h).private_key,
                cfg.private_key.unwrap_or([0; 32]),
            );
            std::ptr::write_volatile(
                &raw mut (*h).has_private_key,
                u32::from(cfg.private_key.is_some()),
            );
            std::ptr::write_volatile(&raw mut (*h).listen_port, u32::from(cfg.listen_port));
            std::ptr::write_volatile(&raw mut (*h).fwmark, cfg.fwmark);
            std::ptr::write_volatile(&raw mut (*h).peer_count, entries.len() as u32);
        }
        for (i, e) in entries.iter().enumerate() {
            // SAFETY: i < capacity (checked); written while the generation is odd.
            unsafe { std::ptr::write_volatile(self.peer_ptr(i), *e) };
        }
        fence(Ordering::Release);
        gen.store(start + 1, Ordering::Release);
        Ok(start + 1)
    }

    /// Reads a consistent configuration and its generation (the consumer).
    pub fn read_config(&self) -> Result<(u64, Config), ShmError> {
        self.check()?;
        let gen = self.config_gen();
        let h = self.header_ptr();
        for _ in 0..READ_ATTEMPTS {
            let g1 = gen.load(Ordering::Acquire);
            if g1 % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            // SAFETY: volatile copies of plain fields of our mapping; a copy torn by a
            // concurrent write is detected by the generation check below and dropped.
            let (key, has_key, port, fwmark, count) = unsafe {
                (
                    std::ptr::read_volatile(&raw const (*h).private_key),
                    std::ptr::read_volatile(&raw const (*h).has_private_key),
                    std::ptr::read_volatile(&raw const (*h).listen_port),
                    std::ptr::read_volatile(&raw const (*h).fwmark),
                    std::ptr::read_volatile(&raw const (*h).peer_count),
                )
            };
            let n = (count as usize).min(self.layout.capacity as usize);
            let mut entries = Vec::with_capacity(n);
            for i in 0..n {
                // SAFETY: i < capacity; a volatile copy of plain data, validated below
                // and dropped if the generation moved.
                entries.push(unsafe { std::ptr::read_volatile(self.peer_ptr(i)) });
            }
            fence(Ordering::Acquire);
            if gen.load(Ordering::Relaxed) != g1 {
                continue;
            }
            if count > self.layout.capacity {
                return Err(ShmError::Corrupt(format!(
                    "peer count {count} above capacity {}",
                    self.layout.capacity
                )));
            }
            let port = u16::try_from(port)
                .map_err(|_| ShmError::Corrupt(format!("listen port {port}")))?;
            let peers = entries
                .iter()
                .map(decode_peer)
                .collect::<Result<Vec<_>, _>>()?;
            return Ok((
                g1,
                Config {
                    private_key: match has_key {
                        0 => None,
                        1 => Some(key),
                        x => return Err(ShmError::Corrupt(format!("private-key flag {x}"))),
                    },
                    listen_port: port,
                    fwmark,
                    peers,
                },
            ));
        }
        Err(ShmError::Busy)
    }

    /// Writes the dataplane's statistics back (the consumer; one writer).
    pub fn write_stats(&self, stats: &[PeerStats]) -> Result<(), ShmError> {
        self.check()?;
        let gen = self.stats_gen();
        let g = gen.load(Ordering::Relaxed) | 1;
        gen.store(g, Ordering::Relaxed);
        fence(Ordering::Release);
        let n = stats.len().min(self.layout.capacity as usize);
        for (i, s) in stats.iter().take(n).enumerate() {
            let (family, port, addr) = encode_endpoint(s.endpoint);
            let e = StatsEntry {
                public_key: s.public_key,
                rx_bytes: s.rx_bytes,
                tx_bytes: s.tx_bytes,
                last_handshake: s.last_handshake,
                endpoint_family: family,
                _pad: 0,
                endpoint_port: port,
                endpoint_addr: addr,
                _pad2: [0; 4],
            };
            // SAFETY: i < capacity; written while the stats generation is odd.
            unsafe { std::ptr::write_volatile(self.stats_ptr(i), e) };
        }
        let h = self.header_ptr();
        // SAFETY: a plain field of our mapping, written while the generation is odd.
        unsafe { std::ptr::write_volatile(&raw mut (*h).stats_count, n as u32) };
        fence(Ordering::Release);
        gen.store(g + 1, Ordering::Release);
        Ok(())
    }

    /// Reads the statistics the dataplane wrote back.
    pub fn read_stats(&self) -> Result<Vec<PeerStats>, ShmError> {
        self.check()?;
        let gen = self.stats_gen();
        let h = self.header_ptr();
        for _ in 0..READ_ATTEMPTS {
            let g1 = gen.load(Ordering::Acquire);
            if g1 % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            // SAFETY: a volatile copy of a plain field, checked against the generation.
            let count = unsafe { std::ptr::read_volatile(&raw const (*h).stats_count) };
            let n = (count as usize).min(self.layout.capacity as usize);
            let mut entries = Vec::with_capacity(n);
            for i in 0..n {
                // SAFETY: i < capacity; a volatile copy dropped if the generation moved.
                entries.push(unsafe { std::ptr::read_volatile(self.stats_ptr(i)) });
            }
            fence(Ordering::Acquire);
            if gen.load(Ordering::Relaxed) != g1 {
                continue;
            }
            if count > self.layout.capacity {
                return Err(ShmError::Corrupt(format!("stats count {count}")));
            }
            return entries
                .iter()
                .map(|e| {
                    Ok(PeerStats {
                        public_key: e.public_key,
                        rx_bytes: e.rx_bytes,
                        tx_bytes: e.tx_bytes,
                        last_handshake: e.last_handshake,
                        endpoint: decode_endpoint(
                            e.endpoint_family,
                            e.endpoint_port,
                            e.endpoint_addr,
                        )?,
                    })
                })
                .collect();
        }
        Err(ShmError::Busy)
    }

    /// Queues a command (the producer).
    pub fn push_command(&self, c: Command) -> Result<(), ShmError> {
        self.check()?;
        let head = self.ring_head().load(Ordering::Relaxed);
        let tail = self.ring_tail().load(Ordering::Acquire);
        if head.wrapping_sub(tail) >= RING_CAPACITY {
            return Err(ShmError::RingFull);
        }
        let Command::Handshake(key) = c;
        let e = CommandEntry {
            kind: 1,
            _pad: 0,
            public_key: key,
        };
        // SAFETY: the slot is owned by the producer until head moves past it.
        unsafe { std::ptr::write_volatile(self.ring_ptr((head % RING_CAPACITY) as usize), e) };
        self.ring_head()
            .store(head.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// Takes the next command (the consumer). A corrupt entry is skipped and reported.
    pub fn pop_command(&self) -> Result<Option<Command>, ShmError> {
        self.check()?;
        let tail = self.ring_tail().load(Ordering::Relaxed);
        let head = self.ring_head().load(Ordering::Acquire);
        if head == tail {
            return Ok(None);
        }
        if head.wrapping_sub(tail) > RING_CAPACITY {
            // A producer that wrote nonsense: drop everything queued.
            self.ring_tail().store(head, Ordering::Release);
            return Err(ShmError::Corrupt(format!("ring head {head} tail {tail}")));
        }
        // SAFETY: the slot between tail and head was published by the producer
        // (Acquire on head) and is ours until tail moves past it.
        let e = unsafe { std::ptr::read_volatile(self.ring_ptr((tail % RING_CAPACITY) as usize)) };
        self.ring_tail()
            .store(tail.wrapping_add(1), Ordering::Release);
        match e.kind {
            1 => Ok(Some(Command::Handshake(e.public_key))),
            k => Err(ShmError::Corrupt(format!("command kind {k}"))),
        }
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

fn encode_endpoint(e: Option<SocketAddr>) -> (u8, u16, [u8; 16]) {
    match e {
        None => (0, 0, [0; 16]),
        Some(SocketAddr::V4(a)) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&a.ip().octets());
            (4, a.port(), b)
        }
        Some(SocketAddr::V6(a)) => (6, a.port(), a.ip().octets()),
    }
}

fn decode_endpoint(family: u8, port: u16, addr: [u8; 16]) -> Result<Option<SocketAddr>, ShmError> {
    match family {
        0 => Ok(None),
        4 => Ok(Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
            port,
        ))),
        6 => Ok(Some(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::from(addr)),
            port,
        ))),
        f => Err(ShmError::Corrupt(format!("endpoint family {f}"))),
    }
}

fn encode_peer(p: &PeerConfig) -> Result<PeerEntry, ShmError> {
    if p.allowed.len() > MAX_ALLOWED {
        return Err(ShmError::TooManyAllowed(p.allowed.len()));
    }
    let (family, port, addr) = encode_endpoint(p.endpoint);
    let mut allowed = [AllowedEntry {
        addr: [0; 16],
        family: 0,
        cidr: 0,
        _pad: [0; 2],
    }; MAX_ALLOWED];
    for (slot, (ip, cidr)) in allowed.iter_mut().zip(&p.allowed) {
        *slot = match ip {
            IpAddr::V4(a) => {
                let mut b = [0; 16];
                b[..4].copy_from_slice(&a.octets());
                AllowedEntry {
                    addr: b,
                    family: 4,
                    cidr: (*cidr).min(32),
                    _pad: [0; 2],
                }
            }
            IpAddr::V6(a) => AllowedEntry {
                addr: a.octets(),
                family: 6,
                cidr: (*cidr).min(128),
                _pad: [0; 2],
            },
        };
    }
    Ok(PeerEntry {
        public_key: p.public_key,
        preshared_key: p.preshared_key.unwrap_or([0; 32]),
        endpoint_family: family,
        has_preshared_key: u8::from(p.preshared_key.is_some()),
        endpoint_port: port,
        endpoint_addr: addr,
        keepalive: p.keepalive,
        allowed_count: p.allowed.len() as u16,
        flags: 0,
        allowed,
    })
}

fn decode_peer(e: &PeerEntry) -> Result<PeerConfig, ShmError> {
    let n = usize::from(e.allowed_count);
    if n > MAX_ALLOWED {
        return Err(ShmError::Corrupt(format!("{n} AllowedIPs in one entry")));
    }
    let mut allowed = Vec::with_capacity(n);
    for a in &e.allowed[..n] {
        let ip = match (a.family, a.cidr) {
            (4, c) if c <= 32 => {
                IpAddr::V4(Ipv4Addr::new(a.addr[0], a.addr[1], a.addr[2], a.addr[3]))
            }
            (6, c) if c <= 128 => IpAddr::V6(Ipv6Addr::from(a.addr)),
            (f, c) => return Err(ShmError::Corrupt(format!("AllowedIP family {f} /{c}"))),
        };
        allowed.push((ip, a.cidr));
    }
    Ok(PeerConfig {
        public_key: e.public_key,
        preshared_key: match e.has_preshared_key {
            0 => None,
            1 => Some(e.preshared_key),
            x => return Err(ShmError::Corrupt(format!("preshared-key flag {x}"))),
        },
        endpoint: decode_endpoint(e.endpoint_family, e.endpoint_port, e.endpoint_addr)?,
        keepalive: e.keepalive,
        allowed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;
    use std::path::PathBuf;

    struct TempFile(PathBuf);
    impl TempFile {
        fn new(tag: &str) -> TempFile {
            TempFile(std::env::temp_dir().join(format!("pd-shm-{tag}-{}", std::process::id())))
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn peer(k: u8, n_allowed: usize) -> PeerConfig {
        PeerConfig {
            public_key: [k; 32],
            preshared_key: k.is_multiple_of(2).then_some([k ^ 0xff; 32]),
            endpoint: Some(if k.is_multiple_of(2) {
                SocketAddr::from(([192, 0, 2, k], 51820))
            } else {
                "[2001:db8::1]:4500".parse().unwrap()
            }),
            keepalive: 25,
            allowed: (0..n_allowed)
                .map(|i| {
                    (
                        IpAddr::V6(Ipv6Addr::new(0xfd00, u16::from(k), i as u16, 0, 0, 0, 0, 0)),
                        64,
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn the_layout_is_the_documented_abi() {
        assert_eq!(size_of::<Header>(), 128);
        assert_eq!(size_of::<AllowedEntry>(), 20);
        assert_eq!(size_of::<PeerEntry>(), 412);
        assert_eq!(size_of::<StatsEntry>(), 80);
        assert_eq!(size_of::<CommandEntry>(), 40);
        assert_eq!(offset_of!(Header, config_gen), 32);
        assert_eq!(offset_of!(Header, stats_gen), 40);
        assert_eq!(offset_of!(Header, ring_head), 48);
        assert_eq!(offset_of!(Header, private_key), 56);
        assert_eq!(offset_of!(Header, applied_gen), 112);
        assert_eq!(offset_of!(PeerEntry, allowed), 92);
        let l = Layout::new(10);
        assert_eq!(l.len, 128 + 10 * 412 + 10 * 80 + 64 * 40);
    }

    #[test]
    fn every_entry_is_aligned_for_every_capacity() {
        for capacity in [1, 2, 3, 7, 1024, MAX_PEERS - 1, MAX_PEERS] {
            let l = Layout::new(capacity);
            assert_eq!(l.peers % std::mem::align_of::<PeerEntry>(), 0, "{capacity}");
            assert_eq!(
                l.stats % std::mem::align_of::<StatsEntry>(),
                0,
                "{capacity}"
            );
            assert_eq!(
                l.ring % std::mem::align_of::<CommandEntry>(),
                0,
                "{capacity}"
            );
        }
        assert_eq!(Layout::new(1).stats, 128 + 412 + 4);
    }

    #[test]
    fn a_configuration_round_trips_between_two_mappings() {
        let f = TempFile::new("roundtrip");
        let w = Region::create(&f.0, 8).unwrap();
        let r = Region::open(&f.0).unwrap();
        assert_eq!(r.read_config().unwrap(), (0, Config::default()));
        let cfg = Config {
            private_key: Some([9; 32]),
            listen_port: 51820,
            fwmark: 0xca6c,
            peers: vec![peer(1, 1), peer(2, MAX_ALLOWED)],
        };
        w.write_config(&cfg).unwrap();
        let (g, got) = r.read_config().unwrap();
        assert_eq!(got, cfg);
        assert!(g.is_multiple_of(2));
        assert!(g > 0);
        let too_many = Config {
            peers: (0..9).map(|k| peer(k, 1)).collect(),
            ..Config::default()
        };
        assert!(matches!(
            w.write_config(&too_many),
            Err(ShmError::TooManyPeers(9, 8))
        ));
        assert!(matches!(
            w.write_config(&Config {
                peers: vec![peer(1, MAX_ALLOWED + 1)],
                ..Config::default()
            }),
            Err(ShmError::TooManyAllowed(17))
        ));
        assert_eq!(
            r.read_config().unwrap().1,
            cfg,
            "a refused write changes nothing"
        );
    }

    #[test]
    fn readers_never_see_a_half_written_table() {
        let f = TempFile::new("torn");
        let w = Region::create(&f.0, 64).unwrap();
        let r = Region::open(&f.0).unwrap();
        let a = Config {
            listen_port: 1,
            peers: (0..64).map(|k| peer(k, 4)).collect(),
            ..Config::default()
        };
        let b = Config {
            listen_port: 2,
            peers: (100..110).map(|k| peer(k, 16)).collect(),
            ..Config::default()
        };
        w.write_config(&a).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..2000u32 {
                    w.write_config(if i.is_multiple_of(2) { &b } else { &a })
                        .unwrap();
                }
                stop.store(true, Ordering::Relaxed);
            });
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) || reads < 100 {
                match r.read_config() {
                    Ok((_, c)) => {
                        assert!(
                            c == a || c == b,
                            "a torn read: port {} with {} peers",
                            c.listen_port,
                            c.peers.len()
                        );
                        reads += 1;
                    }
                    Err(ShmError::Busy) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        });
    }

    #[test]
    fn a_corrupt_region_is_an_error_not_a_crash() {
        let f = TempFile::new("corrupt");
        {
            let w = Region::create(&f.0, 4).unwrap();
            w.write_config(&Config {
                peers: vec![peer(1, 2)],
                ..Config::default()
            })
            .unwrap();
        }
        // Garbage in an entry: a family that does not exist.
        let mut bytes = std::fs::read(&f.0).unwrap();
        let entry = size_of::<Header>();
        bytes[entry + offset_of!(PeerEntry, endpoint_family)] = 9;
        std::fs::write(&f.0, &bytes).unwrap();
        let r = Region::open(&f.0).unwrap();
        let e = r.read_config().unwrap_err();
        assert!(e.to_string().contains("endpoint family 9"), "{e}");
        drop(r);
        // A wrong magic, a wrong size, a short file: refused at open.
        let mut bad = bytes.clone();
        bad[0] ^= 0xff;
        std::fs::write(&f.0, &bad).unwrap();
        assert!(Region::open(&f.0)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        std::fs::write(&f.0, &bytes[..bytes.len() - 1]).unwrap();
        assert!(Region::open(&f.0)
            .unwrap_err()
            .to_string()
            .contains("bytes"));
        std::fs::write(&f.0, &bytes[..10]).unwrap();
        assert!(Region::open(&f.0)
            .unwrap_err()
            .to_string()
            .contains("header"));
        // Random files never panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in [128usize, 4096, Layout::new(1).len, Layout::new(4).len] {
            let mut v = vec![0u8; len];
            for b in &mut v {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            v[..8].copy_from_slice(&MAGIC.to_ne_bytes());
            std::fs::write(&f.0, &v).unwrap();
            if let Ok(r) = Region::open(&f.0) {
                let _ = r.read_config();
                let _ = r.read_stats();
                let _ = r.pop_command();
            }
        }
    }

    /// Set in the child process that [`in_child`] starts.
    const CHILD: &str = "PD_SHM_TEST_CHILD";

    /// Whether this is the child: in the parent, runs the test `name` again in a child
    /// process of this test binary and asserts it passed, so a fault (SIGBUS) fails the
    /// test instead of killing the whole harness.
    fn in_child(name: &str) -> bool {
        use std::os::unix::process::ExitStatusExt as _;
        if std::env::var_os(CHILD).is_some() {
            return true;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "the child died ({:?}, signal {:?}; 7 is SIGBUS):\n{log}",
            out.status,
            out.status.signal()
        );
        assert!(log.contains("1 passed"), "the child ran no test:\n{log}");
        false
    }

    #[test]
    fn a_region_truncated_under_its_reader_is_an_error_not_a_sigbus() {
        if !in_child("tests::a_region_truncated_under_its_reader_is_an_error_not_a_sigbus") {
            return;
        }
        let f = TempFile::new("shrunk");
        let control = Region::create(&f.0, 4).unwrap();
        let cfg = Config {
            listen_port: 51820,
            peers: vec![peer(1, 2)],
            ..Config::default()
        };
        control.write_config(&cfg).unwrap();
        let dataplane = Region::open(&f.0).unwrap();
        assert_eq!(dataplane.read_config().unwrap().1, cfg);
        // What the daemon used to do when it re-created a region: truncate the file
        // in place. Every access after it is refused, none faults.
        let file = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&f.0)
            .unwrap();
        let shrunk = |r: Result<(), ShmError>, what: &str| match r {
            Err(ShmError::Shrunk { size: 0, need }) => assert_eq!(need, Layout::new(4).len),
            other => panic!("{what}: {other:?}"),
        };
        shrunk(dataplane.config_generation().map(drop), "generation");
        shrunk(dataplane.read_config().map(drop), "read_config");
        shrunk(dataplane.write_stats(&[]), "write_stats");
        shrunk(dataplane.read_stats().map(drop), "read_stats");
        shrunk(dataplane.pop_command().map(drop), "pop_command");
        shrunk(
            control.push_command(Command::Handshake([1; 32])),
            "push_command",
        );
        shrunk(control.write_config(&cfg).map(drop), "write_config");
        shrunk(control.applied_generation().map(drop), "applied_generation");
        shrunk(
            dataplane.set_applied_generation(2),
            "set_applied_generation",
        );
        // Shorter than the region but not empty: still refused.
        file.set_len(4096).unwrap();
        assert!(matches!(
            dataplane.read_config(),
            Err(ShmError::Shrunk { size: 4096, .. })
        ));
        // Grown back to its size, zeros in place of the header: a reset region, never
        // a configuration of zeros (which would remove every peer and the key).
        file.set_len(Layout::new(4).len as u64).unwrap();
        assert!(matches!(dataplane.read_config(), Err(ShmError::Reset(0))));
        assert!(matches!(
            dataplane.config_generation(),
            Err(ShmError::Reset(0))
        ));
    }

    #[test]
    fn creating_a_region_again_leaves_the_old_one_to_its_reader() {
        let f = TempFile::new("recreate");
        let old = Region::create(&f.0, 4).unwrap();
        let cfg = Config {
            private_key: Some([3; 32]),
            listen_port: 51820,
            peers: vec![peer(1, 2)],
            ..Config::default()
        };
        old.write_config(&cfg).unwrap();
        let dataplane = Region::open(&f.0).unwrap();
        let (g, _) = dataplane.read_config().unwrap();
        // A new daemon creates the region at the same path, for a new dataplane.
        let new = Region::create(&f.0, 8).unwrap();
        new.write_config(&Config::default()).unwrap();
        assert_eq!(
            dataplane.read_config().unwrap(),
            (g, cfg),
            "the running dataplane keeps its own region"
        );
        assert_eq!(dataplane.config_generation().unwrap(), g);
        let other = Region::open(&f.0).unwrap();
        assert_eq!(other.capacity(), 8, "the path names the new region");
        assert_eq!(other.read_config().unwrap().1, Config::default());
        let mode = std::fs::metadata(&f.0).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn stats_and_commands_flow_back_and_forth() {
        let f = TempFile::new("stats");
        let control = Region::create(&f.0, 4).unwrap();
        let dataplane = Region::open(&f.0).unwrap();
        let s = vec![PeerStats {
            public_key: [1; 32],
            rx_bytes: 10,
            tx_bytes: 20,
            last_handshake: 1_800_000_000,
            endpoint: Some("192.0.2.1:51820".parse().unwrap()),
        }];
        dataplane.write_stats(&s).unwrap();
        assert_eq!(control.read_stats().unwrap(), s);
        for k in 0..RING_CAPACITY {
            control
                .push_command(Command::Handshake([k as u8; 32]))
                .unwrap();
        }
        assert!(matches!(
            control.push_command(Command::Handshake([0; 32])),
            Err(ShmError::RingFull)
        ));
        for k in 0..RING_CAPACITY {
            assert_eq!(
                dataplane.pop_command().unwrap(),
                Some(Command::Handshake([k as u8; 32]))
            );
        }
        assert_eq!(dataplane.pop_command().unwrap(), None);
        // Wraps around.
        control.push_command(Command::Handshake([7; 32])).unwrap();
        assert_eq!(
            dataplane.pop_command().unwrap(),
            Some(Command::Handshake([7; 32]))
        );
    }

    #[test]
    fn the_applied_generation_is_reported_raw_whatever_it_holds() {
        let f = TempFile::new("applied");
        let w = Region::create(&f.0, 2).unwrap();
        let r = Region::open(&f.0).unwrap();
        assert_eq!(w.applied_generation().unwrap(), 0, "nothing applied yet");
        let g = w.write_config(&Config::default()).unwrap();
        assert_eq!(r.read_config().unwrap().0, g);
        r.set_applied_generation(g).unwrap();
        assert_eq!(w.applied_generation().unwrap(), g);
        // Whatever another process left in the field (odd, ahead of the
        // configuration, all ones, random bytes): the region still opens, reads and
        // reports it as it is, and the configuration is untouched.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut bogus = vec![1, g + 1, g + 2, u64::MAX, u64::MAX - 1];
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bogus.push(x);
        }
        drop((w, r));
        for v in bogus {
            let mut bytes = std::fs::read(&f.0).unwrap();
            let at = offset_of!(Header, applied_gen);
            bytes[at..at + 8].copy_from_slice(&v.to_ne_bytes());
            std::fs::write(&f.0, &bytes).unwrap();
            let r = Region::open(&f.0).unwrap();
            assert_eq!(r.applied_generation().unwrap(), v);
            assert_eq!(r.read_config().unwrap(), (g, Config::default()));
        }
    }
}
