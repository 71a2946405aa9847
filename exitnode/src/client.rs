//! The consumer's side of an exit negotiation, sans-IO: which endpoint to point the
//! tunnel at, when to (re)send the request, when to give up on an endpoint, and what
//! an answer means. The caller owns the tunnel, the socket and the clock: it calls
//! [`Exchange::poll`] with `now`, carries out the returned [`Action`], and feeds each
//! datagram from the provider's negotiation address to [`Exchange::handle`].
//!
//! One machine serves both uses:
//! - [`Exchange::negotiate`]: the request as the invite's negotiation identity, each
//!   endpoint in turn with an equal share of the time budget; an ack grants, a nak
//!   refuses at once (every endpoint is the same provider), an unreadable answer or
//!   silence moves on to the next endpoint.
//! - [`Exchange::probe`]: the request again as ourselves, through the tunnel already
//!   up: an ack proves it carries our traffic.

use crate::store::Refusal;
use crate::wire::{Message, WireError};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// How often the request is sent again while no answer came (datagrams get lost,
/// and the first ones go out before the tunnel's handshake completes).
pub const RESEND: Duration = Duration::from_millis(500);

/// What the provider granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The consumer's inner IPv4 address.
    pub inner_v4: Ipv4Addr,
    /// Its inner IPv6 address, when the provider offers IPv6.
    pub inner_v6: Option<Ipv6Addr>,
    /// The resolver reachable through the tunnel.
    pub resolver: IpAddr,
    /// The endpoint that answered (`None` for a probe, which has no endpoint list).
    pub endpoint: Option<SocketAddr>,
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
    /// No endpoint answered in time; the last thing each one did.
    #[error("no answer from the provider at {} within {}s{}: is `portdistrict exit serve` running there, and UDP to it open?",
        endpoints(.tried), .budget.as_secs(), unreadable(.tried))]
    NoAnswer {
        /// Each endpoint tried, with the unreadable answer it gave (if one did).
        tried: Vec<(Option<SocketAddr>, Option<WireError>)>,
        /// The whole time budget.
        budget: Duration,
    },
}

fn endpoints(tried: &[(Option<SocketAddr>, Option<WireError>)]) -> String {
    let named: Vec<String> = tried
        .iter()
        .filter_map(|(ep, _)| ep.map(|e| e.to_string()))
        .collect();
    if named.is_empty() {
        "its inner address".to_owned()
    } else {
        named.join(", ")
    }
}

fn unreadable(tried: &[(Option<SocketAddr>, Option<WireError>)]) -> String {
    tried
        .iter()
        .filter_map(|(ep, e)| {
            e.map(|e| match ep {
                Some(ep) => format!(" ({ep} answered unreadably: {e})"),
                None => format!(" (an unreadable answer: {e})"),
            })
        })
        .collect()
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<'a> {
    /// Point the tunnel's peer at this endpoint (and route the provider's negotiation
    /// address through it), then poll again.
    UseEndpoint(SocketAddr),
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
    /// The tunnel must be pointed at `endpoints[current]` first.
    Point,
    /// Sending and waiting: the next send is due at `next_send`, this endpoint's time
    /// ends at `until`.
    Asking { next_send: Instant, until: Instant },
    /// Finished.
    Done(Result<Grant, ExchangeError>),
}

/// One exit request exchange (see the module documentation).
#[derive(Debug, Clone)]
pub struct Exchange {
    request: Vec<u8>,
    /// The endpoints to try in turn; `[None]` for a probe (no endpoint to point at).
    endpoints: Vec<Option<SocketAddr>>,
    current: usize,
    per_endpoint: Duration,
    budget: Duration,
    /// The unreadable answer of each endpoint tried so far.
    tried: Vec<(Option<SocketAddr>, Option<WireError>)>,
    stage: Stage,
}

impl Exchange {
    /// The request `request` (from [`crate::negotiate::request`]) to each of
    /// `endpoints` in turn, within `budget` in all. No endpoint at all ends at once
    /// with [`ExchangeError::NoAnswer`].
    #[must_use]
    pub fn negotiate(request: &Message, endpoints: &[SocketAddr], budget: Duration) -> Exchange {
        Exchange::new(
            request,
            endpoints.iter().copied().map(Some).collect(),
            budget,
        )
    }

