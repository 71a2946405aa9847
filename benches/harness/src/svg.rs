//! The SVG chart, written by hand: one group of bars per scenario, one bar per
//! implementation, each the median normalized to bare veth (or to the first measured
//! column when bare veth was not run), with min–max whiskers, on a log axis so that
//! throughput ratios below 1 and latency ratios above 1 both stay readable.

use std::fmt::Write as _;

use crate::report::{fmt_num, Report};

const COLORS: [&str; 7] = [
    "#8c8c8c", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];
const BAR: f64 = 18.0;
const GAP: f64 = 34.0;
const LEFT: f64 = 80.0;
const TOP: f64 = 56.0;
const PLOT_H: f64 = 300.0;
const BOTTOM: f64 = 70.0;
const LEGEND_W: f64 = 170.0;

/// One bar: normalized median, min and max.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bar {
    median: f64,
    min: f64,
    max: f64,
}

/// Per scenario (label, higher-is-better), per measured column, its bar if measured.
type Groups = Vec<(String, Vec<Option<Bar>>)>;

/// Normalizes every cell of `report` to the baseline column; returns the baseline's
/// name and the groups.
fn normalize(report: &Report) -> (&'static str, Vec<&'static str>, Groups) {
    let names = report.measured();
    let base = if names.contains(&"bare-veth") {
        "bare-veth"
    } else {
        names.first().copied().unwrap_or("bare-veth")
    };
    let groups = report
        .scenarios
        .iter()
        .map(|s| {
            let b = s.results.get(base).and_then(|c| c.value).map(|v| v.median);
            let bars = names
                .iter()
                .map(|n| {
                    let v = s.results.get(n)?.value?;
                    let b = b.filter(|b| *b > 0.0)?;
                    let bar = Bar {
                        median: v.median / b,
                        min: v.min / b,
                        max: v.max / b,
                    };
                    (bar.min > 0.0 && bar.median.is_finite() && bar.max.is_finite()).then_some(bar)
                })
                .collect();
            let better = if s.higher_is_better {
                "higher"
            } else {
                "lower"
            };
            (format!("{}|{better} is better", s.label), bars)
        })
        .collect();
    (base, names, groups)
}

/// The decades `[lo, hi]` (as powers of ten) covering every bar and 1.
fn decades(groups: &Groups) -> (i32, i32) {
    let vals = groups
        .iter()
        .flat_map(|(_, bars)| bars.iter().flatten())
        .flat_map(|b| [b.min, b.max]);
    let (mut lo, mut hi) = (0i32, 0i32);
    for v in vals {
        let l = v.log10();
        lo = lo.min(l.floor() as i32);
        hi = hi.max(l.ceil() as i32);
    }
    if lo == hi {
        hi = lo + 1;
    }
    (lo, hi)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart for `report`.
pub(crate) fn render(report: &Report) -> String {
    let (base, names, groups) = normalize(report);
    let (lo, hi) = decades(&groups);
    let group_w = names.len() as f64 * BAR + GAP;
    let plot_w = (groups.len() as f64 * group_w).max(200.0);
    let (w, h) = (LEFT + plot_w + LEGEND_W, TOP + PLOT_H + BOTTOM);
    let y = |v: f64| TOP + PLOT_H * (f64::from(hi) - v.log10()) / f64::from(hi - lo);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">pd-bench: median per \
         scenario relative to {} (log scale, whiskers: min-max of {} runs)</text>\n",
        w / 2.0,
        esc(base),
        report.config.repeat
    );
    axis(&mut s, lo, hi, plot_w, &y, base);
    for (gi, (label, bars)) in groups.iter().enumerate() {
        let x0 = LEFT + gi as f64 * group_w + GAP / 2.0;
        for (bi, bar) in bars.iter().enumerate() {
            let Some(b) = bar else { continue };
            let x = x0 + bi as f64 * BAR;
            let color = COLORS[bi % COLORS.len()];
            let (top, bottom) = (y(b.median), TOP + PLOT_H);
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\">\
                 <title>{}: {}</title></rect>",
                BAR - 2.0,
                (bottom - top).max(0.0),
                esc(names[bi]),
                fmt_num(b.median)
            );
            let cx = x + (BAR - 2.0) / 2.0;
            let _ = writeln!(
                s,
                "<path d=\"M{cx:.1} {:.1}V{:.1}M{:.1} {:.1}h6M{:.1} {:.1}h6\" stroke=\"black\"/>",
                y(b.max),
                y(b.min),
                cx - 3.0,
                y(b.max),
                cx - 3.0,
                y(b.min)
            );
        }
        let (name, note) = label.split_once('|').unwrap_or((label, ""));
        let cx = x0 + names.len() as f64 * BAR / 2.0;
        let _ = writeln!(
            s,
            "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
             <text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\" \
             fill=\"#555\">{}</text>",
            TOP + PLOT_H + 18.0,
            esc(name),
            TOP + PLOT_H + 32.0,
            esc(note)
        );
    }
    legend(&mut s, &names, LEFT + plot_w + 20.0);
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">scenario</text>\n</svg>",
        LEFT + plot_w / 2.0,
        h - 10.0
    );
    s
}

