//! The per-peer timers of the WireGuard paper §6, with wireguard-go's semantics
//! (`device/timers.go`), as plain deadlines.
//!
//! The peer calls the `on_*` hooks when the corresponding event happens; the device
//! asks [`Timers::next_deadline`] when to come back and pops expired timers with
//! [`Timers::pop_expired`]. Jitter is passed in by the caller (it owns the RNG).

use crate::constants::{KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_TIMEOUT};
use std::time::{Duration, Instant};

/// A timer that fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerEvent {
    /// No response to our initiation within `REKEY_TIMEOUT` (+ jitter): retry, or give
    /// up after `REKEY_ATTEMPT_TIME`.
    RetransmitHandshake,
    /// We received data and sent nothing back for `KEEPALIVE_TIMEOUT`: send a keepalive.
    SendKeepalive,
    /// We sent data and heard nothing for `KEEPALIVE_TIMEOUT + REKEY_TIMEOUT`: new handshake.
    NewHandshake,
    /// No new session for `3 * REJECT_AFTER_TIME`: erase all key material.
    ZeroKeyMaterial,
    /// The persistent keepalive interval passed without any packet sent.
    PersistentKeepalive,
}

/// Deadlines of one peer's timers; `None` means not pending.
#[derive(Debug, Default, Clone)]
pub struct Timers {
    retransmit_handshake: Option<Instant>,
    send_keepalive: Option<Instant>,
    new_handshake: Option<Instant>,
    zero_key_material: Option<Instant>,
    persistent_keepalive: Option<Instant>,
    /// Handshake initiations sent since the last completed handshake.
    pub handshake_attempts: u32,
    /// A keepalive is owed after the pending one fires (more data arrived meanwhile).
    pub need_another_keepalive: bool,
    /// The initiator already started the "last minute" handshake of this session.
    pub sent_last_minute_handshake: bool,
}

