//! The dataplane's metrics (`--metrics-listen ADDR:PORT`, `PD_METRICS_LISTEN`).
//!
//! A scrape of the endpoint ([`portdistrict_metrics::http`], its own threads) asks
//! the event loop for a [`Snapshot`] over the UAPI channel, waking it through the
//! same eventfd as a `wg show` does ([`crate::uapi_server::Pending::Metrics`]); the
//! loop copies its counters and each peer's and sends them back. Between scrapes
//! nothing on the packet path changes: the counters are the ones `--stats` prints.
//!
//! [`render`] maps the snapshot onto metric families: every numeric `--stats` field
//! `F` becomes `portdistrict_dataplane_F` (a counter, `_total`, except the few that
//! are states: [`GAUGES`]), the XDP mode and attachments become 0/1 gauges with
//! labels, and each peer gives `portdistrict_dataplane_peer_*` by its public key
//! (no endpoint label: it changes on every roam). Every sample has the label
//! `interface`.

use portdistrict_metrics::{Exposition, Kind, Value};
use portdistrict_wg::config::PeerStats;
use std::time::Duration;

/// The prefix of every name.
const PREFIX: &str = "portdistrict_dataplane_";

/// How long a scrape waits for the event loop.
pub(crate) const LOOP_TIMEOUT: Duration = Duration::from_secs(4);

/// One `--stats` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stat {
    /// A count, or a state as a number (`1` on, `0` off).
    Count(u64),
    /// A word or list (`xdp=filter`, `xdp_interfaces=eth0:native`).
    Text(String),
}

/// The `--stats` fields, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats(pub Vec<(&'static str, Stat)>);

impl Stats {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a number.
    pub fn count(&mut self, name: &'static str, n: u64) {
        self.0.push((name, Stat::Count(n)));
    }

    /// Adds a state as `1` or `0`.
    pub fn flag(&mut self, name: &'static str, on: bool) {
        self.count(name, u64::from(on));
    }

    /// Adds a word.
    pub fn text(&mut self, name: &'static str, t: String) {
        self.0.push((name, Stat::Text(t)));
    }

    /// Iterates over the fields.
    pub fn iter(&self) -> impl Iterator<Item = &(&'static str, Stat)> {
        self.0.iter()
    }
}

