//! Criterion scale benchmarks: one responder `Device` with 1,000 peers, and 1,000
//! initiator devices starting a handshake with it at once.
//!
//! Each round advances the virtual clock by `HANDSHAKE_STEP` (so every session has
//! expired), every initiator emits an initiation (untimed), and the responder
//! receives the 1,000 within `ARRIVAL_SPREAD` of its own clock, which is "at once"
//! for its under-load rule (more than `UNDER_LOAD_HANDSHAKES_PER_SECOND` handshake
//! messages in one second switch it to cookie replies).
//!
//! - `handshakes/1000_peers`: timed, the responder consumes the 1,000 initiations
//!   and answers each (1,000 is below the 1,024 limit: every answer is a response);
//! - `handshakes/1000_peers_under_load`: the responder is already under load (an
//!   attacker sends `FLOOD` initiations with a valid MAC1 from a key it does not
//!   know, untimed, in the same second, and again before the retries), so it answers
//!   the 1,000 with cookie replies; timed, the whole cookie round trip: the cookie
//!   replies, the initiators consuming them, their retries after REKEY_TIMEOUT + 1 s
//!   carrying MAC2, and the responder's 1,000 responses. The initiators' work runs
//!   on this one thread here, where in reality it is spread over 1,000 machines: the
//!   printed breakdown separates it.
//!
//! After each timed part the initiators consume the responses and confirm their
//! sessions (untimed), and the round checks that all 1,000 handshakes completed on
//! both sides, so a figure never counts a handshake that failed. Each benchmark
//! prints per round how many initiations got a response directly and how many a
//! cookie reply.

use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use portdistrict_benches::fleet::{Fleet, Tally};
use portdistrict_benches::HANDSHAKE_STEP;
use portdistrict_wg::constants::{REKEY_TIMEOUT, UNDER_LOAD_HANDSHAKES_PER_SECOND};
use std::time::{Duration, Instant};

/// Peers of the responder, and initiators.
const PEERS: usize = 1_000;
/// Tunnel MTU of every device.
const MTU: usize = 1420;
/// The initiations reach the responder evenly spread over this much of its clock.
const ARRIVAL_SPREAD: Duration = Duration::from_millis(500);
/// Flood messages that put the responder under load: one over the limit.
const FLOOD: usize = UNDER_LOAD_HANDSHAKES_PER_SECOND as usize + 1;
/// How long after the cookie replies the initiators retry.
const RETRY_AFTER: Duration = REKEY_TIMEOUT.saturating_add(Duration::from_secs(1));

/// Timings and answers of one round.
#[derive(Debug, Default, Clone, Copy)]
struct Round {
    /// The responder answering the 1,000 initiations.
    answer: Duration,
    /// The initiators consuming the cookie replies and sending their retries.
    initiators_retry: Duration,
    /// The responder answering the retries.
    answer_retries: Duration,
    /// What the responder answered the first time.
    first: Tally,
    /// What it answered the retries.
    retries: Tally,
}

impl Round {
    /// Everything until the last of the 1,000 got its response.
    fn until_complete(&self) -> Duration {
        self.answer + self.initiators_retry + self.answer_retries
    }
}

/// Sums of every round a benchmark ran.
#[derive(Debug, Default)]
struct Totals {
    rounds: u32,
    sum: Round,
}

impl Totals {
    fn add(&mut self, r: &Round) {
        self.rounds += 1;
        let s = &mut self.sum;
        s.answer += r.answer;
        s.initiators_retry += r.initiators_retry;
        s.answer_retries += r.answer_retries;
        s.first.responses += r.first.responses;
        s.first.cookie_replies += r.first.cookie_replies;
        s.retries.responses += r.retries.responses;
        s.retries.cookie_replies += r.retries.cookie_replies;
    }

