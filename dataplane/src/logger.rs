//! A minimal `log` backend: one line per record on stderr, with the level and a
//! monotonic timestamp. `LOG_LEVEL` (error, warn, info, debug; as wireguard-go's
//! variable) picks the level; the default is `info`.

use std::io::Write as _;
use std::time::Instant;

struct Logger {
    start: Instant,
    prefix: String,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let t = self.start.elapsed();
            let _ = writeln!(
                std::io::stderr(),
                "[{:>6}.{:03}] {} {}: {}",
                t.as_secs(),
                t.subsec_millis(),
                self.prefix,
                r.level(),
                r.args()
            );
        }
    }

    fn flush(&self) {}
}

/// Installs the logger; `prefix` names the process in every line.
pub fn init(prefix: &str) {
    let level = match std::env::var("LOG_LEVEL").as_deref() {
        Ok("error") => log::LevelFilter::Error,
        Ok("warn") => log::LevelFilter::Warn,
        Ok("debug" | "verbose") => log::LevelFilter::Debug,
        Ok("silent") => log::LevelFilter::Off,
        _ => log::LevelFilter::Info,
    };
    let logger = Logger {
        start: Instant::now(),
        prefix: prefix.to_string(),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}
