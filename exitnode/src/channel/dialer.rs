//! Which exit channel address the consumer dials, and when, sans-IO.
//!
//! The invite's endpoints give the addresses: each endpoint's IP at the channel
//! port, duplicates dropped, in the invite's order. Each address in turn gets an
//! equal share of the time budget, counted from when its turn starts; the last one
//! gets whatever is left of the whole budget. Within its share an address is dialed
//! again [`RETRY`] after each attempt that ended busy or failed, while that leaves
//! time; else the next address's turn starts. When no address is left, the dialer
//! gives up and names each address with what it last did.
//!
//! The caller owns the socket and the clock. It calls [`Dialer::poll`] with `now`
//! and carries out the [`DialAction`]. After each [`DialAction::Connect`] it reports
//! how the attempt ended: [`Dialer::busy`] or [`Dialer::failed`]. A final outcome
//! (a grant, or a refusal of the request or of the attestation) is the caller's: it
//! stops dialing, since every endpoint is the same provider.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long after a busy or failed attempt the same address is dialed again.
pub const RETRY: Duration = Duration::from_millis(300);

/// The longest budget: a longer one is cut to this (so deadlines cannot overflow).
const MAX_BUDGET: Duration = Duration::from_secs(365 * 24 * 3600);

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialAction {
    /// Dial this address and run one exchange on it, all before this deadline. Then
    /// report its outcome ([`Dialer::busy`], [`Dialer::failed`]) and poll again.
    Connect(SocketAddr, Instant),
    /// Sleep until this instant, then poll again.
    Wait(Instant),
    /// Stop: no address answered in time. Polling again returns the same.
    GiveUp(DialError),
}

/// What an address last did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The provider refused "busy".
    Busy,
    /// The connection failed (an error, a timeout, closed early): why.
    Failed(String),
    /// Never dialed: no time was left when its turn came.
    NoTime,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Busy => f.write_str("busy"),
            Outcome::Failed(why) => f.write_str(why),
            Outcome::NoTime => f.write_str("not tried: no time left"),
        }
    }
}

/// Why dialing ended without an answer: each address with what it last did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", list(.tried))]
pub struct DialError {
    /// Every address, in the order dialed, with its last outcome.
    pub tried: Vec<(SocketAddr, Outcome)>,
}

fn list(tried: &[(SocketAddr, Outcome)]) -> String {
    if tried.is_empty() {
        return "no endpoint to dial".to_owned();
    }
    let each: Vec<String> = tried.iter().map(|(a, o)| format!("{a}: {o}")).collect();
    each.join("; ")
}

/// The current address's turn.
#[derive(Debug, Clone, Copy)]
struct Turn {
    /// When its share of the budget ends.
    until: Instant,
    /// When it may be dialed again, after a busy or failed attempt.
    retry_at: Option<Instant>,
}

/// The addresses to dial and the time each gets (see the module documentation).
#[derive(Debug, Clone)]
pub struct Dialer {
    /// The addresses in turn, each with its last outcome.
    addrs: Vec<(SocketAddr, Option<Outcome>)>,
    budget: Duration,
    share: Duration,
    /// When the budget started: at the first poll.
    start: Option<Instant>,
    current: usize,
    /// `None` until the current address's turn starts.
    turn: Option<Turn>,
}

impl Dialer {
    /// Dials each of `endpoints`' IPs at `port`, within `budget` in all. The budget
    /// starts at the first [`Dialer::poll`]. No endpoint gives up at once.
    #[must_use]
    pub fn new(endpoints: &[SocketAddr], port: u16, budget: Duration) -> Dialer {
        let mut addrs: Vec<(SocketAddr, Option<Outcome>)> = Vec::new();
        for ep in endpoints {
            let a = SocketAddr::new(ep.ip(), port);
            if !addrs.iter().any(|(b, _)| *b == a) {
                addrs.push((a, None));
            }
        }
        let budget = budget.min(MAX_BUDGET);
        let share = budget / u32::try_from(addrs.len().max(1)).unwrap_or(u32::MAX);
        Dialer {
            addrs,
            budget,
            share,
            start: None,
            current: 0,
            turn: None,
        }
    }

    /// What to do at `now`. Call it first, after each report, and when a wait ends.
    pub fn poll(&mut self, now: Instant) -> DialAction {
        let start = *self.start.get_or_insert(now);
        let count = self.addrs.len();
        while let Some((addr, last)) = self.addrs.get_mut(self.current) {
            let last_addr = self.current + 1 == count;
            let turn = *self.turn.get_or_insert(Turn {
                until: if last_addr {
                    start + self.budget
                } else {
                    now + self.share
                },
                retry_at: None,
            });
            if now >= turn.until {
                last.get_or_insert(Outcome::NoTime);
                self.next();
                continue;
            }
            return match turn.retry_at {
                Some(at) if now < at => DialAction::Wait(at),
                _ => DialAction::Connect(*addr, turn.until),
            };
        }
        DialAction::GiveUp(self.error())
    }

