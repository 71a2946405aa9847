//! The configuration the producer publishes (the interface and its peer table) under
//! the configuration seqlock, and the generation the dataplane reports applied.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{fence, Ordering};

use crate::codec::{decode_peer, encode_peer};
use crate::layout::READ_ATTEMPTS;
use crate::{Region, ShmError};

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

impl Region {
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
}
