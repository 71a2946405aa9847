//! Everything the dataplane takes from `PD_*` environment variables, read once
//! ([`Options::from_env`]); the rest of the crate takes an [`Options`].

use crate::xdp::XdpMode;
use portdistrict_ebpf::AttachMode;
use std::path::PathBuf;

/// Which receive loop runs (`PD_IO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoLoop {
    /// io_uring where the kernel allows it, else the `poll(2)` loop (the default).
    Uring,
    /// The `poll(2)` loop with `recvmmsg` (`PD_IO=poll`).
    Poll,
}

/// How the dataplane runs: its fast paths, threads and loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// TUN TSO/GRO and UDP GSO/GRO: `PD_OFFLOAD` not `off`.
    pub udp_offload: bool,
    /// The XDP program on the underlay (`PD_XDP`, overridden by `--xdp`).
    pub xdp: XdpMode,
    /// The XDP attachment mode tried first (`PD_XDP_ATTACH`), else per interface.
    pub xdp_attach: Option<AttachMode>,
    /// The receive loop (`PD_IO`).
    pub io: IoLoop,
    /// Crypto threads in all, the loop's included, always used
    /// (`PD_CRYPTO_THREADS=N`); `None`: one per CPU, used while CPUs are idle.
    pub crypto_threads: Option<usize>,
    /// The AVX-512 group code for runs of messages, where the CPU has it:
    /// `PD_CRYPTO_GROUP` not `off`.
    pub crypto_group: bool,
    /// Where a daemonized process keeps its log (`PD_LOG_FILE`).
    pub log_file: Option<PathBuf>,
    /// The metrics endpoint's address (`PD_METRICS_LISTEN`, overridden by
    /// `--metrics-listen`); `None`: no endpoint.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Values that were not understood and are ignored, one sentence each (logged
    /// once the logger runs).
    pub ignored: Vec<String>,
}

/// A `PD_*` value that cannot be ignored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    /// `PD_XDP` names no mode.
    #[error("PD_XDP: {0}")]
    Xdp(String),
    /// `PD_METRICS_LISTEN` is not an address and port.
    #[error("PD_METRICS_LISTEN={0:?}: expected ADDR:PORT, like 127.0.0.1:9586")]
    MetricsListen(String),
}

impl Default for Options {
    /// What an empty environment gives.
    fn default() -> Self {
        Options {
            udp_offload: true,
            xdp: XdpMode::Filter,
            xdp_attach: None,
            io: IoLoop::Uring,
            crypto_threads: None,
            crypto_group: true,
            log_file: None,
            metrics_listen: None,
            ignored: Vec::new(),
        }
    }
}

impl Options {
    /// Reads the process environment (once, at start).
    pub fn from_env() -> Result<Options, OptionsError> {
        Options::from_vars(|name| std::env::var_os(name))
    }

    /// Builds the options from `var` (an environment lookup by name).
    pub fn from_vars(
        var: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Options, OptionsError> {
        let text = |name: &str| var(name).map(|v| v.to_string_lossy().into_owned());
        let mut o = Options::default();
        if let Some(v) = text("PD_XDP") {
            o.xdp = XdpMode::parse(&v).map_err(OptionsError::Xdp)?;
        }
        o.udp_offload = text("PD_OFFLOAD").as_deref() != Some("off");
        o.crypto_group = text("PD_CRYPTO_GROUP").as_deref() != Some("off");
        o.log_file = var("PD_LOG_FILE").map(PathBuf::from);
        if let Some(v) = text("PD_METRICS_LISTEN").filter(|v| !v.is_empty()) {
            o.metrics_listen = Some(v.parse().map_err(|_| OptionsError::MetricsListen(v))?);
        }
        match text("PD_IO").as_deref() {
            Some("poll") => o.io = IoLoop::Poll,
            Some("uring") | None => {}
            Some(other) => o.ignored.push(format!(
                "PD_IO={other:?} is neither \"uring\" nor \"poll\"; trying io_uring"
            )),
        }
        if let Some(v) = text("PD_CRYPTO_THREADS") {
            match v.trim().parse::<usize>() {
                Ok(n) => o.crypto_threads = Some(n.clamp(1, 64)),
                Err(_) => o.ignored.push(format!(
                    "PD_CRYPTO_THREADS={v:?} is not a number; using one thread per CPU"
                )),
            }
        }
        match text("PD_XDP_ATTACH").as_deref() {
            Some("generic") => o.xdp_attach = Some(AttachMode::Generic),
            Some("native") => o.xdp_attach = Some(AttachMode::Native),
            Some("tc") => o.xdp_attach = Some(AttachMode::Tc),
            Some(other) => o.ignored.push(format!(
                "PD_XDP_ATTACH={other:?} is not native, generic or tc; choosing per interface"
            )),
            None => {}
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Options, OptionsError> {
        Options::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| std::ffi::OsString::from(v))
        })
    }

    #[test]
    fn an_empty_environment_gives_the_defaults() {
        assert_eq!(from(&[]), Ok(Options::default()));
    }

    #[test]
    fn every_variable_lands_in_its_field() {
        let o = from(&[
            ("PD_XDP", "steer"),
            ("PD_OFFLOAD", "off"),
            ("PD_CRYPTO_GROUP", "off"),
            ("PD_LOG_FILE", "/tmp/pd.log"),
            ("PD_IO", "poll"),
            ("PD_CRYPTO_THREADS", " 3 "),
            ("PD_XDP_ATTACH", "tc"),
            ("PD_METRICS_LISTEN", "127.0.0.1:9586"),
        ])
        .unwrap();
        assert_eq!(o.metrics_listen, Some("127.0.0.1:9586".parse().unwrap()));
        assert_eq!(o.xdp, XdpMode::Steer);
        assert!(!o.udp_offload);
        assert!(!o.crypto_group);
        assert_eq!(o.log_file, Some(PathBuf::from("/tmp/pd.log")));
        assert_eq!(o.io, IoLoop::Poll);
        assert_eq!(o.crypto_threads, Some(3));
        assert_eq!(o.xdp_attach, Some(AttachMode::Tc));
        assert!(o.ignored.is_empty());
    }

    #[test]
    fn thread_counts_are_clamped_to_1_through_64() {
        let n = |v: &str| from(&[("PD_CRYPTO_THREADS", v)]).unwrap().crypto_threads;
        assert_eq!(n("0"), Some(1));
        assert_eq!(n("1"), Some(1));
        assert_eq!(n("65"), Some(64));
    }

    #[test]
    fn values_not_understood_fall_back_and_are_reported() {
        let o = from(&[
            ("PD_IO", "epoll"),
            ("PD_CRYPTO_THREADS", "many"),
            ("PD_XDP_ATTACH", "offload"),
            ("PD_OFFLOAD", "on"),
        ])
        .unwrap();
        assert_eq!(o.io, IoLoop::Uring);
        assert_eq!(o.crypto_threads, None);
        assert_eq!(o.xdp_attach, None);
        assert!(o.udp_offload);
        assert_eq!(o.ignored.len(), 3, "{:?}", o.ignored);
        assert!(o.ignored[0].starts_with("PD_IO=\"epoll\""));
    }

    #[test]
    fn a_metrics_address_that_is_not_one_is_an_error() {
        assert!(matches!(
            from(&[("PD_METRICS_LISTEN", "localhost")]),
            Err(OptionsError::MetricsListen(_))
        ));
    }

    #[test]
    fn an_unknown_xdp_mode_is_an_error() {
        assert!(matches!(
            from(&[("PD_XDP", "fast")]),
            Err(OptionsError::Xdp(_))
        ));
    }
}
