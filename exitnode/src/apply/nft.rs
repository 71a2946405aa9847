//! The nftables part of applying a plan: one `nft -f -` transaction that replaces the
//! plan's table, read back with `nft -j list table` and compared whole (chains, sets
//! with their elements, rules in order) with the same script loaded into a new, empty
//! network namespace. `nft` runs with `LC_ALL=C`; its failures are reported with its
//! exit status and stderr, never recognised by their text.

use super::ApplyError;
use crate::policy::Plan;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

/// Runs `argv` with `stdin` fed in; returns stdout.
pub(super) fn run(argv: &[&str], stdin: Option<&str>) -> Result<String, ApplyError> {
    let cmd = argv.join(" ");
    let spawn = |source| ApplyError::Spawn {
        cmd: cmd.clone(),
        source,
    };
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        return Err(ApplyError::Failed {
            cmd,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Replaces the plan's nftables table in one transaction and verifies it.
pub fn apply_nft(plan: &Plan) -> Result<(), ApplyError> {
    apply_table(plan.nft_table, &plan.nft)
}

/// Reads the plan's table back and checks that it is, whole, what the plan's script
/// loads: the same chains, sets (with elements) and rules in the same order.
pub fn verify_nft(plan: &Plan) -> Result<(), ApplyError> {
    verify_table(plan.nft_table, &plan.nft)
}

/// Loads `script` (which replaces the `inet` table `table`) in one transaction and
/// verifies the table as [`verify_table`] does.
pub fn apply_table(table: &str, script: &str) -> Result<(), ApplyError> {
    run(&["nft", "-f", "-"], Some(script))?;
    verify_table(table, script)
}

/// Reads the `inet` table `table` back and checks that it is, whole, what `script`
/// loads into an empty ruleset.
pub fn verify_table(table: &str, script: &str) -> Result<(), ApplyError> {
    let bad = |problem: String| ApplyError::Verify {
        table: table.to_owned(),
        problem,
    };
    let listed = run(&["nft", "-j", "list", "table", "inet", table], None)?;
    let got = TableModel::parse(&listed).map_err(|e| bad(format!("unreadable listing: {e}")))?;
    let want = expected(table, script)?;
    match got.difference(&want) {
        None => Ok(()),
        Some(problem) => Err(bad(problem)),
    }
}

/// The table as the kernel holds it once the script is loaded, from a new, empty
/// network namespace.
fn expected(table: &str, script: &str) -> Result<TableModel, ApplyError> {
    let listed = portdistrict_netlink::netns::run_in_new(|| {
        run(&["nft", "-f", "-"], Some(script))?;
        run(&["nft", "-j", "list", "table", "inet", table], None)
    })
    .map_err(|source| ApplyError::Netlink {
        op: "a new network namespace for the expected ruleset".to_owned(),
        source,
    })??;
    TableModel::parse(&listed).map_err(|e| ApplyError::Verify {
        table: table.to_owned(),
        problem: format!("unreadable listing of the script: {e}"),
    })
}

/// Deletes `table` (family `inet`); a table that is not there is no error.
pub fn remove_nft(table: &str) -> Result<(), ApplyError> {
    // `destroy` (nft >= 1.0.8) would do; `add` then `delete` works everywhere.
    let script = format!("table inet {table}\ndelete table inet {table}\n");
    run(&["nft", "-f", "-"], Some(&script)).map(|_| ())
}

/// One table of an `nft -j list table` listing without what changes while it runs
/// (handles, counter values), keyed by name; rules in order per chain.
#[derive(Debug, Default, PartialEq)]
pub(super) struct TableModel {
    chains: BTreeMap<String, Value>,
    sets: BTreeMap<String, Value>,
    rules: BTreeMap<String, Vec<Value>>,
}

impl TableModel {
    /// Parses a listing.
    pub(super) fn parse(json: &str) -> Result<TableModel, serde_json::Error> {
        let v: Value = serde_json::from_str(json)?;
        let mut model = TableModel::default();
        for item in v["nftables"].as_array().into_iter().flatten() {
            if let Some(chain) = item.get("chain") {
                let name = chain["name"].as_str().unwrap_or_default().to_owned();
                model.rules.entry(name.clone()).or_default();
                model.chains.insert(name, normalize(chain));
            } else if let Some(set) = item.get("set") {
                let name = set["name"].as_str().unwrap_or_default().to_owned();
                let mut set = normalize(set);
                if let Some(elems) = set.get_mut("elem").and_then(Value::as_array_mut) {
                    elems.sort_by_key(Value::to_string);
                }
                model.sets.insert(name, set);
            } else if let Some(rule) = item.get("rule") {
                let chain = rule["chain"].as_str().unwrap_or_default().to_owned();
                model.rules.entry(chain).or_default().push(normalize(rule));
            }
        }
        Ok(model)
    }

    /// What differs from `want`, in words; `None` when equal.
    pub(super) fn difference(&self, want: &TableModel) -> Option<String> {
        if self == want {
            return None;
        }
        let names = |m: &BTreeMap<String, Value>| m.keys().cloned().collect::<Vec<_>>();
        if self.chains.keys().ne(want.chains.keys()) {
            return Some(format!(
                "chains {:?}, expected {:?}",
                names(&self.chains),
                names(&want.chains)
            ));
        }
        if self.sets.keys().ne(want.sets.keys()) {
            return Some(format!(
                "sets {:?}, expected {:?}",
                names(&self.sets),
                names(&want.sets)
            ));
        }
        for (name, chain) in &self.chains {
            if Some(chain) != want.chains.get(name) {
                return Some(format!(
                    "chain {name} is {chain}, expected {}",
                    want.chains[name]
                ));
            }
        }
        for (name, set) in &self.sets {
            if Some(set) != want.sets.get(name) {
                return Some(format!("set {name} is {set}, expected {}", want.sets[name]));
            }
        }
        for (chain, rules) in &self.rules {
            let expected = want.rules.get(chain).map_or(&[][..], Vec::as_slice);
            if rules.len() != expected.len() {
                return Some(format!(
                    "chain {chain} holds {} rules, expected {}",
                    rules.len(),
                    expected.len()
                ));
            }
            if let Some(i) = rules.iter().zip(expected).position(|(a, b)| a != b) {
                return Some(format!(
                    "rule {i} of chain {chain} is {}, expected {}",
                    rules[i], expected[i]
                ));
            }
        }
        Some("the listings differ".to_owned())
    }
}

/// `v` without `handle` keys and with counters' values zeroed, recursively.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != "handle")
                .map(|(k, v)| match k.as_str() {
                    "counter" if v.is_object() => (k.clone(), Value::Null),
                    _ => (k.clone(), normalize(v)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "t", "handle": 2}},
        {"set": {"family": "inet", "name": "s", "table": "t", "type": "ipv4_addr", "handle": 2,
                 "flags": ["interval"], "elem": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, "1.2.3.4"]}},
        {"chain": {"family": "inet", "table": "t", "name": "output", "handle": 1, "type": "filter",
                   "hook": "output", "prio": 0, "policy": "drop"}},
        {"chain": {"family": "inet", "table": "t", "name": "forward", "handle": 5, "type": "filter",
                   "hook": "forward", "prio": 0, "policy": "drop"}},
        {"rule": {"family": "inet", "table": "t", "chain": "output", "handle": 3,
                  "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oif"}}, "right": "lo"}}, {"accept": null}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "output", "handle": 4,
                  "expr": [{"counter": {"packets": 7, "bytes": 700}}, {"drop": null}]}}]}"#;

    fn model(text: &str) -> TableModel {
        TableModel::parse(text).unwrap()
    }

    #[test]
    fn equal_tables_ignore_handles_counters_and_element_order() {
        let other = LISTING
            .replace("\"handle\": 4", "\"handle\": 40")
            .replace(
                "\"packets\": 7, \"bytes\": 700",
                "\"packets\": 0, \"bytes\": 0",
            )
            .replace(
                r#"[{"prefix": {"addr": "10.0.0.0", "len": 8}}, "1.2.3.4"]"#,
                r#"["1.2.3.4", {"prefix": {"addr": "10.0.0.0", "len": 8}}]"#,
            );
        assert_eq!(model(LISTING).difference(&model(&other)), None);
        assert_eq!(model(LISTING).rules["forward"], Vec::<Value>::new());
        assert!(TableModel::parse("not json").is_err());
    }

    #[test]
    fn any_change_is_a_difference() {
        let base = model(LISTING);
        let wants = ["chain output", "rule 0 of chain output", "set s", "chains"];
        let edits = [
            LISTING.replacen("\"policy\": \"drop\"", "\"policy\": \"accept\"", 1),
            LISTING.replace(r#""right": "lo""#, r#""right": "eth0""#),
            LISTING.replace("\"1.2.3.4\"", "\"1.2.3.5\""),
            LISTING.replace("\"name\": \"forward\"", "\"name\": \"input\""),
        ];
        for (want, edited) in wants.iter().zip(edits) {
            let problem = model(&edited).difference(&base).expect("a difference");
            assert!(problem.contains(want), "{problem} should name {want}");
        }
        // A rule missing or in another order.
        let dropped = LISTING.replace(r#"{"accept": null}"#, r#"{"drop": null}"#);
        assert!(model(&dropped).difference(&base).is_some());
        let mut fewer = model(LISTING);
        fewer.rules.get_mut("output").unwrap().pop();
        let problem = fewer.difference(&base).unwrap();
        assert!(problem.contains("holds 1 rules, expected 2"), "{problem}");
    }

    #[test]
    fn a_missing_binary_is_a_clear_error() {
        let e = run(&["/nonexistent/nft"], None).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/nft"), "{e}");
        assert!(matches!(e, ApplyError::Spawn { .. }));
        let e = run(&["false"], None).unwrap_err();
        assert!(matches!(e, ApplyError::Failed { .. }), "{e}");
    }
}
