//! The rendered plans of example policies, compared with the files in
//! `tests/snapshots/`. A change to the rules shows up as a diff of those files in
//! review; `UPDATE_SNAPSHOTS=1 cargo test -p portdistrict-exitnode` rewrites them.

use portdistrict_exitnode::policy::{lockdown_plan, ConsumerPolicy, ProviderPolicy};
use std::path::PathBuf;

fn check(name: &str, got: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, got).expect("writing the snapshot");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_SNAPSHOTS=1 creates it)", path.display()));
    assert_eq!(
        got, want,
        "{name} changed; review and run with UPDATE_SNAPSHOTS=1"
    );
}

fn consumer() -> ConsumerPolicy {
    ConsumerPolicy {
        tunnel: "pduse0".into(),
        fwmark: 0xca6c,
        table: 51820,
        endpoints: vec!["203.0.113.5:51820".parse().unwrap()],
        channel_port: Some(51820),
        inner_v4: "100.64.0.2".parse().unwrap(),
        inner_v6: Some("fd7a:115c:a1e0::2".parse().unwrap()),
        resolver: "100.64.0.1".parse().unwrap(),
        allow_lan: false,
    }
}

#[test]
fn consumer_system_mode() {
    check("consumer.txt", &consumer().plan().unwrap().render());
}

#[test]
fn consumer_allow_lan_without_ipv6() {
    let mut p = consumer();
    p.allow_lan = true;
    p.inner_v6 = None;
    p.endpoints.push("[2001:db8::5]:51820".parse().unwrap());
    check("consumer-lan-v4only.txt", &p.plan().unwrap().render());
}

#[test]
fn consumer_lockdown() {
    check("lockdown.txt", &lockdown_plan().render());
}

#[test]
fn provider() {
    check("provider.txt", &provider_policy().plan().unwrap().render());
}

fn provider_policy() -> ProviderPolicy {
    ProviderPolicy {
        tunnel: "pdexit0".into(),
        uplink: "eth0".into(),
        provider_v4: "100.64.0.1".parse().unwrap(),
        provider_v6: Some("fd7a:115c:a1e0::1".parse().unwrap()),
        consumers_v4: vec!["100.64.0.2".parse().unwrap()],
        consumers_v6: vec!["fd7a:115c:a1e0::2".parse().unwrap()],
        ipv6: true,
        negotiation_port: 51821,
        uplink_prefixes: vec![
            "203.0.113.0/24".parse().unwrap(),
            "2001:db8:5::/64".parse().unwrap(),
        ],
        allow_dest: Vec::new(),
        uplink_forwarded_v4: false,
        forwarded_v6: false,
    }
}

#[test]
fn provider_with_allow_dest() {
    let mut p = provider_policy();
    p.allow_dest = vec!["169.254.169.254/32".parse().unwrap()];
    check("provider-allow-dest.txt", &p.plan().unwrap().render());
}

/// docs/exit-nodes.md shows the rulesets we ship exactly as `exitnode` renders them.
#[test]
fn docs_show_the_shipped_rulesets() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let page =
        std::fs::read_to_string(root.join("../docs/exit-nodes.md")).expect("docs/exit-nodes.md");
    for name in ["consumer.txt", "lockdown.txt", "provider.txt"] {
        let snapshot =
            std::fs::read_to_string(root.join("tests/snapshots").join(name)).expect(name);
        assert!(
            page.contains(&format!("```text\n{snapshot}```")),
            "docs/exit-nodes.md does not show tests/snapshots/{name} as it is: copy it into its section \"The rulesets we ship\""
        );
    }
}
