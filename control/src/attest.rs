//! `portdistrict attest verify`: an SEV-SNP report, its VCEK and the AMD chain
//! through the control core's verifier ([`portdistrict_control_core::attest`]), every
//! check printed with its outcome, and the report's fields.

use crate::args::{hex_bytes, parse_abi, parse_smt};
use anyhow::{bail, Context as _};
use portdistrict_control_core::attest::{self, Check, Expected, Report, Smt, Verdict};
use std::path::PathBuf;

/// The largest report, certificate or chain file read (a report is 1184 bytes, AMD's
/// certificates under 2 KiB each).
const MAX_FILE: u64 = 64 * 1024;

/// `attest verify` options.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyOptions {
    /// The report file.
    pub report: PathBuf,
    /// The VCEK (DER).
    pub vcek: PathBuf,
    /// The ASK and ARK (PEM).
    pub chain: PathBuf,
    /// What to expect.
    pub expected: Expected,
    /// Unix seconds to check validity at (`--now`; default: the clock).
    pub now: Option<u64>,
    /// Print JSON.
    pub json: bool,
}

/// `attest verify` on the command line (checked into [`VerifyOptions`]).
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The attestation report (binary, as the firmware returns it)
    #[arg(value_name = "REPORT")]
    pub report: PathBuf,
    /// The chip's VCEK certificate (DER)
    #[arg(long, value_name = "CERT")]
    pub vcek: PathBuf,
    /// The ASK and ARK certificates (PEM)
    #[arg(long, value_name = "PEM")]
    pub chain: PathBuf,
    /// The launch measurement the report must carry (96 hex digits)
    #[arg(long, value_name = "HEX")]
    pub measurement: Option<String>,
    /// The report data the report must carry (128 hex digits)
    #[arg(long, value_name = "HEX")]
    pub report_data: Option<String>,
    /// Check validity at this time instead of now (RFC 3339)
    #[arg(long, value_name = "RFC3339")]
    pub now: Option<String>,
    /// Another accepted AMD root key fingerprint (SHA-256, 64 hex digits), repeatable
    #[arg(long, value_name = "HEX")]
    pub root_fingerprint: Vec<String>,
    /// The lowest firmware ABI accepted
    #[arg(long, value_name = "MAJOR.MINOR")]
    pub min_abi: Option<String>,
    /// Whether SMT may be on (any) or must be off (forbidden)
    #[arg(long, value_name = "any|forbidden")]
    pub smt: Option<String>,
    /// The VM privilege level the report must come from (0 to 3)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=3))]
    pub vmpl: Option<u32>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

impl VerifyOptions {
    /// Parses the options of `attest verify` (see [`VerifyArgs`]), as on the command line.
    pub fn parse(args: &[&str]) -> anyhow::Result<VerifyOptions> {
        VerifyOptions::from_args(crate::args::parse_args("attest verify", args)?)
    }