impl IntoIterator for Stats {
    type Item = (&'static str, Stat);
    type IntoIter = std::vec::IntoIter<(&'static str, Stat)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// What one scrape reads from the event loop.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The interface's name.
    pub interface: String,
    /// The `--stats` fields.
    pub stats: Stats,
    /// Each peer's counters and handshake time.
    pub peers: Vec<PeerStats>,
    /// The wall clock at the snapshot, since the UNIX epoch.
    pub wall: Duration,
}

/// The `--stats` fields that are states or sizes, not counts of events (gauges).
pub const GAUGES: &[(&str, &str)] = &[
    ("tx_gso", "1 when UDP sends use UDP_SEGMENT (GSO)."),
    (
        "crypto_threads",
        "Threads that seal and open, the loop's included.",
    ),
    (
        "crypto_parallel",
        "1 while the crypto pool's workers are in use.",
    ),
    (
        "crypto_group_code",
        "1 when the AVX-512 group code is used.",
    ),
    (
        "tun_vnet_hdr",
        "1 when the TUN device runs with IFF_VNET_HDR offloads.",
    ),
    ("io_uring", "1 on the io_uring loop, 0 on the poll(2) loop."),
    (
        "xdp_native",
        "Interfaces that run the XDP program as native XDP.",
    ),
    (
        "xdp_receivers",
        "Receiver indices in the XDP program's map.",
    ),
    (
        "xdp_under_load",
        "1 while initiations must pass the XDP per-source rate limit.",
    ),
    ("xsk_sockets", "AF_XDP sockets (steer mode)."),
];

/// Help of the engine's and the XDP program's counters (the core's come from
/// [`portdistrict_wg::stats::Stats::HELP`]).
const COUNTERS: &[(&str, &str)] = &[
    (
        "rx_truncated",
        "Received datagrams dropped: larger than the receive buffer.",
    ),
    (
        "tx_batch_send_failed",
        "Datagrams the kernel refused in batched sends.",
    ),
    (
        "tx_batch_seal_dropped",
        "Data messages taken out of a batch: they could not be sealed.",
    ),
    ("crypto_jobs", "Crypto jobs run."),
    (
        "crypto_parallel_batches",
        "Batches handed to the crypto worker threads.",
    ),
    (
        "crypto_worker_jobs",
        "Crypto jobs a worker thread (not the loop thread) ran.",
    ),
    (
        "crypto_grouped",
        "Messages sealed or opened by the AVX-512 group code.",
    ),
    (
        "tx_offload_malformed",
        "TUN reads whose virtio-net header or super-packet could not be split.",
    ),
    (
        "shm_updates",
        "Configurations applied from the shared-memory region.",
    ),
    (
        "shm_errors",
        "Corrupt reads of the shared-memory region and corrupt commands.",
    ),
    (
        "shm_commands",
        "Commands taken from the shared-memory command ring.",
    ),
    (
        "shm_command_failures",
        "Shared-memory commands that could not be carried out.",
    ),
    (
        "rx_uring_truncated",
        "UDP messages dropped: they did not fit an io_uring buffer.",
    ),
    (
        "xdp_map_errors",
        "Failed updates of the XDP program's maps.",
    ),
    (
        "xdp_pass_initiation",
        "Handshake initiations the XDP program passed.",
    ),
    (
        "xdp_pass_response",
        "Handshake responses the XDP program passed.",
    ),
    ("xdp_pass_cookie", "Cookie replies the XDP program passed."),
    (
        "xdp_pass_data",
        "Data messages the XDP program passed to the UDP socket.",
    ),
    (
        "xdp_redirect_data",
        "Data messages the XDP program steered to AF_XDP sockets.",
    ),
    (
        "xdp_pass_fragment",
        "IP fragments the XDP program passed to the kernel.",
    ),
    (
        "xdp_drop_truncated",
        "XDP drops: too short, or a UDP length beyond the frame.",
    ),
    (
        "xdp_drop_bad_type",
        "XDP drops: unknown message type or reserved bytes not zero.",
    ),
    (
        "xdp_drop_bad_length",
        "XDP drops: a length the message type does not allow.",
    ),
    (
        "xdp_drop_unknown_receiver",
        "XDP drops: a receiver index the dataplane does not hold.",
    ),
    (
        "xdp_drop_rate_limited",
        "XDP drops: an initiation over its source's rate under load.",
    ),
    ("xdp_dropped", "XDP drops, all reasons."),
    (
        "xsk_received",
        "Data messages received through AF_XDP sockets.",
    ),
    (
        "xsk_unparsed",
        "AF_XDP frames that could not be parsed as UDP.",
    ),
    (
        "xsk_bad_descriptors",
        "AF_XDP descriptors that did not name a frame the kernel owned.",
    ),
];

/// The help text and kind of the `--stats` field `name`.
fn describe(name: &str) -> (String, Kind) {
    let find = |t: &[(&str, &'static str)]| t.iter().find(|(n, _)| *n == name).map(|(_, h)| *h);
    if let Some(h) = find(GAUGES) {
        return (h.to_owned(), Kind::Gauge);
    }
    let help = find(portdistrict_wg::stats::Stats::HELP)
        .or_else(|| find(COUNTERS))
        .map_or_else(
            || format!("The --stats field {name}."),
            |h| h.trim().to_owned(),
        );
    (help, Kind::Counter)
}

/// The text exposition of `s`.
pub fn render(s: &Snapshot) -> String {
    let mut e = Exposition::new();
    let ifname = s.interface.as_str();
    let iface = [("interface", ifname)];
    // A family appears once (a name given twice would make the exposition invalid).
    let mut seen = std::collections::HashSet::new();
    for (name, value) in s.stats.iter() {
        if !seen.insert(*name) {
            continue;
        }
        match value {
            Stat::Count(n) => {
                let (help, kind) = describe(name);
                e.family(&format!("{PREFIX}{name}"), &help, kind)
                    .sample(&iface, Value::Int(*n));
            }
            Stat::Text(t) if *name == "xdp" => {
                let f = e.family(
                    &format!("{PREFIX}xdp_mode"),
                    "The XDP program's mode (--xdp): 1 for the mode in force.",
                    Kind::Gauge,
                );
                for mode in ["off", "filter", "steer"] {
                    let on = u64::from(mode == t.as_str());
                    f.sample(&[("interface", ifname), ("mode", mode)], Value::Int(on));
                }
            }
            Stat::Text(t) if *name == "xdp_interfaces" => {
                let f = e.family(
                    &format!("{PREFIX}xdp_attached"),
                    "Underlay interfaces the XDP program is attached to, and how.",
                    Kind::Gauge,
                );
                for (underlay, how) in t.split(',').filter_map(|a| a.split_once(':')) {
                    let labels = [
                        ("interface", ifname),
                        ("underlay", underlay),
                        ("attach", how),
                    ];
                    f.sample(&labels, Value::Int(1));
                }
            }
            Stat::Text(_) => {}
        }
    }
    render_peers(&mut e, s);
    e.render()
}

/// The per-peer families.
fn render_peers(e: &mut Exposition, s: &Snapshot) {
    let ifname = s.interface.as_str();
    e.family(&format!("{PREFIX}peers"), "Peers configured.", Kind::Gauge)
        .sample(&[("interface", ifname)], Value::Int(s.peers.len() as u64));
    let keys: Vec<String> = s.peers.iter().map(|p| p.public_key.to_base64()).collect();
    let labels = |i: usize| [("interface", ifname), ("peer", keys[i].as_str())];
    let f = e.family(
        &format!("{PREFIX}peer_rx_bytes"),
        "Bytes received from the peer (as wg show's transfer).",
        Kind::Counter,
    );
    for (i, p) in s.peers.iter().enumerate() {
        f.sample(&labels(i), Value::Int(p.rx_bytes));
    }
    let f = e.family(
        &format!("{PREFIX}peer_tx_bytes"),
        "Bytes sent to the peer (as wg show's transfer).",
        Kind::Counter,
    );
    for (i, p) in s.peers.iter().enumerate() {
        f.sample(&labels(i), Value::Int(p.tx_bytes));
    }
    let f = e.family(
        &format!("{PREFIX}peer_last_handshake_age_seconds"),
        "Seconds since the peer's last completed handshake (no sample before the first).",
        Kind::Gauge,
    );
    for (i, p) in s.peers.iter().enumerate() {
        if let Some(t) = p.last_handshake {
            let age = s.wall.saturating_sub(t).as_secs_f64();
            f.sample(&labels(i), Value::Float(age));
        }
    }
}

#[cfg(test)]
mod tests;
