//! From raw samples to the report: per scenario and implementation the median and
//! min–max spread, portdistrict's ratios to every other column, daemon CPU seconds per
//! GB and peak RSS; rendered as text tables and serialized as JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::headline::{self, Headline};
use crate::impls::Impl;
use crate::measure::{Sample, Scenario};
use crate::scale::ScaleSample;
use crate::stats::{ratio, Summary};

/// Everything collected during a run.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    /// Samples by (scenario, implementation), in repeat order.
    pub(crate) samples: BTreeMap<(usize, Impl), Vec<Sample>>,
    /// Peak RSS (KiB) of each daemon, by implementation.
    pub(crate) peak_rss: BTreeMap<Impl, Vec<u64>>,
    /// The scale section, one per implementation measured.
    pub(crate) scale: Vec<ScaleSample>,
    /// Each column's version line ([`crate::versions`]).
    pub(crate) versions: BTreeMap<Impl, String>,
    /// What went wrong, in order.
    pub(crate) failures: Vec<Failure>,
}

/// One failed setup or measurement.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Failure {
    /// The implementation.
    pub(crate) implementation: &'static str,
    /// The scenario id, `None` for topology setup.
    pub(crate) scenario: Option<&'static str>,
    /// 1-based repeat, 0 for setup.
    pub(crate) repeat: u32,
    /// The error.
    pub(crate) message: String,
}

/// The JSON document (and the source of the table and the chart).
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// Always `pd-bench`.
    pub(crate) tool: &'static str,
    /// How the run was configured.
    pub(crate) config: Config,
    /// portdistrict against the current wireguard-go ([`crate::headline`]).
    pub(crate) headline: Option<Headline>,
    /// The columns, in order, measured or skipped.
    pub(crate) implementations: Vec<ImplReport>,
    /// The rows.
    pub(crate) scenarios: Vec<ScenarioReport>,
    /// Daemon memory with 0 and with many peers, and the `wg setconf` time.
    pub(crate) scale: Vec<ScaleSample>,
    /// Failed setups and measurements.
    pub(crate) failures: Vec<Failure>,
}

/// The run's configuration.
#[derive(Debug, Serialize)]
pub(crate) struct Config {
    /// Seconds per iperf3 run.
    pub(crate) duration_s: u32,
    /// Repeats per scenario.
    pub(crate) repeat: u32,
    /// Whether `--quick` was given.
    pub(crate) quick: bool,
    /// Our binary.
    pub(crate) dataplane: PathBuf,
    /// `uname -r`.
    pub(crate) kernel: String,
    /// Ours: `git <describe>` of the checkout.
    pub(crate) revision: String,
    /// `/proc/loadavg`'s 1, 5 and 15 minute figures when the run started.
    pub(crate) load_average: String,
    /// Online CPUs.
    pub(crate) cpus: usize,
}

/// One column.
#[derive(Debug, Serialize)]
pub(crate) struct ImplReport {
    /// Its name.
    pub(crate) name: &'static str,
    /// The daemon binary, if any.
    pub(crate) binary: Option<PathBuf>,
    /// Its version line, if it has a daemon that was found.
    pub(crate) version: Option<String>,
    /// Why it was not measured, if it was not.
    pub(crate) skipped: Option<String>,
    /// Peak RSS of each daemon, KiB.
    pub(crate) peak_rss_kib: Vec<u64>,
}

/// One row.
#[derive(Debug, Serialize)]
pub(crate) struct ScenarioReport {
    /// Machine id.
    pub(crate) id: &'static str,
    /// Human label.
    pub(crate) label: &'static str,
    /// Unit of the values.
    pub(crate) unit: &'static str,
    /// Whether bigger is better.
    pub(crate) higher_is_better: bool,
    /// Per implementation name.
    pub(crate) results: BTreeMap<&'static str, Cell>,
    /// `portdistrict/<other>` → ratio of the medians.
    pub(crate) ratios: BTreeMap<String, f64>,
}

/// One implementation's figures in one scenario.
#[derive(Debug, Serialize)]
pub(crate) struct Cell {
    /// Median and spread of the values.
    pub(crate) value: Option<Summary>,
    /// Every sample, in repeat order.
    pub(crate) samples: Vec<Sample>,
    /// UDP loss percent (receiver side).
    pub(crate) loss_percent: Option<Summary>,
    /// TCP segments retransmitted by the sender.
    pub(crate) retransmits: Option<Summary>,
    /// Both daemons' CPU seconds per GB delivered (throughput scenarios, tunnels).
    pub(crate) cpu_s_per_gb: Option<Summary>,
}

