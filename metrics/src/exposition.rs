//! Metric families built afresh for one scrape, rendered in the Prometheus text
//! format (version 0.0.4) by `prometheus-client`.
//!
//! The processes do not keep live metric objects that their hot paths update: what
//! a scrape shows is read at the scrape (the dataplane's counters through its event
//! loop, the daemon's last cycle, the exit store), put into an [`Exposition`] and
//! rendered once. Names are given without the `_total` suffix of counters, which the
//! encoder appends.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The `Content-Type` of what [`Exposition::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A metric's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only ever grows while the process runs (rendered with `_total`).
    Counter,
    /// May go up and down.
    Gauge,
}

/// One sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A count.
    Int(u64),
    /// A measurement (seconds, say).
    Float(f64),
}

/// One sample: its labels and value.
#[derive(Debug, Clone)]
struct Sample {
    labels: Vec<(String, String)>,
    value: Value,
}

/// A named metric with its help text and samples.
#[derive(Debug, Clone)]
pub struct Family {
    name: String,
    help: String,
    kind: Kind,
    samples: Vec<Sample>,
}

impl Family {
    /// Adds a sample with `labels` (name, value).
    pub fn sample(&mut self, labels: &[(&str, &str)], value: Value) -> &mut Self {
        let labels = labels
            .iter()
            .map(|(k, v)| {
                debug_assert!(valid_name(k), "label name {k:?}");
                ((*k).to_owned(), (*v).to_owned())
            })
            .collect();
        self.samples.push(Sample { labels, value });
        self
    }
}

/// Whether `name` is a valid metric or label name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn valid_name(name: &str) -> bool {
    let mut b = name.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// The families of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    /// No family yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a family of `kind` (its samples follow through [`Family::sample`]).
    /// `name` must be a valid metric name, without `_total` for a counter.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> &mut Family {
        debug_assert!(valid_name(name), "metric name {name:?}");
        debug_assert!(
            !(kind == Kind::Counter && name.ends_with("_total")),
            "{name}: the encoder appends _total"
        );
        self.families.push(Family {
            name: name.to_owned(),
            help: help.to_owned(),
            kind,
            samples: Vec::new(),
        });
        self.families.last_mut().expect("just pushed")
    }

    /// Adds a counter without labels.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, help, Kind::Counter)
            .sample(&[], Value::Int(value));
    }

    /// Adds a gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: Value) {
        self.family(name, help, Kind::Gauge).sample(&[], value);
    }

    /// The text exposition of every family, in the order they were added.
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a
        // name (checked above in debug builds).
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for f in &self.families {
            let kind = match f.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(&f.name, &f.help, None, kind)?;
            for s in &f.samples {
                let labels = &s.labels;
                let m = metric.encode_family(labels)?;
                match (f.kind, s.value) {
                    (Kind::Counter, Value::Int(v)) => ConstCounter::new(v).encode(m)?,
                    (Kind::Counter, Value::Float(v)) => ConstCounter::new(v).encode(m)?,
                    (Kind::Gauge, Value::Int(v)) => ConstGauge::new(v).encode(m)?,
                    (Kind::Gauge, Value::Float(v)) => ConstGauge::new(v).encode(m)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_labels_render_as_text_format() {
        let mut e = Exposition::new();
        e.counter("pd_test_drops", "Dropped packets.", 3);
        e.gauge("pd_test_threads", "Threads.", Value::Int(2));
        e.family("pd_test_peer_rx_bytes", "Bytes received.", Kind::Counter)
            .sample(&[("interface", "wg0"), ("peer", "a+b/c=")], Value::Int(7))
            .sample(&[("interface", "wg0"), ("peer", "d")], Value::Int(0));
        e.family("pd_test_age_seconds", "Age.", Kind::Gauge)
            .sample(&[("peer", "a")], Value::Float(1.5));
        e.family("pd_test_empty", "No samples.", Kind::Gauge);
        let text = e.render();
        let want = "\
# HELP pd_test_drops_total Dropped packets.
# TYPE pd_test_drops_total counter
pd_test_drops_total 3
# HELP pd_test_threads Threads.
# TYPE pd_test_threads gauge
pd_test_threads 2
# HELP pd_test_peer_rx_bytes_total Bytes received.
# TYPE pd_test_peer_rx_bytes_total counter
pd_test_peer_rx_bytes_total{interface=\"wg0\",peer=\"a+b/c=\"} 7
pd_test_peer_rx_bytes_total{interface=\"wg0\",peer=\"d\"} 0
# HELP pd_test_age_seconds Age.
# TYPE pd_test_age_seconds gauge
pd_test_age_seconds{peer=\"a\"} 1.5
# HELP pd_test_empty No samples.
# TYPE pd_test_empty gauge
";
        assert_eq!(text, want);
    }

    #[test]
    fn names() {
        for good in ["a", "_a", "a:b_9", "portdistrict_dataplane_rx_replay"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "9a", "a-b", "a b", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
