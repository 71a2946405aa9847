//! The typed `ip` operations of a plan: routes, rules and addresses, each with a verb.
//!
//! An [`IpOp`] renders in `ip` syntax (`ip -4 rule add priority 32761 not fwmark
//! 0xca6c table 51820`): that text is what snapshots compare, `--dry-run` prints and
//! an [`crate::apply::Undo`] stores (as `{"family", "args"}`, the form state files have
//! always had), and [`IpOp::parse`] reads it back. Applying one is the shell's job
//! (netlink, in [`crate::apply`]).

use super::{Cidr, Family};
use std::fmt;
use std::net::IpAddr;

/// What an operation does with its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Create it (an identical one already there is an error).
    Add,
    /// Create it or replace the one with the same key (routes, addresses).
    Replace,
    /// Delete it.
    Del,
}

impl Verb {
    fn word(self) -> &'static str {
        match self {
            Verb::Add => "add",
            Verb::Replace => "replace",
            Verb::Del => "del",
        }
    }
}

/// A routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// The main table (254).
    Main,
    /// A numbered table.
    Id(u32),
}

impl Table {
    /// The table's number.
    pub fn id(self) -> u32 {
        match self {
            Table::Main => 254,
            Table::Id(n) => n,
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Table::Main => f.write_str("main"),
            Table::Id(n) => write!(f, "{n}"),
        }
    }
}

/// `ip route VERB DST dev DEV table TABLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteOp {
    /// The family.
    pub family: Family,
    /// The destination; `None` is `default`.
    pub dst: Option<Cidr>,
    /// The output interface.
    pub dev: String,
    /// The table.
    pub table: Table,
}

/// `ip rule VERB priority P [not] [fwmark M] table T [suppress_prefixlength L]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOp {
    /// The family.
    pub family: Family,
    /// The priority.
    pub priority: u32,
    /// Inverts the match.
    pub not: bool,
    /// Match this firewall mark.
    pub fwmark: Option<u32>,
    /// The table to look up.
    pub table: Table,
    /// Ignore the table's routes with a prefix this long or shorter.
    pub suppress_prefixlength: Option<u32>,
}

/// `ip addr VERB ADDR/LEN dev DEV [nodad]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressOp {
    /// The interface.
    pub dev: String,
    /// The address.
    pub addr: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// No duplicate address detection (IPv6).
    pub nodad: bool,
}

/// The object of an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// A route.
    Route(RouteOp),
    /// A policy rule.
    Rule(RuleOp),
    /// An interface address.
    Address(AddressOp),
}

/// One operation of a plan: a verb on a route, rule or address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "IpCommand", try_from = "IpCommand")]
pub struct IpOp {
    /// What to do.
    pub verb: Verb,
    /// With what.
    pub object: Object,
}

impl IpOp {
    /// `verb` applied to `object`.
    pub fn new(verb: Verb, object: Object) -> IpOp {
        IpOp { verb, object }
    }

    /// The same object with another verb.
    pub fn with_verb(&self, verb: Verb) -> IpOp {
        IpOp {
            verb,
            object: self.object.clone(),
        }
    }

    /// The family it applies to.
    pub fn family(&self) -> Family {
        match &self.object {
            Object::Route(r) => r.family,
            Object::Rule(r) => r.family,
            Object::Address(a) => match a.addr {
                IpAddr::V4(_) => Family::V4,
                IpAddr::V6(_) => Family::V6,
            },
        }
    }

    /// The `ip` arguments after the family flag.
    pub fn args(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        let mut push = |s: &str| v.push(s.to_owned());
        let verb = self.verb.word();
        match &self.object {
            Object::Route(r) => {
                push("route");
                push(verb);
                push(&r.dst.map_or("default".to_owned(), |d| d.to_string()));
                push("dev");
                push(&r.dev);
                push("table");
                push(&r.table.to_string());
            }
            Object::Rule(r) => {
                push("rule");
                push(verb);
                push("priority");
                push(&r.priority.to_string());
                if r.not {
                    push("not");
                }
                if let Some(m) = r.fwmark {
                    push("fwmark");
                    push(&format!("{m:#x}"));
                }
                push("table");
                push(&r.table.to_string());
                if let Some(l) = r.suppress_prefixlength {
                    push("suppress_prefixlength");
                    push(&l.to_string());
                }
            }
            Object::Address(a) => {
                push("addr");
                push(verb);
                push(&format!("{}/{}", a.addr, a.prefix_len));
                push("dev");
                push(&a.dev);
                if a.nodad {
                    push("nodad");
                }
            }
        }
        v
    }

