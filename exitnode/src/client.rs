//! The consumer's probe of a tunnel just up, sans-IO: once granted, the consumer
//! sends the exit request again as itself to the provider's negotiation address
//! inside the tunnel; an ack proves the tunnel carries its traffic. This machine
//! decides when to send the request again, when to give up, and what an answer
//! means. The caller owns the socket and the clock: it calls [`Exchange::poll`] with
//! `now`, carries out the returned [`Action`], and feeds each datagram from the
//! provider's negotiation address to [`Exchange::handle`]. (The grant itself is asked
//! for over the exit channel, [`crate::channel`].)

use crate::store::Refusal;
use crate::wire::{Message, WireError};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// How often the request is sent again while no answer came (datagrams get lost,
/// and the first ones go out before the tunnel's handshake completes).
pub const RESEND: Duration = Duration::from_millis(500);

/// What the provider's ack says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The consumer's inner IPv4 address.
    pub inner_v4: Ipv4Addr,
    /// Its inner IPv6 address, when the provider offers IPv6.
    pub inner_v6: Option<Ipv6Addr>,
    /// The resolver reachable through the tunnel.
    pub resolver: IpAddr,
}

/// Why an exchange ended without an ack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// The provider answered with a nak.
    #[error("the provider refused: {0}")]
    Refused(Refusal),
    /// The provider sent a negotiation message that is not an answer (a request).
    #[error("the provider answered with a request, not an ack")]
    NotAnAnswer,
    /// No readable answer came in time.
    #[error("no answer from the provider at its inner address within {}s{}: is `portdistrict exit serve` running there, and UDP to it open?",
        .budget.as_secs(), why_unreadable(.unreadable))]
    NoAnswer {
        /// The unreadable answer that came, if one did.
        unreadable: Option<WireError>,
        /// The whole time budget.
        budget: Duration,
    },
}

fn why_unreadable(e: &Option<WireError>) -> String {
    e.map(|e| format!(" (an unreadable answer: {e})"))
        .unwrap_or_default()
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<'a> {
    /// Send these bytes to the provider's negotiation address, then poll again.
    Send(&'a [u8]),
    /// Wait for a datagram until this instant (then poll again).
    Wait(Instant),
    /// Finished: the grant, or why not. Polling again returns the same.
    Done(Result<Grant, ExchangeError>),
}

/// Where the machine is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// Not polled yet: the budget starts at the first poll.
    Start,
    /// Sending and waiting: the next send is due at `next_send`, the budget ends at
    /// `until`.
    Asking { next_send: Instant, until: Instant },
    /// Finished.
    Done(Result<Grant, ExchangeError>),
}

/// One probe (see the module documentation).
#[derive(Debug, Clone)]
pub struct Exchange {
    request: Vec<u8>,
    budget: Duration,
    stage: Stage,
}

impl Exchange {
    /// The request `request` (from [`crate::negotiate::request`]) through the tunnel
    /// already up, within `budget`.
    #[must_use]
    pub fn probe(request: &Message, budget: Duration) -> Exchange {
        Exchange {
            request: request.emit(),
            budget,
            stage: Stage::Start,
        }
    }

