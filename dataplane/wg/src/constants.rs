//! Protocol constants, exactly as in the WireGuard paper and wireguard-go
//! `device/constants.go`.

use std::time::Duration;

/// After this long a session's initiator starts a new handshake on send.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// After this long a session is not used for sending or receiving at all.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Give up retrying handshakes for queued data after this long.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Retransmit a handshake initiation after this long (plus jitter).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of the random jitter added to `REKEY_TIMEOUT`.
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(334);
/// Send a passive keepalive when we received data but sent nothing for this long.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Cookie secrets rotate, and received cookies expire, after this long.
pub const COOKIE_REFRESH_TIME: Duration = Duration::from_secs(120);
/// Minimum time between accepted handshake initiations from one peer (flood guard).
pub const HANDSHAKE_INITIATION_RATE: Duration = Duration::from_millis(20);
/// Start a new handshake after sending this many messages with one key.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// Never send or accept more than this many messages with one key.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13) - 1;
/// Width of the anti-replay window in bits (the kernel's value).
pub const REPLAY_WINDOW_BITS: u64 = 8192;
/// Transport payloads are padded to a multiple of this many bytes.
pub const PADDING_MULTIPLE: usize = 16;
/// At most this many packets are queued per peer while waiting for a handshake.
pub const MAX_QUEUED_PACKETS: usize = 1024;
/// Handshake initiations per second per source address before rate limiting.
pub const RATELIMIT_PACKETS_PER_SECOND: u64 = 20;
/// Burst of handshake initiations allowed per source address.
pub const RATELIMIT_PACKETS_BURST: u64 = 5;
/// Handshake messages per second above which the device is "under load" and
/// answers initiations lacking a valid cookie MAC2 with a cookie reply.
pub const UNDER_LOAD_HANDSHAKES_PER_SECOND: u32 = 1024;
/// Stay under load for this long after the queue drains.
pub const UNDER_LOAD_AFTER_TIME: Duration = Duration::from_secs(1);

/// Probes (NAT-traversal handshake initiations to given addresses) sent within this
/// time of the previous one send the same initiation: one round of probes to every
/// candidate address shares one handshake state, so that the answer to any of them
/// finds it (a fresh initiation per address would replace the state the answer to the
/// previous one needs).
pub const PROBE_ROUND: Duration = Duration::from_millis(25);
