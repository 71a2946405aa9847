//! Counters of everything the device dropped or refused, by reason, and of a few
//! notable events. Every drop increments exactly one counter: none is silent.

macro_rules! stats {
    ($( $(#[doc = $doc:literal])* $name:ident ),* $(,)?) => {
        /// Drop and event counters of one device.
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        pub struct Stats {
            $( $(#[doc = $doc])* pub $name: u64, )*
        }

        impl Stats {
            /// Every counter with its name, in a fixed order.
            pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$( (stringify!($name), self.$name), )*].into_iter()
            }

            /// Each counter's name with its description (its doc comment), in the
            /// order of [`Stats::iter`]: the help text of the metrics endpoint.
            pub const HELP: &'static [(&'static str, &'static str)] = &[
                $( (stringify!($name), concat!($($doc),*)), )*
            ];
        }
    };
}

stats! {
    /// Datagrams whose type, reserved bytes or length are not WireGuard's.
    rx_malformed,
    /// Handshake messages with an invalid MAC1 (not for us, or junk).
    rx_bad_mac1,
    /// Handshake messages while no private key is set.
    rx_no_private_key,
    /// Handshake messages answered with a cookie reply under load (no valid MAC2).
    tx_cookie_reply,
    /// Handshake messages refused by the per-source rate limiter under load.
    rx_rate_limited,
    /// Initiations or responses that failed Noise decryption or named no peer.
    rx_handshake_invalid,
    /// Initiations with a stale timestamp (replayed) or arriving faster than 50/s from one peer.
    rx_handshake_replay,
    /// Responses or cookie replies for an index we do not hold.
    rx_unknown_index,
    /// Cookie replies that failed to decrypt or were unsolicited.
    rx_cookie_invalid,
    /// Cookie replies accepted.
    rx_cookie_reply,
    /// Data messages that failed authentication.
    rx_decrypt_failed,
    /// Data messages with a replayed or too old counter.
    rx_replay,
    /// Data messages for an expired session.
    rx_session_expired,
    /// Decrypted packets that are not IPv4/IPv6 or whose length field lies.
    rx_inner_malformed,
    /// Decrypted packets whose source address is not in the sending peer's AllowedIPs.
    rx_allowed_ips_violation,
    /// Keepalives received.
    rx_keepalive,
    /// Packets from the TUN device that are not IPv4/IPv6.
    tx_malformed,
    /// Packets from the TUN device whose destination matches no peer's AllowedIPs.
    tx_no_route,
    /// Packets staged for a handshake and dropped because the queue was full or the
    /// handshake gave up.
    tx_queue_dropped,
    /// Datagrams the operating system refused to send.
    tx_send_failed,
    /// Data messages dropped unsent because they could not be sealed (not laid out
    /// as a data message: a bug, never expected); wiped, no plaintext leaves.
    tx_seal_dropped,
    /// Peers with no known endpoint when something had to be sent to them.
    tx_no_endpoint,
    /// Handshake initiations sent.
    tx_handshake_initiation,
    /// Handshake responses sent.
    tx_handshake_response,
    /// Handshakes completed.
    handshakes_completed,
    /// Authenticated handshake messages (initiations and responses) received: each
    /// one moves the peer's handshake source.
    rx_handshake,
    /// Keys that became peers by an authenticated initiation (open admission only).
    admitted,
    /// NAT-traversal probes sent (handshake initiations to a given address).
    tx_probe,
    /// Handshake initiations not sent because NAT traversal holds the peer.
    tx_handshake_held,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_its_doc_as_help() {
        let names: Vec<&str> = Stats::default().iter().map(|(n, _)| n).collect();
        let help: Vec<&str> = Stats::HELP.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, help);
        let (_, h) = Stats::HELP.iter().find(|(n, _)| *n == "rx_replay").unwrap();
        assert_eq!(*h, " Data messages with a replayed or too old counter.");
        assert!(Stats::HELP.iter().all(|(_, h)| !h.trim().is_empty()));
    }
}
