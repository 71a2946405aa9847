//! The `stats` call: the device's counters and the loop's own, one `key=value` line
//! each (`portdistrict-dataplane --stats IFNAME` prints them).

use super::Driver;
use portdistrict_ebpf::xsk::XskSocket;

impl Driver {
    /// Appends every counter to `out`.
    pub(super) fn format_stats(&self, out: &mut String) {
        let Driver { egress, .. } = self;
        for (k, v) in self.device.stats.iter() {
            out.push_str(&format!("{k}={v}\n"));
        }
        if let Some(u) = &egress.udp {
            let truncated = u.truncated() + self.rx_batch.truncated();
            out.push_str(&format!("rx_truncated={truncated}\n"));
            out.push_str(&format!("tx_gso={}\n", u8::from(u.gso_enabled())));
        }
        out.push_str(&format!("tx_batch_send_failed={}\n", egress.tx.failed));
        out.push_str(&format!(
            "tx_batch_seal_dropped={}\n",
            egress.tx.seal_dropped
        ));
        let p = egress.pool.stats();
        out.push_str(&format!("crypto_threads={}\n", egress.pool.workers() + 1));
        out.push_str(&format!(
            "crypto_parallel={}\n",
            u8::from(egress.pool.enabled())
        ));
        out.push_str(&format!("crypto_jobs={}\n", p.jobs));
        out.push_str(&format!("crypto_parallel_batches={}\n", p.parallel_batches));
        out.push_str(&format!("crypto_worker_jobs={}\n", p.worker_jobs));
        out.push_str(&format!(
            "crypto_group_code={}\n",
            u8::from(egress.tx.group())
        ));
        out.push_str(&format!("crypto_grouped={}\n", egress.tx.crypto_grouped));
        out.push_str(&format!(
            "tx_offload_malformed={}\n",
            egress.offload.malformed
        ));
        out.push_str(&format!("tun_vnet_hdr={}\n", u8::from(egress.offload.vnet)));
        out.push_str(&format!("io_uring={}\n", u8::from(self.reactor.is_some())));
        if let Some(l) = &self.shm {
            out.push_str(&format!("shm_updates={}\n", l.updates));
            out.push_str(&format!("shm_errors={}\n", l.errors));
            out.push_str(&format!("shm_commands={}\n", l.commands));
            out.push_str(&format!("shm_command_failures={}\n", l.command_failures));
        }
        if let Some(r) = &self.reactor {
            out.push_str(&format!("rx_uring_truncated={}\n", r.truncated()));
        }
        match &egress.xdp {
            Some(x) => x.stats(out),
            None => out.push_str("xdp=off\n"),
        }
        if !self.xsks.is_empty() {
            let sum =
                |f: fn(&XskSocket) -> u64| -> u64 { self.xsks.iter().map(|(s, _)| f(s)).sum() };
            out.push_str(&format!("xsk_sockets={}\n", self.xsks.len()));
            out.push_str(&format!("xsk_received={}\n", sum(|s| s.received)));
            out.push_str(&format!("xsk_unparsed={}\n", sum(|s| s.unparsed)));
            out.push_str(&format!(
                "xsk_bad_descriptors={}\n",
                sum(|s| s.bad_descriptors)
            ));
        }
    }
}
