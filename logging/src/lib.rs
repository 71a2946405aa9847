//! The one logging setup of every portdistrict binary (`portdistrict`, `portdistrictd`,
//! `portdistrict-dataplane`, `pd-bench`, `xtask`): [`init`] installs a
//! `tracing-subscriber` that writes one line per event to stderr.
//!
//! - **Level.** `RUST_LOG` (tracing's directive syntax, e.g.
//!   `info,portdistrict_control::dns=debug,hickory_resolver=debug`) wins; otherwise
//!   `LOG_LEVEL` (`error|warn|info|debug|verbose|trace|silent`, as wireguard-go and
//!   wg-quick users know it) sets the level; otherwise the binary's default. Outside
//!   `RUST_LOG`, hickory's DNS events are shown from `warn` up (they are chatty at
//!   `info` and below); `RUST_LOG=hickory_resolver=debug` shows all of them.
//! - **Events from the `log` crate** (ours and our dependencies') are routed into
//!   tracing, so they are filtered and formatted the same way.
//! - **Output.** On a terminal or into a file: `[  secs.mmm] PROCESS LEVEL: message
//!   key=value`, the time counted from start. Under systemd (stderr is the journal's
//!   stream, as `JOURNAL_STREAM` says): `<P>PROCESS LEVEL: message`, where `<P>` is the
//!   syslog priority journald turns into the entry's priority (sd-daemon(3)), and no
//!   time (the journal keeps its own).
//! - **Service manager.** [`init`] also takes `NOTIFY_SOCKET` for [`notify`]
//!   (`READY=1`, `STATUS=`, `STOPPING=1` of `Type=notify` units).
#![forbid(unsafe_code)]

pub mod notify;

use std::fmt;
use std::time::Instant;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Directives for hickory's crates when neither `RUST_LOG` nor a more verbose choice
/// asks for them.
const HICKORY: [&str; 2] = ["hickory_proto", "hickory_resolver"];

/// Where the filter came from, and what was wrong with the environment if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    /// The `EnvFilter` directives to install.
    pub directives: String,
    /// A problem to log once the subscriber is up (an unknown `LOG_LEVEL`).
    pub warning: Option<String>,
}

