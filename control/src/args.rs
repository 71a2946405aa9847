//! Parsers of command-line values that several commands share (`attest verify`, `exit
//! grant`, `exit invite`, `use`): hex of a fixed length, an ABI version, an SMT rule, an
//! endpoint; and [`parse_args`], one command's options from words.

use anyhow::{bail, Context as _};
use portdistrict_control_core::attest::Smt;

/// `flag`'s value `v` as exactly `N` bytes of hex.
pub(crate) fn hex_bytes<const N: usize>(flag: &str, v: &str) -> anyhow::Result<[u8; N]> {
    let b = hex::decode(v.trim()).with_context(|| format!("{flag} {v}: not hexadecimal"))?;
    b.as_slice()
        .try_into()
        .with_context(|| format!("{flag}: {} bytes, expected {N}", b.len()))
}

/// `--endpoint HOST:PORT`: its first address.
pub(crate) fn endpoint(value: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs as _;
    value
        .to_socket_addrs()
        .with_context(|| format!("--endpoint {value}: expected HOST:PORT"))?
        .next()
        .with_context(|| format!("--endpoint {value}: no address"))
}

/// `--min-abi MAJOR.MINOR`.
pub(crate) fn parse_abi(v: &str) -> anyhow::Result<(u8, u8)> {
    v.split_once('.')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .with_context(|| format!("--min-abi {v}: not MAJOR.MINOR (e.g. 1.51)"))
}

/// `--smt any|forbidden`.
pub(crate) fn parse_smt(v: &str) -> anyhow::Result<Smt> {
    match v {
        "any" => Ok(Smt::Any),
        "forbidden" => Ok(Smt::Forbidden),
        _ => bail!("--smt {v}: any or forbidden"),
    }
}

/// Parses `argv` (one command's options, without its name) as `A`, the way the
/// command line would; clap's message is the error. For tests and the control
/// socket, which carry options as words.
pub(crate) fn parse_args<A: clap::Args + clap::FromArgMatches>(
    name: &'static str,
    argv: &[&str],
) -> anyhow::Result<A> {
    let cmd = A::augment_args(clap::Command::new(name).no_binary_name(true));
    let m = cmd
        .try_get_matches_from(argv)
        .map_err(|e| anyhow::anyhow!("{}", e.render().to_string().trim_end()))?;
    A::from_arg_matches(&m).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
}
