//! The commands of the shared-memory ring ([`portdistrict_shm::Command`]), run on
//! timer ticks after the configuration was applied: handshakes, NAT-traversal probes
//! and raw datagrams leave from the interface's own UDP socket (its NAT mapping is
//! the one that matters), each on its own `sendmsg` with its TTL (the batched fast
//! path is not involved); pins change the device's peer. A command that cannot be
//! carried out (unknown peer, no socket, a refused send) is logged and counted in
//! `shm_command_failures`.

use super::Driver;
use portdistrict_shm::Command;
use portdistrict_wg::PublicKey;
use std::time::Instant;

impl Driver {
    /// Runs one command from the ring; false if it could not be carried out.
    pub(super) fn run_shm_command(&mut self, now: Instant, name: &str, cmd: Command) -> bool {
        match cmd {
            Command::Handshake(key) => {
                let mut known = false;
                let key = PublicKey(key);
                self.with_io(|device, io| known = device.initiate_handshake(now, &key, io));
                if !known {
                    tracing::warn!(
                        "{name}: shared memory asked for a handshake with an unknown peer"
                    );
                }
                known
            }
            Command::Probe { peer, to, ttl } => {
                let mut result = Ok(());
                let key = PublicKey(peer);
                self.with_io(|device, io| result = device.probe(now, &key, to, ttl, io));
                if let Err(e) = result {
                    tracing::warn!(
                        "{name}: probe of {} to {to} (TTL {ttl}): {e}",
                        key.to_base64()
                    );
                }
                result.is_ok()
            }
            Command::Pin { peer, to } => {
                let key = PublicKey(peer);
                let before = self
                    .device
                    .peer(&key)
                    .and_then(|p| p.endpoint)
                    .map(|e| e.addr);
                let known = self.device.pin_endpoint(&key, to);
                if !known {
                    tracing::warn!("{name}: shared memory asked to pin an unknown peer");
                } else if to.is_some() && to != before {
                    // Moved (to a relay): packets waiting for a handshake that went
                    // elsewhere go out through the new endpoint now, not in 5 s.
                    self.with_io(|device, io| {
                        device.handshake_at_new_endpoint(now, &key, io);
                    });
                }
                known
            }
            Command::Hold { peer, on } => {
                let known = self.device.hold_initiations(&PublicKey(peer), on);
                if !known {
                    tracing::warn!("{name}: shared memory asked to hold an unknown peer");
                }
                known
            }
            Command::Send { to, ttl, payload } => {
                let Some(udp) = self.egress.udp.as_ref() else {
                    tracing::warn!("{name}: no UDP socket to send a raw datagram to {to}");
                    return false;
                };
                match udp.send_ttl(payload.as_bytes(), to, ttl) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!("{name}: raw datagram to {to} (TTL {ttl}): {e}");
                        false
                    }
                }
            }
        }
    }
}