    /// Checks `attest verify`'s options.
    pub fn from_args(a: VerifyArgs) -> anyhow::Result<VerifyOptions> {
        let mut expected = Expected::default();
        if let Some(m) = &a.measurement {
            expected.measurement = Some(hex_bytes::<48>("--measurement", m)?);
        }
        if let Some(d) = &a.report_data {
            expected.report_data = Some(hex_bytes::<64>("--report-data", d)?);
        }
        for r in &a.root_fingerprint {
            expected
                .extra_roots
                .push(hex_bytes::<32>("--root-fingerprint", r)?);
        }
        if let Some(v) = &a.min_abi {
            expected.min_abi = parse_abi(v)?;
        }
        if let Some(v) = &a.smt {
            expected.smt = parse_smt(v)?;
        }
        if let Some(v) = a.vmpl {
            expected.vmpl = v;
        }
        Ok(VerifyOptions {
            report: a.report,
            vcek: a.vcek,
            chain: a.chain,
            expected,
            now: a.now.as_deref().map(parse_rfc3339).transpose()?,
            json: a.json,
        })
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)` as Unix seconds.
pub fn parse_rfc3339(s: &str) -> anyhow::Result<u64> {
    let bad = || anyhow::anyhow!("--now {s}: not an RFC 3339 time (e.g. 2026-12-06T12:00:00Z)");
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> anyhow::Result<i64> {
        let t = s.get(r).ok_or_else(bad)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        t.parse().map_err(|_| bad())
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return Err(bad());
        }
        rest = &frac[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let oh: i64 = o[1..3].parse().map_err(|_| bad())?;
            let om: i64 = o[4..6].parse().map_err(|_| bad())?;
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return Err(bad()),
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    u64::try_from(t).map_err(|_| bad())
}

fn read(path: &PathBuf, what: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let f = std::fs::File::open(path)
        .with_context(|| format!("opening the {what} {}", path.display()))?;
    let mut b = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut b)
        .with_context(|| format!("reading the {what} {}", path.display()))?;
    if b.len() as u64 > MAX_FILE {
        bail!(
            "the {what} {} is larger than {MAX_FILE} bytes",
            path.display()
        );
    }
    Ok(b)
}

/// Runs the verification; returns what to print and whether every check passed.
pub fn verify(o: &VerifyOptions) -> anyhow::Result<(String, Verdict)> {
    let report = read(&o.report, "report")?;
    let vcek = read(&o.vcek, "VCEK")?;
    let chain = read(&o.chain, "chain")?;
    let now = o.now.unwrap_or_else(crate::exit::now);
    let v = attest::verify(&report, &vcek, &chain, &o.expected, now);
    let text = if o.json {
        serde_json::to_string_pretty(&json(&v, now))?
    } else {
        human(&v, now)
    };
    Ok((text, v))
}

fn policy_words(r: &Report) -> String {
    let p = r.policy;
    let mut w = vec![format!("ABI {}.{}", p.abi_major(), p.abi_minor())];
    for (on, name) in [
        (p.smt(), "SMT allowed"),
        (p.migrate_ma(), "migration agent allowed"),
        (p.debug(), "debug allowed"),
        (p.single_socket(), "single socket"),
    ] {
        if on {
            w.push(name.to_owned());
        }
    }
    format!("{:#x} ({})", p.0, w.join(", "))
}

fn human(v: &Verdict, now: u64) -> String {
    let mut s = match v.first_failure() {
        None => "verdict: ok\n".to_owned(),
        Some((c, e)) => format!("verdict: FAILED ({}: {e})\n", c.name()),
    };
    s.push_str(&format!("checked at: {now} (Unix seconds)\nchecks:\n"));
    for (c, o) in &v.checks {
        s.push_str(&format!("  {:<12} {o}\n", c.name()));
    }
    if let Some(r) = &v.report {
        s.push_str(&format!(
            "report:\n  version      {}\n  measurement  {}\n  policy       {}\n  vmpl         {}\n  reported tcb {}\n  chip id      {}\n  report data  {}\n",
            r.version,
            hex::encode(r.measurement),
            policy_words(r),
            r.vmpl,
            r.reported_tcb,
            hex::encode(r.chip_id),
            hex::encode(r.report_data),
        ));
    }
    s.truncate(s.trim_end().len());
    s
}

fn json(v: &Verdict, now: u64) -> serde_json::Value {
    let checks: serde_json::Map<String, serde_json::Value> = v
        .checks
        .iter()
        .map(|(c, o)| {
            (
                c.name().to_owned(),
                serde_json::Value::String(o.to_string()),
            )
        })
        .collect();
    let tcb = |t: attest::Tcb| {
        serde_json::json!({
            "bootloader": t.bootloader, "tee": t.tee, "snp": t.snp, "microcode": t.microcode
        })
    };
    serde_json::json!({
        "verdict": if v.passed() { "ok" } else { "failed" },
        "failed_check": v.first_failure().map(|(c, _)| c.name()),
        "now": now,
        "checks": checks,
        "check_order": Check::ALL.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "report": v.report.as_ref().map(|r| serde_json::json!({
            "version": r.version,
            "measurement": hex::encode(r.measurement),
            "policy": format!("{:#x}", r.policy.0),
            "policy_abi": format!("{}.{}", r.policy.abi_major(), r.policy.abi_minor()),
            "policy_debug": r.policy.debug(),
            "policy_smt": r.policy.smt(),
            "vmpl": r.vmpl,
            "guest_svn": r.guest_svn,
            "reported_tcb": tcb(r.reported_tcb),
            "current_tcb": tcb(r.current_tcb),
            "chip_id": hex::encode(r.chip_id),
            "report_data": hex::encode(r.report_data),
            "host_data": hex::encode(r.host_data),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_rfc3339("2025-01-01T00:00:00Z").unwrap(),
            1_735_689_600
        );
        assert_eq!(
            parse_rfc3339("2025-01-01T01:30:00.25+01:30").unwrap(),
            1_735_689_600
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T12:00:00Z").unwrap(),
            1_709_208_000
        );
        for bad in [
            "2025-01-01",
            "2025-13-01T00:00:00Z",
            "2025-01-01T00:00:00",
            "2025-01-01T00:00:00+0100",
            "x025-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_parse_and_name_what_is_wrong() {
        let o = VerifyOptions::parse(&[
            "r.bin",
            "--vcek",
            "v.der",
            "--chain",
            "c.pem",
            "--measurement",
            &"ab".repeat(48),
            "--smt",
            "forbidden",
            "--min-abi",
            "1.51",
            "--json",
        ])
        .unwrap();
        assert_eq!(o.expected.measurement, Some([0xab; 48]));
        assert_eq!(o.expected.smt, Smt::Forbidden);
        assert_eq!(o.expected.min_abi, (1, 51));
        assert!(o.json);
        for (args, needle) in [
            (&["r.bin", "--chain", "c"][..], "--vcek <CERT>"),
            (
                &[
                    "r.bin",
                    "--vcek",
                    "v",
                    "--chain",
                    "c",
                    "--measurement",
                    "ab",
                ][..],
                "1 bytes, expected 48",
            ),
            (
                &["r.bin", "--vcek", "v", "--chain", "c", "--bogus"][..],
                "unexpected argument '--bogus'",
            ),
            (&["--vcek", "v", "--chain", "c"][..], "<REPORT>"),
        ] {
            let e = VerifyOptions::parse(args).unwrap_err();
            assert!(format!("{e:#}").contains(needle), "{args:?}: {e:#}");
        }
    }
}

/// `exit grant` options.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantOptions {
    /// The exit's expected launch measurement.
    pub measurement: [u8; 48],
    /// Lowest guest ABI.
    pub min_abi: (u8, u8),
    /// SMT rule.
    pub smt: Smt,
    /// How long it pins.
    pub expires: std::time::Duration,
    /// The holder's node ID (`--to`), or anyone holding the grant.
    pub to: Option<String>,
    /// Write it here (0600) instead of printing it.
    pub out: Option<PathBuf>,
    /// How to unlock this identity.
    pub secret: crate::node::SecretOptions,
}

/// `exit grant` on the command line (checked into [`GrantOptions`]).
#[derive(Debug, Clone, clap::Args)]
pub struct GrantArgs {
    /// The exit image's launch measurement (96 hex digits)
    #[arg(long, value_name = "HEX")]
    pub measurement: String,
    /// The lowest firmware ABI accepted
    #[arg(long, value_name = "MAJOR.MINOR")]
    pub min_abi: Option<String>,
    /// Whether SMT may be on (any) or must be off (forbidden)
    #[arg(long, value_name = "any|forbidden")]
    pub smt: Option<String>,
    /// How long the grant is valid (s, m, h, d; at most 3650d)
    #[arg(long, value_name = "DURATION", default_value = "365d")]
    pub expires: String,
    /// The peer (node ID or namespace) the grant is for (default: whoever holds it)
    #[arg(long, value_name = "NODE")]
    pub to: Option<String>,
    /// Write the grant to this file (mode 0600) instead of printing it
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// How to unlock the identity.
    #[command(flatten)]
    pub secret: crate::node::PassphraseArg,
}

impl GrantOptions {
    /// Parses the options of `exit grant` (see [`GrantArgs`]), as on the command line.
    pub fn parse(args: &[&str]) -> anyhow::Result<GrantOptions> {
        GrantOptions::from_args(crate::args::parse_args("exit grant", args)?)
    }

    /// Checks `exit grant`'s options.
    pub fn from_args(a: GrantArgs) -> anyhow::Result<GrantOptions> {
        Ok(GrantOptions {
            measurement: hex_bytes::<48>("--measurement", &a.measurement)?,
            min_abi: a
                .min_abi
                .as_deref()
                .map(parse_abi)
                .transpose()?
                .unwrap_or((0, 0)),
            smt: a
                .smt
                .as_deref()
                .map(parse_smt)
                .transpose()?
                .unwrap_or(Smt::Any),
            expires: crate::parse_duration(
                &a.expires,
                std::time::Duration::from_secs(3650 * 86_400),
            )
            .with_context(|| format!("--expires {}", a.expires))?,
            to: a.to,
            out: a.out,
            secret: a.secret.into(),
        })
    }
}

/// `exit grant`: a grant signed with this identity's key, for the peer `--to` names
/// (or anyone holding it), printed or written to `--out` (0600).
pub fn grant(dirs: &crate::Dirs, o: &GrantOptions) -> anyhow::Result<String> {
    use portdistrict_control_core::attest::grant::Grant;
    let holder = match &o.to {
        None => None,
        Some(who) => {
            let peers = crate::node::load_peers(dirs)?;
            let i = peers.find(who).with_context(|| {
                format!("exit grant --to {who}: not a peer here (`peer add` it first)")
            })?;
            Some(peers.peers[i].identity.master)
        }
    };
    let (_, seed) = crate::node::unlock(dirs, &o.secret)?;
    let now = crate::exit::now();
    let g = Grant {
        issuer: [0; 32],
        holder,
        measurement: o.measurement,
        min_abi: o.min_abi,
        smt: o.smt,
        issued: now,
        expires: now.saturating_add(o.expires.as_secs()),
    };
    let line = g.encode(&seed.master());
    match &o.out {
        None => Ok(line),
        Some(path) => {
            portdistrict_exitnode::state::write_atomic_mode(
                path,
                format!("{line}\n").as_bytes(),
                0o600,
            )
            .with_context(|| format!("writing {}", path.display()))?;
            Ok(format!("grant written to {}", path.display()))
        }
    }
}
