//! The help text, on its own so that both the option parser (`cli`) and the error
//! type (`error`, which appends it to a usage error) depend on it and not on each other.

/// The help text.
pub(crate) const USAGE: &str = "\
usage: pd-bench [--quick] [--duration S] [--repeat N] [--impl LIST] [--dataplane PATH]
                [--json PATH] [--svg PATH]

Measures bare veth, portdistrict (XDP filter on and off), wireguard-go (Debian 13's build
from the bench cache, wireguard-go-deb13, and the one on PATH), boringtun and gotatun
between two network namespaces (TCP 1 and 4 streams, UDP 1420- and 64-byte packet rates, ping idle and under
load), repeating each scenario with the implementations interleaved; then each tunnel
daemon's RSS with 0 and 1,000 peers and the `wg setconf` time. Run as root.

  --quick           1-second runs, 1 repeat; fails unless every scenario gave a nonzero
                    figure for every implementation and every tunnel a nonzero RSS in
                    the scale section (numbers are never compared)
  --duration S      seconds per iperf3 run (default 5)
  --repeat N        repeats per scenario (default 3)
  --impl LIST       comma-separated subset of: bare-veth,portdistrict,
                    portdistrict-xdp-off,wireguard-go-deb13,wireguard-go,boringtun,
                    gotatun (default: all)
  --dataplane PATH  our binary (default: target/release/portdistrict-dataplane)
  --json PATH       results file (default: target/pd-bench/results.json)
  --svg PATH        chart file (default: target/pd-bench/results.svg)";