impl Report {
    /// Builds the report for the columns `impls` (`skipped` gives the reason for those
    /// not measured) from `c`.
    pub(crate) fn build(
        config: Config,
        impls: Vec<(Impl, Option<PathBuf>, Option<String>)>,
        c: Collected,
    ) -> Report {
        let measured: Vec<Impl> = impls
            .iter()
            .filter(|i| i.2.is_none())
            .map(|i| i.0)
            .collect();
        let scenarios = Scenario::ALL
            .iter()
            .enumerate()
            .map(|(si, s)| scenario_report(si, *s, &measured, &c))
            .collect();
        let implementations = impls
            .into_iter()
            .map(|(i, binary, skipped)| ImplReport {
                name: i.name(),
                version: c.versions.get(&i).cloned(),
                binary,
                skipped,
                peak_rss_kib: c.peak_rss.get(&i).cloned().unwrap_or_default(),
            })
            .collect();
        let mut report = Report {
            tool: "pd-bench",
            config,
            headline: None,
            implementations,
            scenarios,
            scale: c.scale,
            failures: c.failures,
        };
        report.headline = headline::of(&report);
        report
    }

    /// The measured columns' names, in order.
    pub(crate) fn measured(&self) -> Vec<&'static str> {
        self.implementations
            .iter()
            .filter(|i| i.skipped.is_none())
            .map(|i| i.name)
            .collect()
    }

    /// `(scenario label, implementation)` pairs without a nonzero median: what
    /// `--quick` fails on.
    pub(crate) fn missing_figures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.scenarios {
            // Under a flood a tunnel may carry nothing at all: that is its figure (a
            // measurement was taken), not a scenario that failed to run.
            let zero_is_a_figure = s.id == Scenario::Tcp1Flood.id();
            for name in self.measured() {
                let ok = s
                    .results
                    .get(name)
                    .and_then(|c| c.value)
                    .is_some_and(|v| v.median > 0.0 || zero_is_a_figure);
                if !ok {
                    out.push(format!("{} / {name}", s.label));
                }
            }
        }
        // The scale section runs each daemon once: `portdistrict-xdp-off` is the same
        // daemon as `portdistrict`.
        let scaled = |n: &&str| *n != "bare-veth" && *n != Impl::PortdistrictXdpOff.name();
        for name in self.measured().into_iter().filter(scaled) {
            let ok = self
                .scale
                .iter()
                .any(|x| x.implementation == name && x.idle.rss_kib > 0 && x.loaded.rss_kib > 0);
            if !ok {
                out.push(format!("scale RSS / {name}"));
            }
        }
        out
    }
}

fn scenario_report(si: usize, s: Scenario, measured: &[Impl], c: &Collected) -> ScenarioReport {
    let mut results = BTreeMap::new();
    for i in measured {
        let samples = c.samples.get(&(si, *i)).cloned().unwrap_or_default();
        let pick =
            |f: fn(&Sample) -> Option<f64>| -> Vec<f64> { samples.iter().filter_map(f).collect() };
        let cpu = if s.higher_is_better() {
            Summary::of(&pick(Sample::cpu_per_gb))
        } else {
            None
        };
        results.insert(
            i.name(),
            Cell {
                value: Summary::of(&pick(|x| Some(x.value))),
                loss_percent: Summary::of(&pick(|x| x.loss_percent)),
                retransmits: Summary::of(&pick(|x| x.retransmits)),
                cpu_s_per_gb: cpu,
                samples,
            },
        );
    }
    let median = |name: &str| {
        results
            .get(name)
            .and_then(|c: &Cell| c.value)
            .map(|v| v.median)
    };
    let mut ratios = BTreeMap::new();
    if let Some(ours) = median(Impl::Portdistrict.name()) {
        for i in measured.iter().filter(|i| **i != Impl::Portdistrict) {
            if let Some(r) = median(i.name()).and_then(|theirs| ratio(ours, theirs)) {
                ratios.insert(format!("portdistrict/{}", i.name()), r);
            }
        }
    }
    ScenarioReport {
        id: s.id(),
        label: s.label(),
        unit: s.unit(),
        higher_is_better: s.higher_is_better(),
        results,
        ratios,
    }
}

