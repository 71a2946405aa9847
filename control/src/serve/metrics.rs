//! `exit serve --metrics-listen ADDR:PORT`: the provider's consumers and invites
//! (read from the store at each scrape, under its lock, as `exit list` reads them)
//! and the exit channel's conversations by outcome (counted as they end).

use crate::exit::ExitDir;
use portdistrict_exitnode::store::Store;
use portdistrict_metrics::{Exposition, Kind, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How an exit channel conversation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The consumer confirmed and got its final ack.
    Granted,
    /// Answered with a refusal (message 1 refused, or the store said no).
    Refused,
    /// Offered a grant that the consumer did not confirm (it refused the exit or
    /// holds no token).
    Unconfirmed,
    /// Turned away as busy (a rate or connection limit, or the store unreadable for
    /// a moment).
    Busy,
    /// Broken off: a frame that did not arrive or parse, a bad confirmation, the
    /// deadline.
    Failed,
}

impl Outcome {
    /// Every outcome, in the order of the samples.
    const ALL: [Outcome; 5] = [
        Outcome::Granted,
        Outcome::Refused,
        Outcome::Unconfirmed,
        Outcome::Busy,
        Outcome::Failed,
    ];

    /// The value of the `outcome` label.
    fn label(self) -> &'static str {
        match self {
            Outcome::Granted => "granted",
            Outcome::Refused => "refused",
            Outcome::Unconfirmed => "unconfirmed",
            Outcome::Busy => "busy",
            Outcome::Failed => "failed",
        }
    }
}

/// The exit channel's counters.
#[derive(Debug, Default)]
pub(super) struct ExitMetrics {
    conversations: [AtomicU64; Outcome::ALL.len()],
}

impl ExitMetrics {
    /// Counts a conversation that ended with `o`.
    pub(super) fn ended(&self, o: Outcome) {
        self.conversations[o as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The text exposition: the store's consumers and live invites at `now` (Unix
/// seconds; `None`: the store could not be read), and the conversations.
pub(super) fn render(store: Option<&Store>, now: u64, m: &ExitMetrics) -> String {
    let mut e = Exposition::new();
    let consumers = e.family(
        "portdistrict_exit_consumers",
        "Consumers authorized (as exit list shows them).",
        Kind::Gauge,
    );
    if let Some(s) = store {
        consumers.sample(&[], Value::Int(s.consumers.len() as u64));
    }
    let invites = e.family(
        "portdistrict_exit_invites_live",
        "Invites that may still admit a consumer (not expired, revoked or used up).",
        Kind::Gauge,
    );
    if let Some(s) = store {
        let live = s
            .invites
            .iter()
            .filter(|i| !i.revoked && i.uses_left > 0 && i.expires > now)
            .count();
        invites.sample(&[], Value::Int(live as u64));
    }
    let f = e.family(
        "portdistrict_exit_channel_conversations",
        "Exit channel conversations (TCP, Noise) by how they ended.",
        Kind::Counter,
    );
    for o in Outcome::ALL {
        let n = m.conversations[o as usize].load(Ordering::Relaxed);
        f.sample(&[("outcome", o.label())], Value::Int(n));
    }
    e.render()
}

/// The endpoint's render function.
pub(super) fn scraper(
    dir: ExitDir,
    m: Arc<ExitMetrics>,
) -> Arc<portdistrict_metrics::http::Render> {
    Arc::new(move || {
        let store = dir.lock().and_then(|_lock| dir.store());
        if let Err(e) = &store {
            tracing::warn!("metrics: reading the exit store: {e:#}");
        }
        Ok(render(store.ok().as_ref(), crate::exit::now(), &m))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_invites_and_outcomes() {
        let mut s = Store::default();
        s.issue(&[1; 16], 1000, 1).unwrap();
        s.issue(&[2; 16], 1000, 1).unwrap();
        s.issue(&[3; 16], 10, 1).unwrap();
        s.authorize(5, &[1; 16], "a2V5").unwrap();
        let m = ExitMetrics::default();
        m.ended(Outcome::Granted);
        m.ended(Outcome::Busy);
        m.ended(Outcome::Busy);
        let text = render(Some(&s), 100, &m);
        for line in [
            "portdistrict_exit_consumers 1",
            "portdistrict_exit_invites_live 1",
            "# TYPE portdistrict_exit_channel_conversations_total counter",
            "portdistrict_exit_channel_conversations_total{outcome=\"granted\"} 1",
            "portdistrict_exit_channel_conversations_total{outcome=\"busy\"} 2",
            "portdistrict_exit_channel_conversations_total{outcome=\"failed\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let text = render(None, 100, &m);
        assert!(!text
            .lines()
            .any(|l| l.starts_with("portdistrict_exit_consumers ")));
    }
}
