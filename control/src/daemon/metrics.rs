//! `portdistrictd --metrics-listen ADDR:PORT`: what the cycles did, for Prometheus.
//!
//! The cycle records its results in [`CycleMetrics`] (atomics: the endpoint's threads
//! read them without a lock); a scrape renders them, and asks the dataplane client
//! which tunnels had a handshake recently (the shared-memory region's stats, or UAPI
//! for a dataplane the daemon did not start) — the only work a scrape causes.

use super::Live;
use portdistrict_metrics::{Exposition, Kind, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A tunnel is up while its last handshake is younger than this (WireGuard's
/// Reject-After-Time: a session older than that carries nothing).
const UP_WITHIN: Duration = Duration::from_secs(180);

/// What the cycles record.
#[derive(Debug, Default)]
pub(super) struct CycleMetrics {
    /// Cycles that completed.
    pub(super) ok: AtomicU64,
    /// Cycles that failed (refresh or connect).
    pub(super) failed: AtomicU64,
    /// When the last cycle ended, Unix seconds (0: none yet).
    pub(super) last_cycle: AtomicU64,
    /// When the last cycle that completed ended, Unix seconds (0: none yet).
    pub(super) last_ok: AtomicU64,
    /// Trusted peers at the last refresh.
    pub(super) trusted: AtomicU64,
    /// Verified peer devices at the last refresh.
    pub(super) verified: AtomicU64,
    /// Peer devices connected (WireGuard peers of the tunnel) after the last cycle.
    pub(super) configured: AtomicU64,
    /// Records published (each one DNS update that succeeded).
    pub(super) published: AtomicU64,
    /// Publications that failed.
    pub(super) publish_failed: AtomicU64,
}

impl CycleMetrics {
    /// Records the end of a cycle at `now` (Unix seconds).
    pub(super) fn cycle_done(&self, ok: bool, now: u64) {
        let (count, at) = if ok {
            (&self.ok, Some(&self.last_ok))
        } else {
            (&self.failed, None)
        };
        count.fetch_add(1, Ordering::Relaxed);
        self.last_cycle.store(now, Ordering::Relaxed);
        if let Some(at) = at {
            at.store(now, Ordering::Relaxed);
        }
    }
}

/// What a scrape learns from the dataplane: tunnels with a recent handshake.
fn tunnels_up(live: &Mutex<Live>, now: Duration) -> Option<u64> {
    let mut l = Live::lock(live);
    let dp = l.dataplane.as_mut()?;
    let peers = dp.peers().ok()?;
    let up = peers
        .values()
        .filter(|p| {
            p.last_handshake
                .is_some_and(|t| now.saturating_sub(t) < UP_WITHIN)
        })
        .count();
    Some(up as u64)
}

/// The text exposition of `m` (and `up`, the tunnels up when the dataplane said).
pub(super) fn render(m: &CycleMetrics, up: Option<u64>) -> String {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut e = Exposition::new();
    e.family(
        "portdistrictd_cycles",
        "Cycles (publish, refresh, connect) by result.",
        Kind::Counter,
    )
    .sample(&[("result", "ok")], Value::Int(get(&m.ok)))
    .sample(&[("result", "failed")], Value::Int(get(&m.failed)));
    let gauges = [
        (
            "portdistrictd_last_cycle_timestamp_seconds",
            "When the last cycle ended (Unix time; 0 before the first).",
            get(&m.last_cycle),
        ),
        (
            "portdistrictd_last_successful_cycle_timestamp_seconds",
            "When the last cycle that completed ended (Unix time; 0 before the first).",
            get(&m.last_ok),
        ),
        (
            "portdistrictd_peers_trusted",
            "Trusted peers at the last refresh.",
            get(&m.trusted),
        ),
        (
            "portdistrictd_peer_devices_verified",
            "Peer devices whose records verified at the last refresh.",
            get(&m.verified),
        ),
        (
            "portdistrictd_tunnels_configured",
            "Peer devices configured as WireGuard peers of the tunnel after the last cycle.",
            get(&m.configured),
        ),
    ];
    for (name, help, v) in gauges {
        e.gauge(name, help, Value::Int(v));
    }
    let f = e.family(
        "portdistrictd_tunnels_up",
        "WireGuard peers of the tunnel with a handshake in the last 180 s (no sample before the dataplane runs).",
        Kind::Gauge,
    );
    if let Some(up) = up {
        f.sample(&[], Value::Int(up));
    }
    e.counter(
        "portdistrictd_records_published",
        "Records published in DNS (each a successful RFC 2136 update).",
        get(&m.published),
    );
    e.counter(
        "portdistrictd_publish_failures",
        "Publications that failed (the cycle goes on).",
        get(&m.publish_failed),
    );
    e.render()
}

/// The endpoint's render function.
pub(super) fn scraper(
    m: Arc<CycleMetrics>,
    live: Arc<Mutex<Live>>,
) -> Arc<portdistrict_metrics::http::Render> {
    Arc::new(move || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(render(&m, tunnels_up(&live, now)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_and_gauges() {
        let m = CycleMetrics::default();
        m.cycle_done(true, 1_700_000_000);
        m.cycle_done(false, 1_700_000_030);
        m.trusted.store(2, Ordering::Relaxed);
        m.published.fetch_add(3, Ordering::Relaxed);
        let text = render(&m, Some(1));
        for line in [
            "# TYPE portdistrictd_cycles_total counter",
            "portdistrictd_cycles_total{result=\"ok\"} 1",
            "portdistrictd_cycles_total{result=\"failed\"} 1",
            "portdistrictd_last_cycle_timestamp_seconds 1700000030",
            "portdistrictd_last_successful_cycle_timestamp_seconds 1700000000",
            "portdistrictd_peers_trusted 2",
            "portdistrictd_tunnels_up 1",
            "portdistrictd_records_published_total 3",
            "portdistrictd_publish_failures_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let text = render(&m, None);
        assert!(!text
            .lines()
            .any(|l| l.starts_with("portdistrictd_tunnels_up ")));
    }
}