/// A number with about three significant digits.
pub(crate) fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Columns padded to their widest cell; the first left-aligned, the others right.
pub(crate) fn render_table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, s)| match c {
                0 => format!("{s:<w$}", w = width[c]),
                _ => format!("{s:>w$}", w = width[c]),
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

impl Report {
    /// The text report: values, ratios, CPU per GB, UDP loss, peak RSS, failures.
    pub(crate) fn text(&self) -> String {
        let names = self.measured();
        let header = |first: &str| -> Vec<String> {
            std::iter::once(first.to_owned())
                .chain(names.iter().map(|n| n.to_string()))
                .collect()
        };
        let mut out = headline::preamble(self);
        let mut rows = vec![header("scenario")];
        for s in &self.scenarios {
            let mut row = vec![format!("{} [{}]", s.label, s.unit)];
            row.extend(
                names
                    .iter()
                    .map(|n| cell_text(s.results.get(n).and_then(|c| c.value))),
            );
            rows.push(row);
        }
        out.push_str(&render_table(&rows));
        for i in &self.implementations {
            if let Some(why) = &i.skipped {
                out.push_str(&format!("skipped column {}: {why}\n", i.name));
            }
        }
        out.push_str(&self.ratio_table());
        out.push_str(&self.side_tables(&names));
        out.push_str(&self.scale_table());
        for f in &self.failures {
            let what = f.scenario.unwrap_or("setup");
            out.push_str(&format!(
                "FAILED {} {what} (repeat {}): {}\n",
                f.implementation, f.repeat, f.message
            ));
        }
        out
    }

    fn ratio_table(&self) -> String {
        let others: Vec<&str> = self
            .measured()
            .into_iter()
            .filter(|n| *n != "portdistrict")
            .collect();
        if !self.measured().contains(&"portdistrict") || others.is_empty() {
            return String::new();
        }
        let mut rows = vec![std::iter::once("portdistrict / ...".to_owned())
            .chain(others.iter().map(|n| n.to_string()))
            .collect::<Vec<_>>()];
        for s in &self.scenarios {
            let better = if s.higher_is_better {
                "higher"
            } else {
                "lower"
            };
            let mut row = vec![format!("{} ({better} is better)", s.label)];
            row.extend(others.iter().map(|n| {
                s.ratios
                    .get(&format!("portdistrict/{n}"))
                    .map_or("-".to_owned(), |r| format!("{r:.2}x"))
            }));
            rows.push(row);
        }
        format!("\nratios of medians\n{}", render_table(&rows))
    }

    fn side_tables(&self, names: &[&'static str]) -> String {
        let tunnels: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| *n != "bare-veth")
            .collect();
        if tunnels.is_empty() {
            return String::new();
        }
        let header: Vec<String> = std::iter::once("metric".to_owned())
            .chain(tunnels.iter().map(|n| n.to_string()))
            .collect();
        let mut rows = vec![header];
        for s in self.scenarios.iter().filter(|s| s.higher_is_better) {
            let mut row = vec![format!("CPU s/GB, {}", s.label)];
            row.extend(
                tunnels
                    .iter()
                    .map(|n| cell_text(s.results.get(n).and_then(|c| c.cpu_s_per_gb))),
            );
            rows.push(row);
        }
        for s in self.scenarios.iter().filter(|s| s.unit == "kpps") {
            let mut row = vec![format!("loss %, {}", s.label)];
            row.extend(
                tunnels
                    .iter()
                    .map(|n| cell_text(s.results.get(n).and_then(|c| c.loss_percent))),
            );
            rows.push(row);
        }
        for s in self
            .scenarios
            .iter()
            .filter(|s| s.results.values().any(|c| c.retransmits.is_some()))
        {
            let mut row = vec![format!("TCP retransmits, {}", s.label)];
            row.extend(
                tunnels
                    .iter()
                    .map(|n| cell_text(s.results.get(n).and_then(|c| c.retransmits))),
            );
            rows.push(row);
        }
        let mut rss = vec!["peak RSS MiB (max of 2)".to_owned()];
        rss.extend(tunnels.iter().map(|n| {
            let kib = self
                .implementations
                .iter()
                .find(|i| i.name == *n)
                .and_then(|i| i.peak_rss_kib.iter().max().copied());
            kib.map_or("-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0))
        }));
        rows.push(rss);
        format!(
            "\ndaemons (both ends; CPU = user+system per GB delivered)\n{}",
            render_table(&rows)
        )
    }
}

/// How one row of the scale table renders a sample.
type ScaleCell = fn(&ScaleSample) -> String;

impl Report {
    /// The scale section: memory with 0 and with N peers, growth per peer, setconf time.
    fn scale_table(&self) -> String {
        let Some(peers) = self.scale.first().map(|x| x.peers) else {
            return String::new();
        };
        let rows_of: [(String, ScaleCell); 6] = [
            ("RSS MiB, 0 peers".to_owned(), |x| mib(x.idle.rss_kib)),
            ("peak RSS MiB, 0 peers".to_owned(), |x| mib(x.idle.hwm_kib)),
            (format!("RSS MiB, {peers} peers"), |x| mib(x.loaded.rss_kib)),
            (format!("peak RSS MiB, {peers} peers"), |x| {
                mib(x.loaded.hwm_kib)
            }),
            ("RSS KiB per peer".to_owned(), |x| {
                format!("{:.2}", x.rss_kib_per_peer())
            }),
            ("wg setconf ms".to_owned(), |x| fmt_num(x.setconf_ms)),
        ];
        let mut rows = vec![std::iter::once("metric".to_owned())
            .chain(self.scale.iter().map(|x| x.implementation.to_owned()))
            .collect::<Vec<_>>()];
        for (label, f) in rows_of {
            rows.push(
                std::iter::once(label)
                    .chain(self.scale.iter().map(f))
                    .collect(),
            );
        }
        format!(
            "\nscale (one daemon each, {peers} peers: one /32 + one /128 and an endpoint each)\n{}",
            render_table(&rows)
        )
    }
}

/// KiB as MiB with one decimal.
fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn cell_text(v: Option<Summary>) -> String {
    match v {
        None => "-".to_owned(),
        Some(s) if s.n == 1 => fmt_num(s.median),
        Some(s) => format!(
            "{} ({}-{})",
            fmt_num(s.median),
            fmt_num(s.min),
            fmt_num(s.max)
        ),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scale::Memory;

    fn sample(value: f64, bytes: u64, cpu: Option<f64>) -> Sample {
        Sample {
            value,
            bytes,
            loss_percent: None,
            retransmits: None,
            cpu_seconds: cpu,
        }
    }

    pub(crate) fn example() -> Report {
        let impls = vec![
            (Impl::Bare, None, None),
            (Impl::Portdistrict, Some("/dp".into()), None),
            (Impl::WireguardGo, Some("/wg".into()), None),
            (Impl::Gotatun, None, Some("not installed".into())),
        ];
        Report::build(example_config(), impls, example_collected())
    }

    /// [`example`] with the Debian 13 wireguard-go measured too (half as fast as ours
    /// on TCP 1 stream: 1.25 Gbit/s).
    pub(crate) fn example_with_deb13() -> Report {
        let mut c = example_collected();
        c.samples.insert(
            (0, Impl::WireguardGoDeb13),
            vec![sample(1.25, 1_000_000_000, Some(2.0))],
        );
        c.versions.insert(
            Impl::WireguardGoDeb13,
            "wireguard-go 0.0.20231211 (Debian 13), package 0.0.20231211-1+b9, /c".into(),
        );
        let impls = vec![
            (Impl::Bare, None, None),
            (Impl::Portdistrict, Some("/dp".into()), None),
            (Impl::WireguardGoDeb13, Some("/c".into()), None),
            (Impl::WireguardGo, Some("/wg".into()), None),
            (Impl::Gotatun, None, Some("not installed".into())),
        ];
        Report::build(example_config(), impls, c)
    }

    fn example_collected() -> Collected {
        let mut c = Collected::default();
        c.samples.insert(
            (0, Impl::Bare),
            vec![sample(20.0, 1, None), sample(22.0, 1, None)],
        );
        c.samples.insert(
            (0, Impl::Portdistrict),
            vec![
                sample(4.0, 2_000_000_000, Some(1.0)),
                sample(6.0, 2_000_000_000, Some(3.0)),
            ],
        );
        c.samples.insert(
            (0, Impl::WireguardGo),
            vec![sample(2.5, 1_000_000_000, Some(2.0))],
        );
        c.samples
            .insert((4, Impl::Portdistrict), vec![sample(0.2, 0, Some(0.0))]);
        c.samples
            .insert((4, Impl::WireguardGo), vec![sample(0.4, 0, Some(0.0))]);
        c.peak_rss.insert(Impl::Portdistrict, vec![2048, 4096]);
        c.scale.push(ScaleSample {
            implementation: "portdistrict",
            peers: 1000,
            idle: Memory {
                rss_kib: 3072,
                hwm_kib: 3072,
            },
            loaded: Memory {
                rss_kib: 5120,
                hwm_kib: 6144,
            },
            setconf_ms: 42.0,
        });
        c
    }

    fn example_config() -> Config {
        Config {
            duration_s: 1,
            repeat: 2,
            quick: true,
            dataplane: "/dp".into(),
            kernel: "6.18".into(),
            revision: "git abc".into(),
            load_average: "0.5 0.4 0.3".into(),
            cpus: 2,
        }
    }

    #[test]
    fn medians_ratios_and_cpu() {
        let r = example();
        let tcp = &r.scenarios[0];
        assert_eq!(tcp.results["portdistrict"].value.unwrap().median, 5.0);
        assert_eq!(tcp.results["bare-veth"].value.unwrap().median, 21.0);
        assert_eq!(tcp.ratios["portdistrict/wireguard-go"], 2.0);
        assert!((tcp.ratios["portdistrict/bare-veth"] - 5.0 / 21.0).abs() < 1e-12);
        // (0.5 + 1.5) / 2 s per GB.
        assert_eq!(
            tcp.results["portdistrict"].cpu_s_per_gb.unwrap().median,
            1.0
        );
        assert_eq!(tcp.results["bare-veth"].cpu_s_per_gb, None);
        let ping = &r.scenarios[4];
        assert_eq!(ping.ratios["portdistrict/wireguard-go"], 0.5);
        assert_eq!(ping.results["portdistrict"].cpu_s_per_gb, None);
        assert!(!r.measured().contains(&"gotatun"));
    }

    #[test]
    fn missing_figures_name_the_cells() {
        let missing = example().missing_figures();
        assert!(missing.contains(&"scale RSS / wireguard-go".to_owned()));
        assert!(!missing
            .iter()
            .any(|m| m.contains("scale RSS / portdistrict")));
        assert!(!missing.iter().any(|m| m.contains("scale RSS / bare-veth")));
        assert!(missing.contains(&"TCP 4 streams / portdistrict".to_owned()));
        assert!(missing.contains(&"ping idle / bare-veth".to_owned()));
        assert!(!missing.contains(&"TCP 1 stream / wireguard-go".to_owned()));
        assert!(!missing.iter().any(|m| m.contains("gotatun")));
    }

    #[test]
    fn text_and_json() {
        let r = example();
        let t = r.text();
        assert!(t.contains("TCP 1 stream [Gbit/s]"), "{t}");
        assert!(t.contains("5.00 (4.00-6.00)"), "{t}");
        assert!(t.contains("2.00x"), "{t}");
        assert!(t.contains("peak RSS MiB (max of 2)"), "{t}");
        assert!(t.contains("4.0"), "{t}");
        assert!(t.contains("skipped column gotatun: not installed"), "{t}");
        assert!(t.contains("scale (one daemon each, 1000 peers"), "{t}");
        assert!(t.contains("RSS MiB, 1000 peers"), "{t}");
        assert!(t.contains("RSS KiB per peer"), "{t}");
        assert!(t.contains("2.05"), "(5120 - 3072) / 1000 KiB per peer: {t}");
        let j: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(j["scenarios"][0]["id"], "tcp_1_stream");
        assert_eq!(
            j["scenarios"][0]["results"]["portdistrict"]["value"]["median"],
            5.0
        );
        assert_eq!(j["implementations"][3]["skipped"], "not installed");
        assert_eq!(j["scale"][0]["implementation"], "portdistrict");
        assert_eq!(j["scale"][0]["loaded"]["hwm_kib"], 6144);
        assert_eq!(j["scale"][0]["setconf_ms"], 42.0);
    }

    #[test]
    fn table_alignment() {
        let t = render_table(&[
            vec!["a".into(), "bb".into()],
            vec!["ccc".into(), "d".into()],
        ]);
        assert_eq!(t, "a    bb\nccc   d\n");
        assert_eq!(fmt_num(1234.5), "1234");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(0.0456), "0.046");
    }
}