/// The y axis with a gridline per decade, its label, and the dashed line at 1.
fn axis(s: &mut String, lo: i32, hi: i32, plot_w: f64, y: &dyn Fn(f64) -> f64, base: &str) {
    for d in lo..=hi {
        let v = 10f64.powi(d);
        let yy = y(v);
        let label = if d >= 0 {
            format!("{v:.0}")
        } else {
            format!("{v}")
        };
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label}x</text>",
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0
        );
    }
    let one = y(1.0);
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{one:.1}\" y2=\"{one:.1}\" stroke=\"black\" \
         stroke-dasharray=\"4 3\"/>\n\
         <line x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{:.1}\" stroke=\"black\"/>\n\
         <line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\n\
         <text transform=\"translate(18 {:.1}) rotate(-90)\" text-anchor=\"middle\">\
         median / median of {} (log)</text>",
        LEFT + plot_w,
        TOP + PLOT_H,
        LEFT + plot_w,
        TOP + PLOT_H,
        TOP + PLOT_H,
        TOP + PLOT_H / 2.0,
        esc(base)
    );
}

fn legend(s: &mut String, names: &[&str], x: f64) {
    for (i, n) in names.iter().enumerate() {
        let yy = TOP + 10.0 + i as f64 * 20.0;
        let _ = writeln!(
            s,
            "<rect x=\"{x:.1}\" y=\"{yy:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            COLORS[i % COLORS.len()],
            x + 18.0,
            yy + 10.0,
            esc(n)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::example;

    #[test]
    fn normalized_to_bare_veth() {
        let r = example();
        let (base, names, groups) = normalize(&r);
        assert_eq!(base, "bare-veth");
        assert_eq!(names, ["bare-veth", "portdistrict", "wireguard-go"]);
        let tcp = &groups[0].1;
        assert_eq!(tcp[0].unwrap().median, 1.0);
        assert_eq!(tcp[1].unwrap().median, 5.0 / 21.0);
        assert_eq!(tcp[1].unwrap().max, 6.0 / 21.0);
        // No bare-veth ping sample: nothing to normalize against.
        assert!(groups[4].1.iter().all(Option::is_none));
        // Bare veth's own max (22/21) is just above 1: one decade up.
        assert_eq!(decades(&groups), (-1, 1));
    }

    #[test]
    fn renders_well_formed_svg() {
        let svg = render(&example());
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            svg.matches("<rect").count(),
            1 + 3 + 3,
            "background, bars, legend"
        );
        for needle in [
            "portdistrict",
            "wireguard-go",
            "TCP 1 stream",
            "higher is better",
            "0.1x",
            "1x",
        ] {
            assert!(svg.contains(needle), "missing {needle}");
        }
    }
}
