//! The implementations compared: bare veth (no tunnel), ours (with and without the
//! XDP filter) and four other userspace WireGuards (two builds of wireguard-go), with
//! where to find each and how to start it in the foreground.

use std::path::{Path, PathBuf};

use portdistrict_testkit::bench_cache::{self, CachedPeer};

use crate::error::Error;
use crate::proc::find_program;

/// One column of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Impl {
    /// No tunnel: iperf3 and ping straight over the veth pair.
    Bare,
    /// Ours: `portdistrict-dataplane` (its defaults: the XDP filter on).
    Portdistrict,
    /// Ours with `--xdp off`: what the XDP program costs, and what it saves under
    /// a flood.
    PortdistrictXdpOff,
    /// Debian 13's `wireguard-go` (0.0.20231211 when written: TUN TSO/GRO and UDP
    /// GSO/GRO), from the bench cache that `cargo xtask setup` fills: the headline
    /// comparison.
    WireguardGoDeb13,
    /// The `wireguard-go` on `$PATH` (here Debian 12's package: the 2022 release,
    /// without those offloads).
    WireguardGo,
    /// `boringtun-cli` (crates.io).
    Boringtun,
    /// `gotatun` from crates.io package `gotatun-cli` (Mullvad's boringtun fork).
    Gotatun,
}

impl Impl {
    /// Every implementation, in column order.
    pub(crate) const ALL: [Impl; 7] = [
        Impl::Bare,
        Impl::Portdistrict,
        Impl::PortdistrictXdpOff,
        Impl::WireguardGoDeb13,
        Impl::WireguardGo,
        Impl::Boringtun,
        Impl::Gotatun,
    ];

    /// The name used on the command line, in tables and in JSON.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Impl::Bare => "bare-veth",
            Impl::Portdistrict => "portdistrict",
            Impl::PortdistrictXdpOff => "portdistrict-xdp-off",
            Impl::WireguardGoDeb13 => "wireguard-go-deb13",
            Impl::WireguardGo => "wireguard-go",
            Impl::Boringtun => "boringtun",
            Impl::Gotatun => "gotatun",
        }
    }

    /// Parses [`Impl::name`] (also accepts `bare`, `boringtun-cli`, `gotatun-cli`).
    pub(crate) fn parse(s: &str) -> Option<Impl> {
        match s {
            "bare" | "bare-veth" | "veth" => Some(Impl::Bare),
            "portdistrict" | "pd" => Some(Impl::Portdistrict),
            "portdistrict-xdp-off" | "pd-xdp-off" => Some(Impl::PortdistrictXdpOff),
            "wireguard-go-deb13" | "wg-go-deb13" => Some(Impl::WireguardGoDeb13),
            "wireguard-go" | "wg-go" => Some(Impl::WireguardGo),
            "boringtun" | "boringtun-cli" => Some(Impl::Boringtun),
            "gotatun" | "gotatun-cli" => Some(Impl::Gotatun),
            _ => None,
        }
    }

    /// The executable and how to install it, for peers found on `$PATH`.
    fn program(self) -> Option<(&'static str, &'static str)> {
        match self {
            Impl::Bare | Impl::Portdistrict | Impl::PortdistrictXdpOff => None,
            Impl::WireguardGoDeb13 => None,
            Impl::WireguardGo => Some((
                "wireguard-go",
                "install it with `cargo xtask setup` (or `apt-get install wireguard-go`)",
            )),
            Impl::Boringtun => Some((
                "boringtun-cli",
                "install it with `cargo xtask setup` (or `cargo install --locked boringtun-cli`)",
            )),
            Impl::Gotatun => Some((
                "gotatun",
                "install it with `cargo xtask setup` (or `cargo install --locked gotatun-cli`)",
            )),
        }
    }

    /// The peer that `cargo xtask setup` fetches into the bench cache, if this is one.
    pub(crate) fn cached(self) -> Option<CachedPeer> {
        (self == Impl::WireguardGoDeb13)
            .then(|| CachedPeer::wireguard_go_debian13(&bench_cache::root()))
    }

    /// The daemon's executable: `dataplane` for ours, the bench cache for Debian 13's
    /// wireguard-go, a `$PATH` (or `~/.cargo/bin`) lookup for other peers; `None` for
    /// bare veth.
    pub(crate) fn binary(self, dataplane: &Path) -> Result<Option<PathBuf>, Error> {
        if matches!(self, Impl::Portdistrict | Impl::PortdistrictXdpOff) {
            if !dataplane.is_file() {
                return Err(Error::MissingDataplane(dataplane.to_owned()));
            }
            return Ok(Some(dataplane.to_owned()));
        }
        if let Some(peer) = self.cached() {
            return match peer.cached_version() {
                Some(_) => Ok(Some(peer.binary())),
                None => Err(Error::NotCached {
                    what: format!("{} (Debian {})", peer.package, peer.release),
                    path: peer.version_file(),
                }),
            };
        }
        let Some((program, hint)) = self.program() else {
            return Ok(None);
        };
        match find_program(program) {
            Some(p) => Ok(Some(p)),
            None => Err(Error::MissingProgram {
                program: program.to_owned(),
                hint: hint.to_owned(),
            }),
        }
    }

    /// Arguments before IFNAME that keep the daemon in the foreground with quiet logs.
    pub(crate) fn daemon_args(self) -> &'static [&'static str] {
        match self {
            Impl::Bare => &[],
            Impl::Portdistrict | Impl::WireguardGo | Impl::WireguardGoDeb13 => &["--foreground"],
            Impl::PortdistrictXdpOff => &["--foreground", "--xdp", "off"],
            Impl::Boringtun | Impl::Gotatun => &[
                "--foreground",
                "--disable-drop-privileges",
                "--verbosity",
                "error",
            ],
        }
    }
}

