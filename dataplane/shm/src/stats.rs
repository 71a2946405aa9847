//! The peers' statistics the dataplane writes back, under the stats seqlock.

use std::net::SocketAddr;
use std::sync::atomic::{fence, Ordering};

use crate::codec::{decode_endpoint, encode_endpoint};
use crate::layout::{StatsEntry, READ_ATTEMPTS};
use crate::{Region, ShmError};

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
    /// Where the latest authenticated handshake message (initiation or response)
    /// from the peer came from, and when: with the endpoint pinned to a relay, this
    /// tells that a probe to a direct address was answered.
    pub handshake_source: Option<HandshakeSource>,
}

/// The source of an authenticated handshake message, and when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeSource {
    /// The peer's address the message came from.
    pub addr: SocketAddr,
    /// When it arrived, milliseconds since the Unix epoch.
    pub unix_millis: u64,
}

impl Region {
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
            let (hs_family, hs_port, hs_addr) = encode_endpoint(s.handshake_source.map(|h| h.addr));
            let e = StatsEntry {
                public_key: s.public_key,
                rx_bytes: s.rx_bytes,
                tx_bytes: s.tx_bytes,
                last_handshake: s.last_handshake,
                endpoint_family: family,
                _pad: 0,
                endpoint_port: port,
                endpoint_addr: addr,
                handshake_source_family: hs_family,
                _pad2: 0,
                handshake_source_port: hs_port,
                handshake_source_addr: hs_addr,
                handshake_source_ms: s.handshake_source.map_or(0, |h| h.unix_millis),
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
            return entries.iter().map(decode_stats).collect();
        }
        Err(ShmError::Busy)
    }
}

/// One entry read back, every field checked.
fn decode_stats(e: &StatsEntry) -> Result<PeerStats, ShmError> {
    let handshake_source = decode_endpoint(
        e.handshake_source_family,
        e.handshake_source_port,
        e.handshake_source_addr,
    )?
    .map(|addr| HandshakeSource {
        addr,
        unix_millis: e.handshake_source_ms,
    });
    Ok(PeerStats {
        public_key: e.public_key,
        rx_bytes: e.rx_bytes,
        tx_bytes: e.tx_bytes,
        last_handshake: e.last_handshake,
        endpoint: decode_endpoint(e.endpoint_family, e.endpoint_port, e.endpoint_addr)?,
        handshake_source,
    })
}
