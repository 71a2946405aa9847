//! The opt-in Prometheus endpoint of portdistrict's processes
//! (`portdistrict-dataplane`, `portdistrictd`, `portdistrict exit serve`, each with
//! `--metrics-listen ADDR:PORT`).
//!
//! Two parts, neither of which knows what the metrics are: [`http`], a small bounded
//! blocking HTTP/1.1 server answering `GET /metrics` with what a render function
//! returns, and [`exposition`], the families of one scrape rendered in the Prometheus
//! text format by `prometheus-client`. Each process reads its numbers at the scrape
//! (the dataplane through its event loop, as `wg show` does): nothing is updated on
//! a packet path between scrapes.
//!
//! A shell-layer crate (sockets, threads) that both the dataplane engine and control
//! link: it depends on neither.

#![forbid(unsafe_code)]

pub mod exposition;
pub mod http;

pub use exposition::{Exposition, Kind, Value, CONTENT_TYPE};
