//! The handle's operations in a fresh network namespace (root only), checked against
//! what `ip` lists.

use super::*;
use crate::testutil::{in_fresh_netns, ip, ip_output};
use crate::types::RouteKind;

fn listing(args: &[&str]) -> String {
    String::from_utf8_lossy(&ip_output(args).stdout).into_owned()
}

#[test]
fn links_addresses_routes_and_rules() {
    in_fresh_netns(|| {
        let mut h = Handle::open().unwrap();
        ip(&["link", "add", "pdnl0", "type", "bridge"]);
        assert!(h.link_exists("pdnl0").unwrap());
        assert!(!h.link_exists("pdnl9").unwrap());
        assert!(matches!(h.link("pdnl9"), Err(Error::NoSuchLink(_))));
        let index = h.link_index("pdnl0").unwrap();
        h.link_set_mtu("pdnl0", 1300).unwrap();
        h.link_set_up("pdnl0", true).unwrap();
        let link = h.link("pdnl0").unwrap();
        assert_eq!(link.mtu, Some(1300));
        assert_ne!(link.flags & libc::IFF_UP as u32, 0);

        let v4 = AddressSpec {
            ifindex: index,
            addr: "100.64.0.2".parse().unwrap(),
            prefix_len: 32,
            nodad: false,
            deprecated: false,
        };
        let v6 = AddressSpec {
            ifindex: index,
            addr: "fd00::2".parse().unwrap(),
            prefix_len: 128,
            nodad: true,
            deprecated: false,
        };
        h.address(Verb::Add, &v4).unwrap();
        h.address(Verb::Add, &v6).unwrap();
        assert!(h.address(Verb::Add, &v4).unwrap_err().is_exists());
        h.address(Verb::Replace, &v4).unwrap();
        let listed = listing(&["addr", "show", "dev", "pdnl0"]);
        assert!(
            listed.contains("100.64.0.2/32") && listed.contains("fd00::2/128"),
            "{listed}"
        );
        let got: Vec<_> = h
            .link_addresses("pdnl0")
            .unwrap()
            .iter()
            .map(|a| a.local)
            .collect();
        assert!(got.contains(&v4.addr) && got.contains(&v6.addr), "{got:?}");
        assert!(h
            .addresses(None)
            .unwrap()
            .iter()
            .any(|a| a.is_usable_global() && a.local == v4.addr));
        // A deprecated address: listed as such, valid forever, preferred for nothing.
        let dep = AddressSpec {
            ifindex: index,
            addr: "fd00::3".parse().unwrap(),
            prefix_len: 128,
            nodad: true,
            deprecated: true,
        };
        h.address(Verb::Replace, &dep).unwrap();
        let listed = listing(&["-6", "addr", "show", "dev", "pdnl0"]);
        let line = listed
            .lines()
            .skip_while(|l| !l.contains("fd00::3/128"))
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            line.contains("deprecated") && line.contains("valid_lft forever preferred_lft 0sec"),
            "{listed}"
        );
        h.address(Verb::Del, &dep).unwrap();

        let route = Route {
            family: Family::V4,
            dst: None,
            oif: Some(index),
            table: 51820,
            kind: RouteKind::Unicast,
        };
        h.route(Verb::Add, &route).unwrap();
        assert!(h.route(Verb::Add, &route).unwrap_err().is_exists());
        h.route(Verb::Replace, &route).unwrap();
        assert_eq!(
            listing(&["-4", "route", "show", "table", "51820"]).trim(),
            "default dev pdnl0 scope link"
        );
        assert!(h.routes(Family::V4).unwrap().contains(&route));
        let hole = Route {
            family: Family::V6,
            dst: Some(("fd01::".parse().unwrap(), 64)),
            oif: None,
            table: 254,
            kind: RouteKind::Blackhole,
        };
        h.route(Verb::Add, &hole).unwrap();
        // The kernel lists an IPv6 blackhole on `lo`.
        let v6 = h.routes(Family::V6).unwrap();
        assert!(
            v6.iter()
                .any(|r| r.dst == hole.dst && r.kind == RouteKind::Blackhole),
            "{v6:?}"
        );
        h.route(Verb::Del, &hole).unwrap();
        h.route(Verb::Del, &route).unwrap();
        assert!(h.route(Verb::Del, &route).unwrap_err().is_not_found());

        let rule = Rule {
            family: Family::V6,
            priority: Some(32761),
            fwmark: Some(0xca6c),
            invert: true,
            table: 51820,
            suppress_prefixlength: None,
        };
        let suppress = Rule {
            family: Family::V6,
            priority: Some(32760),
            fwmark: None,
            invert: false,
            table: 254,
            suppress_prefixlength: Some(0),
        };
        h.rule(Verb::Add, &rule).unwrap();
        h.rule(Verb::Add, &suppress).unwrap();
        let listed = listing(&["-6", "rule", "show"]);
        assert!(
            listed.contains("32761:\tnot from all fwmark 0xca6c lookup 51820"),
            "{listed}"
        );
        assert!(
            listed.contains("32760:\tfrom all lookup main suppress_prefixlength 0"),
            "{listed}"
        );
        let rules = h.rules(Family::V6).unwrap();
        assert!(
            rules.contains(&rule) && rules.contains(&suppress),
            "{rules:?}"
        );
        h.rule(Verb::Del, &rule).unwrap();
        h.rule(Verb::Del, &suppress).unwrap();
        assert!(h.rule(Verb::Del, &rule).unwrap_err().is_not_found());

        h.address_flush("pdnl0").unwrap();
        assert!(h.link_addresses("pdnl0").unwrap().is_empty());
        h.link_del("pdnl0").unwrap();
        assert!(!h.link_exists("pdnl0").unwrap());
    });
}

#[test]
fn run_in_enters_a_named_namespace() {
    let name = format!("pdnl{}", std::process::id());
    ip(&["netns", "add", &name]);
    let got = crate::netns::run_in(&name, || {
        let mut h = Handle::open().unwrap();
        h.link_set_up("lo", true).unwrap();
        ip(&["link", "add", "pdnlx", "type", "bridge"]);
        h.link_exists("pdnlx").unwrap()
    });
    let here = Handle::open().unwrap().link_exists("pdnlx").unwrap();
    ip(&["netns", "del", &name]);
    assert!(got.unwrap(), "created inside");
    assert!(!here, "not outside");
    assert!(crate::netns::run_in("pd-no-such-ns", || ()).is_err());
}