    /// The request `request` through the tunnel already up, within `budget`.
    #[must_use]
    pub fn probe(request: &Message, budget: Duration) -> Exchange {
        Exchange::new(request, vec![None], budget)
    }

    fn new(request: &Message, endpoints: Vec<Option<SocketAddr>>, budget: Duration) -> Exchange {
        let per_endpoint = budget / u32::try_from(endpoints.len().max(1)).unwrap_or(u32::MAX);
        let stage = if endpoints.is_empty() {
            Stage::Done(Err(ExchangeError::NoAnswer {
                tried: Vec::new(),
                budget,
            }))
        } else {
            Stage::Point
        };
        Exchange {
            request: request.emit(),
            endpoints,
            current: 0,
            per_endpoint,
            budget,
            tried: Vec::new(),
            stage,
        }
    }

    /// The endpoint being asked now (`None` for a probe or once finished).
    #[must_use]
    pub fn endpoint(&self) -> Option<SocketAddr> {
        match self.stage {
            Stage::Done(_) => None,
            _ => self.endpoints.get(self.current).copied().flatten(),
        }
    }

    /// What to do at `now`.
    pub fn poll(&mut self, now: Instant) -> Action<'_> {
        loop {
            match &mut self.stage {
                Stage::Done(result) => return Action::Done(result.clone()),
                Stage::Point => {
                    self.stage = Stage::Asking {
                        next_send: now,
                        until: now + self.per_endpoint,
                    };
                    if let Some(ep) = self.endpoints[self.current] {
                        return Action::UseEndpoint(ep);
                    }
                }
                Stage::Asking { until, .. } if now >= *until => self.next_endpoint(None),
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
        let endpoint = self.endpoints[self.current];
        self.stage = Stage::Done(match Message::parse(datagram) {
            Ok(Message::Ack {
                inner_v4,
                inner_v6,
                resolver,
            }) => Ok(Grant {
                inner_v4,
                inner_v6,
                resolver,
                endpoint,
            }),
            Ok(Message::Nak(reason)) => Err(ExchangeError::Refused(reason)),
            Ok(Message::Request { .. }) => Err(ExchangeError::NotAnAnswer),
            Err(e) => {
                // Not from this provider's negotiation service as we know it: the
                // next endpoint may be.
                self.next_endpoint(Some(e));
                return;
            }
        });
    }

    /// Gives up on the current endpoint (`why`: its unreadable answer).
    fn next_endpoint(&mut self, why: Option<WireError>) {
        self.tried.push((self.endpoints[self.current], why));
        self.current += 1;
        self.stage = if self.current < self.endpoints.len() {
            Stage::Point
        } else {
            Stage::Done(Err(ExchangeError::NoAnswer {
                tried: std::mem::take(&mut self.tried),
                budget: self.budget,
            }))
        };
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

    fn eps() -> Vec<SocketAddr> {
        vec![
            "192.0.2.1:51820".parse().unwrap(),
            "[2001:db8::1]:51820".parse().unwrap(),
        ]
    }

    #[test]
    fn points_sends_and_resends_every_half_second_then_takes_the_ack() {
        let t0 = Instant::now();
        let mut x = Exchange::negotiate(&request(), &eps(), Duration::from_secs(4));
        assert_eq!(x.poll(t0), Action::UseEndpoint(eps()[0]));
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
        assert_eq!(g.endpoint, Some(eps()[0]));
        // Finished stays finished; late datagrams change nothing.
        x.handle(&Message::Nak(Refusal::Revoked).emit());
        assert!(matches!(
            x.poll(t0 + Duration::from_secs(9)),
            Action::Done(Ok(_))
        ));
    }

    #[test]
    fn a_silent_endpoint_gives_its_share_of_the_budget_to_the_next() {
        let t0 = Instant::now();
        let mut x = Exchange::negotiate(&request(), &eps(), Duration::from_secs(4));
        assert_eq!(x.poll(t0), Action::UseEndpoint(eps()[0]));
        let mut sends = 0;
        let mut now = t0;
        while now < t0 + Duration::from_secs(2) {
            match x.poll(now) {
                Action::Send(_) => sends += 1,
                Action::Wait(until) => {
                    assert!(until <= t0 + Duration::from_secs(2), "waits past the share");
                    now = until;
                }
                other => panic!("{other:?} before the share ended"),
            }
        }
        assert_eq!(sends, 4, "0, 0.5, 1, 1.5 s");
        assert_eq!(x.poll(now), Action::UseEndpoint(eps()[1]));
        assert_eq!(x.endpoint(), Some(eps()[1]));
        assert!(matches!(x.poll(now), Action::Send(_)));
        x.handle(&ack());
        let Action::Done(Ok(g)) = x.poll(now) else {
            panic!("the second endpoint's ack grants")
        };
        assert_eq!(g.endpoint, Some(eps()[1]));
    }

    #[test]
    fn a_nak_ends_at_once_and_silence_everywhere_names_every_endpoint() {
        let t0 = Instant::now();
        let mut x = Exchange::negotiate(&request(), &eps(), Duration::from_secs(4));
        let _ = x.poll(t0);
        let _ = x.poll(t0);
        x.handle(&Message::Nak(Refusal::Expired).emit());
        assert_eq!(
            x.poll(t0),
            Action::Done(Err(ExchangeError::Refused(Refusal::Expired)))
        );

        let mut x = Exchange::negotiate(&request(), &eps(), Duration::from_secs(4));
        let mut now = t0;
        let result = loop {
            match x.poll(now) {
                Action::Wait(until) => now = until,
                Action::Done(r) => break r,
                _ => {}
            }
        };
        assert!(now <= t0 + Duration::from_secs(4));
        let e = result.unwrap_err();
        assert_eq!(
            e.to_string(),
            "no answer from the provider at 192.0.2.1:51820, [2001:db8::1]:51820 within 4s: is `portdistrict exit serve` running there, and UDP to it open?"
        );
    }

    #[test]
    fn an_unreadable_answer_moves_on_and_is_reported() {
        let t0 = Instant::now();
        let mut x = Exchange::negotiate(&request(), &eps(), Duration::from_secs(2));
        let _ = x.poll(t0);
        let _ = x.poll(t0);
        x.handle(b"PDX\x09garbage");
        assert_eq!(x.poll(t0), Action::UseEndpoint(eps()[1]));
        let _ = x.poll(t0);
        // A request echoed back is not an answer.
        x.handle(&request().emit());
        assert_eq!(x.poll(t0), Action::Done(Err(ExchangeError::NotAnAnswer)));

        let mut x = Exchange::negotiate(&request(), &eps()[..1], Duration::from_secs(1));
        let _ = x.poll(t0);
        let _ = x.poll(t0);
        x.handle(&[0u8; 3]);
        let Action::Done(Err(e)) = x.poll(t0) else {
            panic!("one endpoint, unreadable: finished")
        };
        assert!(
            e.to_string()
                .contains("(192.0.2.1:51820 answered unreadably: not an exit negotiation message)"),
            "{e}"
        );
    }

    #[test]
    fn a_probe_sends_without_pointing_and_no_endpoints_fails_at_once() {
        let t0 = Instant::now();
        let mut x = Exchange::probe(&request(), Duration::from_secs(3));
        assert!(matches!(x.poll(t0), Action::Send(_)));
        assert_eq!(x.endpoint(), None);
        x.handle(&ack());
        assert!(matches!(
            x.poll(t0),
            Action::Done(Ok(Grant { endpoint: None, .. }))
        ));

        let mut x = Exchange::probe(&request(), Duration::from_secs(3));
        let mut now = t0;
        let e = loop {
            match x.poll(now) {
                Action::Wait(until) => now = until,
                Action::Done(r) => break r.unwrap_err(),
                _ => {}
            }
        };
        assert_eq!(now, t0 + Duration::from_secs(3));
        assert!(e
            .to_string()
            .starts_with("no answer from the provider at its inner address within 3s"));

        let mut x = Exchange::negotiate(&request(), &[], Duration::from_secs(3));
        assert!(matches!(
            x.poll(t0),
            Action::Done(Err(ExchangeError::NoAnswer { .. }))
        ));
    }
}