/// The filter directives for `RUST_LOG` / `LOG_LEVEL` values and a binary's `default`
/// level (`error`, `warn`, `info`, `debug` or `trace`).
pub fn directives(rust_log: Option<&str>, log_level: Option<&str>, default: Level) -> Directives {
    if let Some(r) = rust_log.map(str::trim).filter(|r| !r.is_empty()) {
        return Directives {
            directives: r.to_string(),
            warning: None,
        };
    }
    let (level, warning) = match log_level.map(str::trim) {
        None | Some("") => (Some(default), None),
        Some("error") => (Some(Level::ERROR), None),
        Some("warn" | "warning") => (Some(Level::WARN), None),
        Some("info") => (Some(Level::INFO), None),
        Some("debug" | "verbose") => (Some(Level::DEBUG), None),
        Some("trace") => (Some(Level::TRACE), None),
        Some("silent" | "off") => (None, None),
        Some(other) => (
            Some(default),
            Some(format!(
                "LOG_LEVEL={other:?} is not one of error, warn, info, debug, verbose, \
                 trace, silent: logging at {}",
                level_name(default)
            )),
        ),
    };
    let directives = match level {
        None => "off".to_string(),
        Some(level) => {
            // The less verbose of `level` and warn (tracing orders levels by
            // verbosity: ERROR < WARN < INFO < DEBUG < TRACE).
            let dns = level.min(Level::WARN);
            let mut d = level_name(level).to_string();
            for h in HICKORY {
                d.push_str(&format!(",{h}={}", level_name(dns)));
            }
            d
        }
    };
    Directives {
        directives,
        warning,
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// Whether stderr is the journal's stream: `JOURNAL_STREAM` is `DEVICE:INODE` of the
/// stream systemd connected, and stderr's (device, inode) is the same (a child that
/// redirected stderr elsewhere inherits the variable but not the stream).
pub fn is_journal(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let (Some(v), Some((dev, ino))) = (journal_stream, stderr) else {
        return false;
    };
    let Some((d, i)) = v.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// The (device, inode) of this process's stderr.
fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata("/proc/self/fd/2").ok()?;
    Some((m.dev(), m.ino()))
}

/// The line format (see the crate docs).
#[derive(Debug, Clone)]
pub struct LineFormat {
    process: String,
    journal: bool,
    start: Instant,
}

impl LineFormat {
    /// Lines naming `process`, for the journal (`journal`) or a terminal/file.
    pub fn new(process: &str, journal: bool) -> LineFormat {
        LineFormat {
            process: process.to_string(),
            journal,
            start: Instant::now(),
        }
    }
}

/// The syslog priority of a level (sd-daemon(3) prefixes).
fn priority(l: Level) -> u8 {
    match l {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = *event.metadata().level();
        if self.journal {
            write!(w, "<{}>", priority(level))?;
        } else {
            let t = self.start.elapsed();
            write!(w, "[{:>6}.{:03}] ", t.as_secs(), t.subsec_millis())?;
        }
        write!(w, "{} {}: ", self.process, level)?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// A subscriber with `directives` and `format`, writing to `writer` (stderr in
/// [`init`]; a buffer in tests).
pub fn subscriber<W>(
    directives: &str,
    format: LineFormat,
    writer: W,
) -> Result<impl Subscriber + Send + Sync, String>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::builder()
        .parse(directives)
        .map_err(|e| format!("RUST_LOG={directives:?}: {e}"))?;
    Ok(tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .event_format(format)
        .with_writer(writer)
        .finish())
}

/// Installs the process-wide subscriber for `process` (the name every line carries,
/// e.g. `portdistrictd` or `portdistrict-dataplane(wg0)`), with `default` as the level
/// when neither `RUST_LOG` nor `LOG_LEVEL` says otherwise. Events of the `log` crate
/// are routed into it. A second call does nothing. It also takes `NOTIFY_SOCKET` out
/// of the environment for [`notify`] (so call it before any thread starts).
pub fn init(process: &str, default: Level) {
    notify::take_from_env();
    let rust_log = std::env::var("RUST_LOG").ok();
    let log_level = std::env::var("LOG_LEVEL").ok();
    let mut d = directives(rust_log.as_deref(), log_level.as_deref(), default);
    let journal = is_journal(
        std::env::var("JOURNAL_STREAM").ok().as_deref(),
        stderr_identity(),
    );
    let format = LineFormat::new(process, journal);
    let sub = match subscriber(&d.directives, format.clone(), std::io::stderr) {
        Ok(s) => tracing::Dispatch::new(s),
        Err(e) => {
            let fallback = directives(None, None, default);
            d.warning = Some(format!("{e}; logging at {}", fallback.directives));
            match subscriber(&fallback.directives, format, std::io::stderr) {
                Ok(s) => tracing::Dispatch::new(s),
                Err(_) => return,
            }
        }
    };
    if tracing::dispatcher::set_global_default(sub).is_err() {
        return;
    }
    // `log` records (ours not yet converted, hickory's dependencies, ...) into tracing.
    let _ = tracing_log::LogTracer::init();
    if let Some(w) = d.warning {
        tracing::warn!("{w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn rust_log_wins_then_log_level_then_the_default() {
        let d = directives(Some("debug,x=trace"), Some("error"), Level::INFO);
        assert_eq!(d.directives, "debug,x=trace");
        let d = directives(None, Some("error"), Level::INFO);
        assert_eq!(
            d.directives,
            "error,hickory_proto=error,hickory_resolver=error"
        );
        let d = directives(Some("  "), None, Level::WARN);
        assert_eq!(
            d.directives,
            "warn,hickory_proto=warn,hickory_resolver=warn"
        );
        assert_eq!(d.warning, None);
    }

    #[test]
    fn log_level_keeps_hickory_at_warn_unless_quieter() {
        let d = directives(None, Some("debug"), Level::INFO);
        assert_eq!(
            d.directives,
            "debug,hickory_proto=warn,hickory_resolver=warn"
        );
        assert_eq!(
            directives(None, Some("verbose"), Level::INFO).directives,
            d.directives
        );
        assert_eq!(
            directives(None, Some("silent"), Level::INFO).directives,
            "off"
        );
    }

    #[test]
    fn an_unknown_log_level_is_named_and_the_default_used() {
        let d = directives(None, Some("loud"), Level::INFO);
        assert!(d.directives.starts_with("info,"), "{d:?}");
        assert!(d.warning.unwrap().contains("\"loud\""));
    }

    #[test]
    fn journal_only_when_stderr_is_the_stream_systemd_gave() {
        assert!(is_journal(Some("8:1234"), Some((8, 1234))));
        assert!(!is_journal(Some("8:1234"), Some((8, 1235))));
        assert!(!is_journal(Some("8:1234"), None));
        assert!(!is_journal(None, Some((8, 1234))));
        assert!(!is_journal(Some("garbage"), Some((8, 1234))));
    }

    #[test]
    fn an_invalid_rust_log_is_an_error_naming_it() {
        let e = subscriber("info,[[[", LineFormat::new("p", false), std::io::sink)
            .err()
            .unwrap();
        assert!(e.contains("RUST_LOG"), "{e}");
    }

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buf {
        type Writer = Buf;
        fn make_writer(&'w self) -> Buf {
            self.clone()
        }
    }

    fn capture(directives: &str, journal: bool, f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let sub = subscriber(directives, LineFormat::new("pd(wg0)", journal), buf.clone()).unwrap();
        tracing::subscriber::with_default(sub, f);
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn lines_carry_process_level_message_and_fields() {
        let out = capture("info", false, || {
            tracing::info!(peer = 3, "handshake done");
            tracing::debug!("hidden at info");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        assert!(lines[0].starts_with('['), "{out}");
        assert!(
            lines[0].ends_with("] pd(wg0) INFO: handshake done peer=3"),
            "{out}"
        );
    }

    #[test]
    fn journal_lines_start_with_the_syslog_priority() {
        let out = capture("debug", true, || {
            tracing::error!("e");
            tracing::warn!("w");
            tracing::info!("i");
            tracing::debug!("d");
        });
        assert_eq!(
            out,
            "<3>pd(wg0) ERROR: e\n<4>pd(wg0) WARN: w\n<6>pd(wg0) INFO: i\n<7>pd(wg0) DEBUG: d\n"
        );
    }

    #[test]
    fn per_target_directives_select_events() {
        let out = capture("warn,chatty=debug", false, || {
            tracing::debug!(target: "chatty::dns", "shown");
            tracing::debug!(target: "quiet", "not shown");
            tracing::info!(target: "hickory_resolver::x", "not shown either");
        });
        assert!(out.contains("shown"), "{out}");
        assert_eq!(out.lines().count(), 1, "{out}");
    }
}