    /// What to do at `now`. The budget starts at the first poll.
    pub fn poll(&mut self, now: Instant) -> Action<'_> {
        loop {
            match &mut self.stage {
                Stage::Done(result) => return Action::Done(result.clone()),
                Stage::Start => {
                    self.stage = Stage::Asking {
                        next_send: now,
                        until: now + self.budget,
                    };
                }
                Stage::Asking { until, .. } if now >= *until => {
                    self.stage = Stage::Done(Err(ExchangeError::NoAnswer {
                        unreadable: None,
                        budget: self.budget,
                    }));
                }
                Stage::Asking { next_send, until } => {
                    if now >= *next_send {
                        *next_send = now + RESEND;
                        return Action::Send(&self.request);
                    }
                    return Action::Wait((*next_send).min(*until));
                }
            }
        }
    }

    /// One datagram from the provider's negotiation address (the caller drops what
    /// comes from elsewhere). Ignored once finished or before the first send.
    pub fn handle(&mut self, datagram: &[u8]) {
        if !matches!(self.stage, Stage::Asking { .. }) {
            return;
        }
        self.stage = Stage::Done(match Message::parse(datagram) {
            Ok(Message::Ack {
                inner_v4,
                inner_v6,
                resolver,
            }) => Ok(Grant {
                inner_v4,
                inner_v6,
                resolver,
            }),
            Ok(Message::Nak(reason)) => Err(ExchangeError::Refused(reason)),
            Ok(Message::Request { .. }) => Err(ExchangeError::NotAnAnswer),
            Err(e) => Err(ExchangeError::NoAnswer {
                unreadable: Some(e),
                budget: self.budget,
            }),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Message {
        crate::negotiate::request([7; 16], &[0x11; 32], &[9; 32])
    }

    fn ack() -> Vec<u8> {
        Message::Ack {
            inner_v4: Ipv4Addr::new(100, 64, 0, 2),
            inner_v6: None,
            resolver: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)),
        }
        .emit()
    }

    #[test]
    fn sends_and_resends_every_half_second_then_takes_the_ack() {
        let t0 = Instant::now();
        let mut x = Exchange::probe(&request(), Duration::from_secs(4));
        let bytes = request().emit();
        assert_eq!(x.poll(t0), Action::Send(&bytes));
        assert_eq!(x.poll(t0), Action::Wait(t0 + RESEND));
        assert_eq!(
            x.poll(t0 + Duration::from_millis(499)),
            Action::Wait(t0 + RESEND)
        );
        assert_eq!(x.poll(t0 + RESEND), Action::Send(&bytes));
        x.handle(&ack());
        let Action::Done(Ok(g)) = x.poll(t0 + RESEND) else {
            panic!("an ack grants")
        };
        assert_eq!(g.inner_v4, Ipv4Addr::new(100, 64, 0, 2));
        // Finished stays finished; late datagrams change nothing.
        x.handle(&Message::Nak(Refusal::Revoked).emit());
        assert!(matches!(
            x.poll(t0 + Duration::from_secs(9)),
            Action::Done(Ok(_))
        ));
    }

    #[test]
    fn silence_ends_with_the_budget() {
        let t0 = Instant::now();
        let mut x = Exchange::probe(&request(), Duration::from_secs(3));
        let mut now = t0;
        let mut sends = 0;
        let e = loop {
            match x.poll(now) {
                Action::Send(_) => sends += 1,
                Action::Wait(until) => now = until,
                Action::Done(r) => break r.unwrap_err(),
            }
        };
        assert_eq!(now, t0 + Duration::from_secs(3));
        assert_eq!(sends, 6, "0, 0.5, ... 2.5 s");
        assert_eq!(
            e.to_string(),
            "no answer from the provider at its inner address within 3s: is `portdistrict exit serve` running there, and UDP to it open?"
        );
    }

    #[test]
    fn a_nak_a_request_or_an_unreadable_answer_ends_at_once() {
        let t0 = Instant::now();
        let mut x = Exchange::probe(&request(), Duration::from_secs(4));
        let _ = x.poll(t0);
        x.handle(&Message::Nak(Refusal::Expired).emit());
        assert_eq!(
            x.poll(t0),
            Action::Done(Err(ExchangeError::Refused(Refusal::Expired)))
        );

        let mut x = Exchange::probe(&request(), Duration::from_secs(4));
        let _ = x.poll(t0);
        // A request echoed back is not an answer.
        x.handle(&request().emit());
        assert_eq!(x.poll(t0), Action::Done(Err(ExchangeError::NotAnAnswer)));

        let mut x = Exchange::probe(&request(), Duration::from_secs(1));
        // Before the first send a datagram is ignored.
        x.handle(&ack());
        let _ = x.poll(t0);
        x.handle(&[0u8; 3]);
        let Action::Done(Err(e)) = x.poll(t0) else {
            panic!("unreadable: finished")
        };
        assert!(
            e.to_string()
                .contains("within 1s (an unreadable answer: not an exit negotiation message)"),
            "{e}"
        );
    }
}