    fn report(&self, name: &str) {
        let n = self.rounds.max(1);
        let s = &self.sum;
        let ms = |d: Duration| d.as_secs_f64() * 1e3 / f64::from(n);
        println!(
            "{name}: per round of {PEERS} initiations in {ARRIVAL_SPREAD:?} ({} rounds): \
             {} answered with a response, {} with a cookie reply; retries: {} responses, \
             {} cookie replies",
            self.rounds,
            s.first.responses / n as usize,
            s.first.cookie_replies / n as usize,
            s.retries.responses / n as usize,
            s.retries.cookie_replies / n as usize,
        );
        println!(
            "{name}: mean ms per round: responder answers {:.1}, initiators consume \
             cookies + retry {:.1}, responder answers retries {:.1}, to completion {:.1}",
            ms(s.answer),
            ms(s.initiators_retry),
            ms(s.answer_retries),
            ms(s.until_complete()),
        );
    }
}

/// Runs `f` and returns its wall time.
#[allow(clippy::disallowed_methods)]
fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

/// One round; panics with the counts when a handshake did not complete.
fn round(fleet: &mut Fleet, under_load: bool) -> Round {
    fleet.now += HANDSHAKE_STEP;
    let before = fleet.completed();
    let emitted = fleet.initiate();
    assert_eq!(
        emitted, PEERS,
        "only {emitted} initiators sent an initiation"
    );
    let now = fleet.now;
    if under_load {
        fleet.flood(now, FLOOD);
    }
    let mut r = Round::default();
    r.answer = timed(|| r.first = fleet.deliver_to_responder(now, ARRIVAL_SPREAD));
    if r.first.cookie_replies > 0 {
        cookie_round_trip(fleet, &mut r, under_load);
    }
    let end = fleet.now;
    let stray = fleet.deliver_to_initiators(end);
    fleet.deliver_to_responder(end, Duration::ZERO);
    let after = fleet.completed();
    let done = (after.0 - before.0, after.1 - before.1);
    assert_eq!(
        (done, stray),
        ((PEERS as u64, PEERS as u64), 0),
        "handshakes completed (initiators, responder), stray datagrams; answers {:?}, \
         retries {:?}, responder {:?}",
        r.first,
        r.retries,
        fleet.responder.stats
    );
    r
}

/// The initiators consume their cookie replies and retry `RETRY_AFTER` later; the
/// responder (still under load when `under_load`) answers the retries. Moves the
/// fleet's clock to the retry.
fn cookie_round_trip(fleet: &mut Fleet, r: &mut Round, under_load: bool) {
    let at = fleet.now + RETRY_AFTER;
    let mut retried = 0;
    r.initiators_retry = timed(|| {
        fleet.deliver_to_initiators(fleet.now + ARRIVAL_SPREAD);
        retried = fleet.retry(at);
    });
    assert_eq!(
        retried, r.first.cookie_replies,
        "initiators that got a cookie reply and retried"
    );
    if under_load {
        fleet.flood(at, FLOOD);
    }
    r.answer_retries = timed(|| r.retries = fleet.deliver_to_responder(at, ARRIVAL_SPREAD));
    fleet.now = at;
}

/// Registers one benchmark: `name`, timing `figure` of each round.
fn bench(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    under_load: bool,
    figure: fn(&Round) -> Duration,
) {
    #[allow(clippy::disallowed_methods)]
    let base = Instant::now();
    let mut fleet =
        Fleet::new(base, PEERS, MTU).unwrap_or_else(|e| panic!("handshakes/{name}: setup: {e}"));
    let mut totals = Totals::default();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let r = round(&mut fleet, under_load);
                    totals.add(&r);
                    figure(&r)
                })
                .sum()
        })
    });
    totals.report(&format!("handshakes/{name}"));
}

fn handshakes(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshakes");
    // A round takes a fraction of a second: flat sampling runs each sample with the
    // same few rounds instead of criterion's linear ramp of 55 or more.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(PEERS as u64));
    bench(&mut group, "1000_peers", false, |r| r.answer);
    bench(
        &mut group,
        "1000_peers_under_load",
        true,
        Round::until_complete,
    );
    group.finish();
}

/// What `criterion_group!`/`criterion_main!` expand to, written out so that the
/// entry point is documented: command-line options, the group, the summary.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    handshakes(&mut c);
    c.final_summary();
}
