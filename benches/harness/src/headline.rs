//! What the report leads with: the run's conditions, every column's version, and the
//! headline comparison, portdistrict against the current wireguard-go (Debian 13's
//! build, with the TUN TSO/GRO and UDP GSO/GRO that wireguard-go has had since 2023).
//! Only when that column was not measured does the headline fall back to the
//! `wireguard-go` on `$PATH`, and it says so.

use serde::Serialize;

use crate::impls::Impl;
use crate::report::Report;

/// The headline comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Headline {
    /// The column portdistrict is compared with.
    pub(crate) versus: &'static str,
    /// That column's name and version (the first field of its version line).
    pub(crate) version: String,
    /// Why it is not the current wireguard-go, when it is not.
    pub(crate) note: Option<String>,
    /// portdistrict's median over theirs, per scenario that has both.
    pub(crate) ratios: Vec<HeadlineRatio>,
}

/// One scenario's ratio in the headline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct HeadlineRatio {
    /// The scenario's label.
    pub(crate) scenario: &'static str,
    /// portdistrict's median over theirs.
    pub(crate) ratio: f64,
    /// Whether bigger is better (throughput) or smaller (latency).
    pub(crate) higher_is_better: bool,
}

/// The preferred column, then the fallback.
const VERSUS: [Impl; 2] = [Impl::WireguardGoDeb13, Impl::WireguardGo];

/// The headline of `report`: portdistrict against the first of [`VERSUS`] measured;
/// `None` without portdistrict or without either wireguard-go.
pub(crate) fn of(report: &Report) -> Option<Headline> {
    let measured = report.measured();
    if !measured.contains(&Impl::Portdistrict.name()) {
        return None;
    }
    let versus = VERSUS
        .iter()
        .map(|i| i.name())
        .find(|n| measured.contains(n))?;
    let current = Impl::WireguardGoDeb13.name();
    let note = (versus != current).then(|| {
        let why = report
            .implementations
            .iter()
            .find(|i| i.name == current)
            .map_or("not selected (--impl)", |i| {
                i.skipped.as_deref().unwrap_or("its setup failed")
            });
        format!("{current}, the current wireguard-go, was not measured: {why}")
    });
    let version = report
        .implementations
        .iter()
        .find(|i| i.name == versus)
        .and_then(|i| i.version.as_deref())
        .map_or_else(
            || versus.to_owned(),
            |v| crate::versions::short(v).to_owned(),
        );
    let key = format!("{}/{versus}", Impl::Portdistrict.name());
    let ratios = report
        .scenarios
        .iter()
        .filter_map(|s| {
            Some(HeadlineRatio {
                scenario: s.label,
                ratio: *s.ratios.get(&key)?,
                higher_is_better: s.higher_is_better,
            })
        })
        .collect();
    Some(Headline {
        versus,
        version,
        note,
        ratios,
    })
}

/// The lines before the tables: conditions, versions, headline.
pub(crate) fn preamble(report: &Report) -> String {
    let c = &report.config;
    let mut out = format!(
        "pd-bench: {} s per run, {} repeat(s), kernel {}, {} CPUs, load average {} at the start; median (min-max)\n",
        c.duration_s, c.repeat, c.kernel, c.cpus, c.load_average
    );
    out.push_str("versions:\n");
    let width = report
        .implementations
        .iter()
        .map(|i| i.name.len())
        .max()
        .unwrap_or(0);
    for i in &report.implementations {
        let v = match (&i.version, &i.skipped, &i.binary) {
            (Some(v), _, _) => v.clone(),
            (None, Some(_), _) => "(not measured, see below)".to_owned(),
            (None, None, Some(b)) => format!("version unknown, {}", b.display()),
            (None, None, None) => "(no daemon)".to_owned(),
        };
        if i.name != Impl::Bare.name() {
            out.push_str(&format!("  {:<width$}  {v}\n", i.name));
        }
    }
    out.push_str(&format!("  {:<width$}  {}\n", "kernel", c.kernel));
    if let Some(h) = &report.headline {
        out.push_str(&text(h));
    }
    out.push('\n');
    out
}

/// `headline: portdistrict / wireguard-go 0.0.20231211 (Debian 13): ...`, one line for
/// throughput and one for latency.
fn text(h: &Headline) -> String {
    let list = |higher: bool| {
        h.ratios
            .iter()
            .filter(|r| r.higher_is_better == higher)
            .map(|r| format!("{} {:.2}x", r.scenario, r.ratio))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let list = |higher: bool| match list(higher) {
        l if l.is_empty() => "-".to_owned(),
        l => l,
    };
    let mut out = format!("\nheadline: portdistrict / {} ({})\n", h.versus, h.version);
    if let Some(note) = &h.note {
        out.push_str(&format!("  NOTE: {note}\n"));
    }
    out.push_str(&format!(
        "  throughput (above 1: portdistrict faster): {}\n",
        list(true)
    ));
    out.push_str(&format!(
        "  latency (below 1: portdistrict quicker): {}\n",
        list(false)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::example;

    #[test]
    fn falls_back_to_the_old_wireguard_go_and_says_why() {
        let r = example();
        let h = r.headline.as_ref().expect("a headline");
        assert_eq!(h.versus, "wireguard-go");
        assert!(h.note.as_deref().unwrap().contains("not selected"), "{h:?}");
        assert_eq!(h.ratios[0].scenario, "TCP 1 stream");
        assert_eq!(h.ratios[0].ratio, 2.0);
        let t = preamble(&r);
        assert!(t.contains("headline: portdistrict / wireguard-go ("), "{t}");
        assert!(t.contains("TCP 1 stream 2.00x"), "{t}");
        // Scenario 4 of the example: higher is better.
        assert!(t.contains("loss <= 1% 0.50x"), "{t}");
        assert!(
            t.contains("latency (below 1: portdistrict quicker): -"),
            "{t}"
        );
        assert!(t.contains("  portdistrict  version unknown, /dp"), "{t}");
        assert!(t.contains("NOTE: wireguard-go-deb13"), "{t}");
        assert!(t.contains("load average 0.5 0.4 0.3"), "{t}");
    }

    #[test]
    fn leads_with_the_current_wireguard_go() {
        let r = crate::report::tests::example_with_deb13();
        let h = r.headline.as_ref().expect("a headline");
        assert_eq!(h.versus, "wireguard-go-deb13");
        assert_eq!(h.note, None);
        assert_eq!(h.ratios[0].ratio, 4.0);
        let t = preamble(&r);
        assert!(
            t.contains("headline: portdistrict / wireguard-go-deb13 (wireguard-go 0.0.20231211 (Debian 13))\n"),
            "{t}"
        );
        assert!(t.contains("  gotatun"), "{t}");
    }

    #[test]
    fn no_headline_without_portdistrict_or_wireguard_go() {
        let mut r = example();
        r.implementations.retain(|i| i.name != "wireguard-go");
        assert_eq!(of(&r), None);
        let mut r = example();
        r.implementations.retain(|i| i.name != "portdistrict");
        assert_eq!(of(&r), None);
    }
}
