//! Scraping a `--metrics-listen` endpoint inside a namespace, and a strict parser of
//! the Prometheus text format (version 0.0.4) for what comes back; `promtool check
//! metrics` (Debian's `prometheus`, installed by `cargo xtask setup`) checks it too
//! where it is installed.

use crate::cli::CliMachine;
use crate::netns::Netns;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

/// GETs `http://ADDR/PATH` from inside `ns`; prints the seconds it took on the
/// first line, then the body. Non-200 answers print their status instead.
const FETCH: &str = r#"
import sys, time, urllib.request, urllib.error
url = sys.argv[1]
t = time.monotonic()
try:
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    status = 200
except urllib.error.HTTPError as e:
    body, status = e.read().decode(), e.code
took = time.monotonic() - t
sys.stdout.write(f"{status} {took:.6f}\n{body}")
"#;

/// One scrape: the HTTP status, its duration as the client saw it, the body.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The HTTP status.
    pub status: u16,
    /// From the request to the last byte of the body.
    pub took: Duration,
    /// The body.
    pub body: String,
}

/// GETs `path` from `addr` (an `ADDR:PORT` inside `ns`).
pub fn scrape(ns: &Netns, addr: &str, path: &str) -> Scrape {
    let url = format!("http://{addr}{path}");
    let out = ns.exec(&["python3", "-c", FETCH, &url]);
    let (first, body) = out.split_once('\n').unwrap_or((&out, ""));
    let (status, took) = first
        .split_once(' ')
        .unwrap_or_else(|| panic!("scrape of {url}: {out:?}"));
    Scrape {
        status: status.parse().expect("a status"),
        took: Duration::from_secs_f64(took.parse().expect("seconds")),
        body: body.to_owned(),
    }
}

/// A parsed exposition: each family's type, and each sample's value by its name and
/// labels.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    /// Family name -> `counter` or `gauge`.
    pub types: BTreeMap<String, String>,
    /// (sample name, labels sorted by name) -> value.
    pub samples: BTreeMap<(String, Labels), f64>,
}

impl Exposition {
    /// The value of `name` with exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut l: Labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        l.sort();
        self.samples.get(&(name.to_owned(), l)).copied()
    }

    /// Every sample of `name`: its labels and value.
    pub fn all(&self, name: &str) -> Vec<(&[(String, String)], f64)> {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l.as_slice(), *v))
            .collect()
    }
}

fn valid_name(name: &str) -> bool {
    let mut b = name.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// Parses `text` strictly: `# HELP` and `# TYPE` once per family and before its
/// samples, types `counter` or `gauge`, counters named `*_total`, each sample named
/// as its family with valid quoted labels and a number, no sample twice, a newline
/// at the end. Panics with the line at fault.
pub fn parse(text: &str) -> Exposition {
    assert!(
        text.ends_with('\n'),
        "the exposition must end with a newline"
    );
    let mut e = Exposition::default();
    let mut helped = std::collections::BTreeSet::new();
    let mut current: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let at = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            assert!(valid_name(name), "{}", at("bad name"));
            assert!(helped.insert(name.to_owned()), "{}", at("HELP twice"));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("{}", at("TYPE")));
            assert!(valid_name(name), "{}", at("bad name"));
            assert!(matches!(kind, "counter" | "gauge"), "{}", at("type"));
            assert!(
                kind != "counter" || name.ends_with("_total"),
                "{}",
                at("counter without _total")
            );
            assert!(helped.contains(name), "{}", at("TYPE without HELP"));
            let fresh = e.types.insert(name.to_owned(), kind.to_owned()).is_none();
            assert!(fresh, "{}", at("TYPE twice"));
            current = Some(name.to_owned());
        } else if line.starts_with('#') || line.is_empty() {
            panic!("{}", at("unexpected comment or blank line"));
        } else {
            let (name, labels, value) = sample(line).unwrap_or_else(|why| panic!("{}", at(&why)));
            assert_eq!(
                Some(&name),
                current.as_ref(),
                "{}",
                at("sample outside its family")
            );
            assert!(value.is_finite(), "{}", at("not a finite number"));
            let fresh = e.samples.insert((name, labels), value).is_none();
            assert!(fresh, "{}", at("sample twice"));
        }
    }
    e
}

/// A sample's labels: (name, value), sorted by name.
type Labels = Vec<(String, String)>;

/// `name{k="v",...} value` -> its parts, labels sorted.
fn sample(line: &str) -> Result<(String, Labels, f64), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err("bad sample name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut r = r;
        loop {
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = r.find("=\"").ok_or("label without =\"")?;
            let key = &r[..eq];
            if !valid_name(key) {
                return Err(format!("bad label name {key:?}"));
            }
            let mut value = String::new();
            let mut chars = r[eq + 2..].char_indices();
            let end = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (j, '"') => break eq + 2 + j + 1,
                    (_, '\\') => match chars.next().ok_or("bad escape")?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    (_, '\n') => return Err("newline in a label value".into()),
                    (_, c) => value.push(c),
                }
            };
            labels.push((key.to_owned(), value));
            r = &r[end..];
            r = r.strip_prefix(',').unwrap_or(r);
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value: f64 = value.parse().map_err(|_| format!("bad value {value:?}"))?;
    let mut sorted = labels.clone();
    sorted.sort();
    sorted.dedup_by(|a, b| a.0 == b.0);
    if sorted.len() != labels.len() {
        return Err("a label twice".into());
    }
    Ok((name.to_owned(), sorted, value))
}

/// `promtool check metrics` on `text`: `Some(true)` when it passes (its lint
/// warnings are printed, not failures: they concern naming taste), `Some(false)` is
/// never returned (a failure panics), `None` when promtool is not installed (a
/// visible message says the check was skipped).
pub fn promtool_check(text: &str) -> Option<bool> {
    let Some(promtool) = portdistrict_testkit::process::find_program("promtool", &[]) else {
        eprintln!(
            "SKIPPED promtool check: promtool not installed (Debian package prometheus; `cargo xtask setup` installs it)"
        );
        return None;
    };
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("promtool's output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool exits 3 for lint findings only, 1 when the text does not parse.
    let code = out.status.code();
    assert!(
        matches!(code, Some(0 | 3)),
        "promtool check metrics failed ({code:?}): {said}\n{text}"
    );
    if !said.trim().is_empty() {
        eprintln!("promtool check metrics says:\n{said}");
    }
    Some(true)
}

/// Scrapes `exit serve`'s endpoint at `addr` in `provider`'s namespace and checks its
/// consumers and live invites against `exit list --json` there; returns the parsed
/// metrics.
pub fn exit_metrics_match_the_list(provider: &CliMachine, addr: &str) -> Exposition {
    let s = scrape(&provider.ns, addr, "/metrics");
    assert_eq!(s.status, 200, "{}", s.body);
    promtool_check(&s.body);
    let m = parse(&s.body);
    let list: serde_json::Value =
        serde_json::from_str(&provider.run_ok(&["exit", "list", "--json"])).expect("JSON");
    let consumers = list["consumers"].as_array().expect("consumers").len();
    let live = list["invites"]
        .as_array()
        .expect("invites")
        .iter()
        .filter(|i| i["state"] == "live")
        .count();
    let got = |name: &str| m.get(name, &[]);
    assert_eq!(
        got("portdistrict_exit_consumers"),
        Some(consumers as f64),
        "{}",
        s.body
    );
    assert_eq!(
        got("portdistrict_exit_invites_live"),
        Some(live as f64),
        "{}",
        s.body
    );
    m
}
