//! The `stats` call and the metrics scrape: the device's counters and the loop's
//! own, as a list of named values ([`Driver::stat_list`]) that `stats=1` prints one
//! `key=value` line each (`portdistrict-dataplane --stats IFNAME`) and the metrics
//! endpoint renders ([`crate::metrics`]).

use super::Driver;
use crate::metrics::{Snapshot, Stat, Stats};
use portdistrict_ebpf::xsk::XskSocket;

impl Driver {
    /// Appends every counter to `out`, one `key=value` line each.
    pub(super) fn format_stats(&self, out: &mut String) {
        use std::fmt::Write as _;
        for (k, v) in self.stat_list() {
            let _ = match v {
                Stat::Count(n) => writeln!(out, "{k}={n}"),
                Stat::Text(t) => writeln!(out, "{k}={t}"),
            };
        }
    }

    /// What a metrics scrape shows: every counter, each peer's, the wall clock.
    pub(super) fn metrics_snapshot(&self) -> Snapshot {
        Snapshot {
            interface: self.egress.tun.name().to_owned(),
            stats: self.stat_list(),
            peers: self.device.peer_stats(),
            wall: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    /// Every counter with its name, in the order `--stats` prints them.
    pub(super) fn stat_list(&self) -> Stats {
        let Driver { egress, .. } = self;
        let mut s = Stats::new();
        for (k, v) in self.device.stats.iter() {
            s.count(k, v);
        }
        if let Some(u) = &egress.udp {
            s.count("rx_truncated", u.truncated() + self.rx_batch.truncated());
            s.flag("tx_gso", u.gso_enabled());
        }
        s.count("tx_batch_send_failed", egress.tx.failed);
        s.count("tx_batch_seal_dropped", egress.tx.seal_dropped);
        let p = egress.pool.stats();
        s.count("crypto_threads", (egress.pool.workers() + 1) as u64);
        s.flag("crypto_parallel", egress.pool.enabled());
        s.count("crypto_jobs", p.jobs);
        s.count("crypto_parallel_batches", p.parallel_batches);
        s.count("crypto_worker_jobs", p.worker_jobs);
        s.flag("crypto_group_code", egress.tx.group());
        s.count("crypto_grouped", egress.tx.crypto_grouped);
        s.count("tx_offload_malformed", egress.offload.malformed);
        s.flag("tun_vnet_hdr", egress.offload.vnet);
        s.flag("io_uring", self.reactor.is_some());
        if let Some(l) = &self.shm {
            s.count("shm_updates", l.updates);
            s.count("shm_errors", l.errors);
            s.count("shm_commands", l.commands);
            s.count("shm_command_failures", l.command_failures);
        }
        if let Some(r) = &self.reactor {
            s.count("rx_uring_truncated", r.truncated());
        }
        match &egress.xdp {
            Some(x) => x.stats(&mut s),
            None => s.text("xdp", "off".to_owned()),
        }
        if !self.xsks.is_empty() {
            let sum =
                |f: fn(&XskSocket) -> u64| -> u64 { self.xsks.iter().map(|(s, _)| f(s)).sum() };
            s.count("xsk_sockets", self.xsks.len() as u64);
            s.count("xsk_received", sum(|s| s.received));
            s.count("xsk_unparsed", sum(|s| s.unparsed));
            s.count("xsk_bad_descriptors", sum(|s| s.bad_descriptors));
        }
        s
    }
}
