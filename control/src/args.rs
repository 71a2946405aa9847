//! Parsers of command-line values that several commands share (`attest verify`, `exit
//! grant`, `exit invite`, `use`): hex of a fixed length, an ABI version, an SMT rule.

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