/// Parses a comma-separated `--impl` list into distinct implementations in column order.
pub(crate) fn parse_list(list: &str) -> Result<Vec<Impl>, String> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let names: Vec<&str> = Impl::ALL.iter().map(|i| i.name()).collect();
        let i = Impl::parse(item).ok_or_else(|| {
            format!(
                "unknown implementation {item:?} in --impl (known: {})",
                names.join(", ")
            )
        })?;
        if !out.contains(&i) {
            out.push(i);
        }
    }
    if out.is_empty() {
        return Err("--impl needs at least one implementation".to_owned());
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for i in Impl::ALL {
            assert_eq!(Impl::parse(i.name()), Some(i));
        }
        assert_eq!(Impl::parse("gotatun-cli"), Some(Impl::Gotatun));
        assert_eq!(Impl::parse("nope"), None);
    }

    #[test]
    fn list_is_deduplicated_and_ordered() {
        let l = parse_list("gotatun, bare,portdistrict,bare").unwrap();
        assert_eq!(l, [Impl::Bare, Impl::Portdistrict, Impl::Gotatun]);
        assert!(parse_list("wireguard-go,x").unwrap_err().contains("\"x\""));
        assert!(parse_list(" , ").is_err());
    }

    #[test]
    fn missing_dataplane_says_how_to_build() {
        let e = Impl::Portdistrict
            .binary(Path::new("/nonexistent/pd"))
            .unwrap_err();
        assert!(e.to_string().contains("cargo build --release"), "{e}");
        assert_eq!(Impl::Bare.binary(Path::new("/x")).unwrap(), None);
    }

    #[test]
    fn debian13_wireguard_go_comes_from_the_bench_cache() {
        let peer = Impl::WireguardGoDeb13.cached().expect("a cached peer");
        assert_eq!(peer.package, "wireguard-go");
        assert_eq!(Impl::WireguardGo.cached(), None);
        assert_eq!(
            Impl::WireguardGoDeb13.daemon_args(),
            Impl::WireguardGo.daemon_args()
        );
        assert_eq!(Impl::parse("wg-go-deb13"), Some(Impl::WireguardGoDeb13));
    }
}