    /// The last attempt, ended at `now`, was refused "busy".
    pub fn busy(&mut self, now: Instant) {
        self.report(now, Outcome::Busy);
    }

    /// The last attempt, ended at `now`, failed: a connection error, a timeout, or
    /// the provider closed early (`reason` says which).
    pub fn failed(&mut self, now: Instant, reason: String) {
        self.report(now, Outcome::Failed(reason));
    }

    /// Records `outcome` for the current address: dial it again after [`RETRY`] if
    /// that is within its share, else start the next one's turn. Ignored before the
    /// first turn and after giving up.
    fn report(&mut self, now: Instant, outcome: Outcome) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        let Some((_, last)) = self.addrs.get_mut(self.current) else {
            return;
        };
        *last = Some(outcome);
        let again = now + RETRY;
        if again < turn.until {
            turn.retry_at = Some(again);
        } else {
            self.next();
        }
    }

    fn next(&mut self) {
        self.current += 1;
        self.turn = None;
    }

    fn error(&self) -> DialError {
        DialError {
            tried: self
                .addrs
                .iter()
                .map(|(a, o)| (*a, o.clone().unwrap_or(Outcome::NoTime)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORT: u16 = 7443;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn eps() -> Vec<SocketAddr> {
        vec![
            "192.0.2.1:51820".parse().unwrap(),
            "[2001:db8::1]:51820".parse().unwrap(),
        ]
    }

    fn at(ep: SocketAddr) -> SocketAddr {
        SocketAddr::new(ep.ip(), PORT)
    }

    #[test]
    fn a_busy_address_is_asked_again_until_its_share_ends() {
        let t0 = Instant::now();
        let (a, b) = (at(eps()[0]), at(eps()[1]));
        let mut d = Dialer::new(&eps(), PORT, ms(2000));
        assert_eq!(d.poll(t0), DialAction::Connect(a, t0 + ms(1000)));
        d.busy(t0 + ms(10));
        assert_eq!(d.poll(t0 + ms(10)), DialAction::Wait(t0 + ms(310)));
        assert_eq!(d.poll(t0 + ms(309)), DialAction::Wait(t0 + ms(310)));
        assert_eq!(d.poll(t0 + ms(310)), DialAction::Connect(a, t0 + ms(1000)));
        d.busy(t0 + ms(320));
        assert_eq!(d.poll(t0 + ms(620)), DialAction::Connect(a, t0 + ms(1000)));
        // 700 + 300 ms is not before the share's end: the next address's turn.
        d.busy(t0 + ms(700));
        assert_eq!(d.poll(t0 + ms(700)), DialAction::Connect(b, t0 + ms(2000)));
    }

    #[test]
    fn connection_failures_move_on_after_the_share() {
        let t0 = Instant::now();
        let (a, b) = (at(eps()[0]), at(eps()[1]));
        let mut d = Dialer::new(&eps(), PORT, ms(2000));
        let mut now = t0;
        let mut dials = 0;
        loop {
            match d.poll(now) {
                DialAction::Connect(addr, until) if addr == a => {
                    assert_eq!(until, t0 + ms(1000));
                    dials += 1;
                    now += ms(50);
                    d.failed(now, "connection refused".into());
                }
                DialAction::Connect(addr, _) => {
                    assert_eq!(addr, b);
                    break;
                }
                DialAction::Wait(until) => now = until,
                other => panic!("{other:?} while time is left"),
            }
        }
        // Dialed at 0, 350, 700 ms; the one ending at 750 leaves no room for 300 more.
        assert_eq!(dials, 3);
        assert_eq!(now, t0 + ms(750));
        // A timeout at the deadline moves on too.
        let mut d = Dialer::new(&eps(), PORT, ms(2000));
        assert_eq!(d.poll(t0), DialAction::Connect(a, t0 + ms(1000)));
        d.failed(t0 + ms(1000), "no answer in time".into());
        assert_eq!(d.poll(t0 + ms(1000)), DialAction::Connect(b, t0 + ms(2000)));
    }

    #[test]
    fn the_last_address_gets_what_is_left() {
        let t0 = Instant::now();
        let three: Vec<SocketAddr> = vec![
            "192.0.2.1:1".parse().unwrap(),
            "192.0.2.2:1".parse().unwrap(),
            "192.0.2.3:1".parse().unwrap(),
        ];
        let mut d = Dialer::new(&three, PORT, ms(3000));
        assert_eq!(d.poll(t0), DialAction::Connect(at(three[0]), t0 + ms(1000)));
        d.failed(t0 + ms(1000), "no answer in time".into());
        // A turn's share counts from when it starts (here late, at 1.5 s) ...
        assert_eq!(
            d.poll(t0 + ms(1500)),
            DialAction::Connect(at(three[1]), t0 + ms(2500))
        );
        d.failed(t0 + ms(2400), "connection refused".into());
        // ... but the last one ends with the whole budget, not a share after its start.
        assert_eq!(
            d.poll(t0 + ms(2400)),
            DialAction::Connect(at(three[2]), t0 + ms(3000))
        );
        d.busy(t0 + ms(2800));
        let DialAction::GiveUp(e) = d.poll(t0 + ms(2800)) else {
            panic!("nothing left")
        };
        assert_eq!(e.tried.len(), 3);
    }

    #[test]
    fn addresses_are_deduplicated_in_order() {
        let t0 = Instant::now();
        let many: Vec<SocketAddr> = vec![
            "192.0.2.1:51820".parse().unwrap(),
            "192.0.2.1:51821".parse().unwrap(),
            "[2001:db8::1]:51820".parse().unwrap(),
            "192.0.2.1:1".parse().unwrap(),
        ];
        let mut d = Dialer::new(&many, PORT, ms(2000));
        // Two addresses: a half share each.
        assert_eq!(d.poll(t0), DialAction::Connect(at(many[0]), t0 + ms(1000)));
        d.failed(t0 + ms(1000), "no answer in time".into());
        assert_eq!(
            d.poll(t0 + ms(1000)),
            DialAction::Connect(at(many[2]), t0 + ms(2000))
        );
        d.failed(t0 + ms(2000), "no answer in time".into());
        let DialAction::GiveUp(e) = d.poll(t0 + ms(2000)) else {
            panic!("both tried")
        };
        let tried: Vec<SocketAddr> = e.tried.iter().map(|(a, _)| *a).collect();
        assert_eq!(tried, vec![at(many[0]), at(many[2])]);
    }

    #[test]
    fn a_budget_of_zero_or_no_endpoint_gives_up_at_once() {
        let t0 = Instant::now();
        let mut d = Dialer::new(&eps(), PORT, Duration::ZERO);
        let DialAction::GiveUp(e) = d.poll(t0) else {
            panic!("no time at all")
        };
        assert_eq!(
            e.to_string(),
            "192.0.2.1:7443: not tried: no time left; [2001:db8::1]:7443: not tried: no time left"
        );
        let mut d = Dialer::new(&[], PORT, ms(1000));
        assert_eq!(
            d.poll(t0),
            DialAction::GiveUp(DialError { tried: Vec::new() })
        );
        assert_eq!(
            DialError { tried: Vec::new() }.to_string(),
            "no endpoint to dial"
        );
    }

    #[test]
    fn giving_up_names_every_address_with_its_last_outcome() {
        let t0 = Instant::now();
        let three: Vec<SocketAddr> = vec![
            "192.0.2.1:1".parse().unwrap(),
            "[2001:db8::1]:1".parse().unwrap(),
            "192.0.2.3:1".parse().unwrap(),
        ];
        let mut d = Dialer::new(&three, PORT, ms(1800));
        // The first: refused, then busy (the last outcome counts).
        assert_eq!(d.poll(t0), DialAction::Connect(at(three[0]), t0 + ms(600)));
        d.failed(t0 + ms(100), "connection refused".into());
        assert_eq!(d.poll(t0 + ms(100)), DialAction::Wait(t0 + ms(400)));
        assert_eq!(
            d.poll(t0 + ms(400)),
            DialAction::Connect(at(three[0]), t0 + ms(600))
        );
        d.busy(t0 + ms(400));
        // The second: a timeout at the end of its share.
        assert_eq!(
            d.poll(t0 + ms(400)),
            DialAction::Connect(at(three[1]), t0 + ms(1000))
        );
        d.failed(t0 + ms(1000), "no answer in time".into());
        // The third: its turn comes after the whole budget.
        let e = match d.poll(t0 + ms(1800)) {
            DialAction::GiveUp(e) => e,
            other => panic!("{other:?} after the budget"),
        };
        assert_eq!(
            e.tried,
            vec![
                (at(three[0]), Outcome::Busy),
                (at(three[1]), Outcome::Failed("no answer in time".into())),
                (at(three[2]), Outcome::NoTime),
            ]
        );
        assert_eq!(
            e.to_string(),
            "192.0.2.1:7443: busy; [2001:db8::1]:7443: no answer in time; 192.0.2.3:7443: not tried: no time left"
        );
        // Giving up is final; late reports change nothing.
        d.failed(t0 + ms(2000), "late".into());
        assert_eq!(d.poll(t0 + ms(2000)), DialAction::GiveUp(e));
    }
}