    /// Reads back what [`IpOp::args`] wrote.
    pub fn parse(family: Family, args: &[String]) -> Result<IpOp, ParseError> {
        let bad = || ParseError(args.join(" "));
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        let (kind, verb, rest) = match words.as_slice() {
            [kind, verb, rest @ ..] => (*kind, *verb, rest),
            _ => return Err(bad()),
        };
        let verb = match verb {
            "add" => Verb::Add,
            "replace" => Verb::Replace,
            "del" => Verb::Del,
            _ => return Err(bad()),
        };
        let object = match kind {
            "route" => parse_route(family, rest),
            "rule" => parse_rule(family, rest),
            "addr" => parse_address(rest),
            _ => None,
        }
        .ok_or_else(bad)?;
        let op = IpOp { verb, object };
        if op.family() != family {
            return Err(bad());
        }
        Ok(op)
    }
}

/// Adds `addr/prefix_len` to `dev`; IPv6 without duplicate address detection (the
/// tunnel's addresses are ours alone, and a tentative address cannot be bound).
pub(super) fn address_add(dev: &str, addr: IpAddr, prefix_len: u8) -> IpOp {
    IpOp::new(
        Verb::Add,
        Object::Address(AddressOp {
            dev: dev.to_owned(),
            addr,
            prefix_len,
            nodad: addr.is_ipv6(),
        }),
    )
}

fn parse_table(word: &str) -> Option<Table> {
    match word {
        "main" => Some(Table::Main),
        n => n.parse().ok().map(Table::Id),
    }
}

fn parse_route(family: Family, rest: &[&str]) -> Option<Object> {
    let [dst, "dev", dev, "table", table] = rest else {
        return None;
    };
    let dst = match *dst {
        "default" => None,
        d => Some(d.parse::<Cidr>().ok()?),
    };
    Some(Object::Route(RouteOp {
        family,
        dst,
        dev: (*dev).to_owned(),
        table: parse_table(table)?,
    }))
}

fn parse_rule(family: Family, mut rest: &[&str]) -> Option<Object> {
    let mut rule = RuleOp {
        family,
        priority: 0,
        not: false,
        fwmark: None,
        table: Table::Main,
        suppress_prefixlength: None,
    };
    let mut seen_priority = false;
    while let Some((word, tail)) = rest.split_first() {
        rest = tail;
        let mut value = || -> Option<&str> {
            let (v, t) = rest.split_first()?;
            rest = t;
            Some(*v)
        };
        match *word {
            "priority" => {
                rule.priority = value()?.parse().ok()?;
                seen_priority = true;
            }
            "not" => rule.not = true,
            "fwmark" => {
                let v = value()?;
                rule.fwmark = Some(u32::from_str_radix(v.strip_prefix("0x")?, 16).ok()?);
            }
            "table" => rule.table = parse_table(value()?)?,
            "suppress_prefixlength" => rule.suppress_prefixlength = Some(value()?.parse().ok()?),
            _ => return None,
        }
    }
    seen_priority.then_some(Object::Rule(rule))
}

fn parse_address(rest: &[&str]) -> Option<Object> {
    let (cidr, dev, nodad) = match rest {
        [cidr, "dev", dev] => (cidr, dev, false),
        [cidr, "dev", dev, "nodad"] => (cidr, dev, true),
        _ => return None,
    };
    let (addr, len) = cidr.split_once('/')?;
    Some(Object::Address(AddressOp {
        dev: (*dev).to_owned(),
        addr: addr.parse().ok()?,
        prefix_len: len.parse().ok()?,
        nodad,
    }))
}