impl Timers {
    /// The earliest pending deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.retransmit_handshake,
            self.send_keepalive,
            self.new_handshake,
            self.zero_key_material,
            self.persistent_keepalive,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Removes and returns one timer whose deadline is at or before `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<TimerEvent> {
        let slots: [(&mut Option<Instant>, TimerEvent); 5] = [
            (
                &mut self.retransmit_handshake,
                TimerEvent::RetransmitHandshake,
            ),
            (&mut self.send_keepalive, TimerEvent::SendKeepalive),
            (&mut self.new_handshake, TimerEvent::NewHandshake),
            (&mut self.zero_key_material, TimerEvent::ZeroKeyMaterial),
            (
                &mut self.persistent_keepalive,
                TimerEvent::PersistentKeepalive,
            ),
        ];
        for (slot, ev) in slots {
            if slot.is_some_and(|d| d <= now) {
                *slot = None;
                return Some(ev);
            }
        }
        None
    }

    /// Stops every timer (peer removed or device down).
    pub fn stop_all(&mut self) {
        *self = Self::default();
    }

    /// True while the "new handshake" timer runs (data sent, no reply yet).
    pub fn new_handshake_pending(&self) -> bool {
        self.new_handshake.is_some()
    }

    /// A data packet (not a keepalive) was sent.
    pub fn on_data_sent(&mut self, now: Instant, jitter: Duration) {
        if self.new_handshake.is_none() {
            self.new_handshake = Some(now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter);
        }
    }

    /// A data packet (not a keepalive) was received.
    pub fn on_data_received(&mut self, now: Instant) {
        if self.send_keepalive.is_none() {
            self.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
        } else {
            self.need_another_keepalive = true;
        }
    }

    /// Any authenticated packet (handshake, data or keepalive) was sent.
    pub fn on_authenticated_packet_sent(&mut self) {
        self.send_keepalive = None;
    }

    /// Any authenticated packet was received.
    pub fn on_authenticated_packet_received(&mut self) {
        self.new_handshake = None;
    }

    /// A handshake initiation was sent.
    pub fn on_handshake_initiated(&mut self, now: Instant, jitter: Duration) {
        self.retransmit_handshake = Some(now + REKEY_TIMEOUT + jitter);
    }

    /// A handshake completed (response consumed, or first data on a responder session).
    pub fn on_handshake_complete(&mut self) {
        self.retransmit_handshake = None;
        self.handshake_attempts = 0;
        self.sent_last_minute_handshake = false;
    }

    /// New session keys were derived.
    pub fn on_session_derived(&mut self, now: Instant) {
        self.zero_key_material = Some(now + REJECT_AFTER_TIME * 3);
    }

    /// Any authenticated packet was sent or received: re-arm the persistent keepalive.
    pub fn on_authenticated_packet_traversal(&mut self, now: Instant, persistent_keepalive: u16) {
        if persistent_keepalive > 0 {
            self.persistent_keepalive =
                Some(now + Duration::from_secs(u64::from(persistent_keepalive)));
        }
    }

    /// Handshake retries gave up: keep no keepalive pending, and make sure key
    /// material is erased eventually.
    pub fn on_handshake_gave_up(&mut self, now: Instant) {
        self.send_keepalive = None;
        if self.zero_key_material.is_none() {
            self.zero_key_material = Some(now + REJECT_AFTER_TIME * 3);
        }
    }

    /// Re-arms the keepalive timer after it fired, if another one is owed.
    pub fn rearm_keepalive_if_needed(&mut self, now: Instant) {
        if self.need_another_keepalive {
            self.need_another_keepalive = false;
            self.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
        }
    }

    /// Cancels the persistent keepalive (interval set to zero).
    pub fn clear_persistent_keepalive(&mut self) {
        self.persistent_keepalive = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_sent_without_reply_triggers_new_handshake_after_15s() {
        let t0 = crate::test_now();
        let mut t = Timers::default();
        t.on_data_sent(t0, Duration::ZERO);
        assert_eq!(t.pop_expired(t0 + Duration::from_secs(14)), None);
        assert_eq!(
            t.pop_expired(t0 + Duration::from_secs(15)),
            Some(TimerEvent::NewHandshake)
        );
        // A reply cancels it.
        t.on_data_sent(t0, Duration::ZERO);
        t.on_authenticated_packet_received();
        assert_eq!(t.pop_expired(t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn passive_keepalive_once_not_looping() {
        let t0 = crate::test_now();
        let mut t = Timers::default();
        t.on_data_received(t0);
        t.on_data_received(t0 + Duration::from_secs(1));
        assert!(t.need_another_keepalive);
        let fire = t0 + KEEPALIVE_TIMEOUT;
        assert_eq!(t.pop_expired(fire), Some(TimerEvent::SendKeepalive));
        t.on_authenticated_packet_sent();
        t.rearm_keepalive_if_needed(fire);
        assert_eq!(
            t.pop_expired(fire + KEEPALIVE_TIMEOUT),
            Some(TimerEvent::SendKeepalive)
        );
        t.rearm_keepalive_if_needed(fire + KEEPALIVE_TIMEOUT);
        // No more data: no further keepalives (no passive-keepalive loop).
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn retransmit_and_persistent_keepalive() {
        let t0 = crate::test_now();
        let mut t = Timers::default();
        t.on_handshake_initiated(t0, Duration::from_millis(100));
        assert_eq!(
            t.next_deadline(),
            Some(t0 + REKEY_TIMEOUT + Duration::from_millis(100))
        );
        t.on_handshake_complete();
        assert_eq!(t.next_deadline(), None);
        t.on_authenticated_packet_traversal(t0, 25);
        assert_eq!(
            t.pop_expired(t0 + Duration::from_secs(25)),
            Some(TimerEvent::PersistentKeepalive)
        );
        t.on_authenticated_packet_traversal(t0, 0);
        assert_eq!(t.next_deadline(), None);
    }
}