impl fmt::Display for IpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ip {} {}", self.family().flag(), self.args().join(" "))
    }
}

/// A stored `ip` command that is not one this crate writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an ip command of a plan: {0:?}")]
pub struct ParseError(String);

/// How an [`IpOp`] is stored: the family and the `ip` arguments (the form undo
/// records have always had on disk).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IpCommand {
    /// The family it applies to.
    pub family: Family,
    /// The arguments after the family flag, e.g. `["rule", "del", ...]`.
    pub args: Vec<String>,
}

impl From<IpOp> for IpCommand {
    fn from(op: IpOp) -> IpCommand {
        IpCommand {
            family: op.family(),
            args: op.args(),
        }
    }
}

impl TryFrom<IpCommand> for IpOp {
    type Error = ParseError;
    fn try_from(c: IpCommand) -> Result<IpOp, ParseError> {
        IpOp::parse(c.family, &c.args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops() -> Vec<IpOp> {
        vec![
            IpOp::new(
                Verb::Add,
                Object::Route(RouteOp {
                    family: Family::V4,
                    dst: None,
                    dev: "pduse0".into(),
                    table: Table::Id(51820),
                }),
            ),
            IpOp::new(
                Verb::Replace,
                Object::Route(RouteOp {
                    family: Family::V6,
                    dst: Some("fd00:1::/64".parse().unwrap()),
                    dev: "pd0".into(),
                    table: Table::Main,
                }),
            ),
            IpOp::new(
                Verb::Del,
                Object::Rule(RuleOp {
                    family: Family::V6,
                    priority: 32761,
                    not: true,
                    fwmark: Some(0xca6c),
                    table: Table::Id(51820),
                    suppress_prefixlength: None,
                }),
            ),
            IpOp::new(
                Verb::Add,
                Object::Rule(RuleOp {
                    family: Family::V4,
                    priority: 32760,
                    not: false,
                    fwmark: None,
                    table: Table::Main,
                    suppress_prefixlength: Some(0),
                }),
            ),
            IpOp::new(
                Verb::Add,
                Object::Address(AddressOp {
                    dev: "pduse0".into(),
                    addr: "fd7a:115c:a1e0::2".parse().unwrap(),
                    prefix_len: 128,
                    nodad: true,
                }),
            ),
        ]
    }

    #[test]
    fn renders_in_ip_syntax() {
        let text: Vec<String> = ops().iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "ip -4 route add default dev pduse0 table 51820",
                "ip -6 route replace fd00:1::/64 dev pd0 table main",
                "ip -6 rule del priority 32761 not fwmark 0xca6c table 51820",
                "ip -4 rule add priority 32760 table main suppress_prefixlength 0",
                "ip -6 addr add fd7a:115c:a1e0::2/128 dev pduse0 nodad",
            ]
        );
    }

    #[test]
    fn stored_form_reads_back() {
        for op in ops() {
            let json = serde_json::to_string(&op).unwrap();
            assert!(json.starts_with("{\"family\":"), "{json}");
            let back: IpOp = serde_json::from_str(&json).unwrap();
            assert_eq!(back, op);
        }
        // The form written before the operations were typed.
        let old = r#"{"family":"V6","args":["rule","del","priority","32761","not","fwmark","0xca6c","table","51820"]}"#;
        assert_eq!(serde_json::from_str::<IpOp>(old).unwrap(), ops()[2]);
        for bad in [
            r#"{"family":"V4","args":["rule","del","priority","x","table","1"]}"#,
            r#"{"family":"V4","args":["route","add","default"]}"#,
            r#"{"family":"V4","args":["link","del","pd0"]}"#,
            r#"{"family":"V4","args":["addr","add","fd00::1/64","dev","x"]}"#,
            r#"{"family":"V4","args":["rule","add","table","1"]}"#,
        ] {
            assert!(serde_json::from_str::<IpOp>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn with_verb_keeps_the_object() {
        let op = &ops()[0];
        let del = op.with_verb(Verb::Del);
        assert_eq!(del.object, op.object);
        assert_eq!(
            del.to_string(),
            "ip -4 route del default dev pduse0 table 51820"
        );
    }
}
