//! The exit request inside the tunnel, as ourselves once granted: the provider's
//! answer proves the tunnel carries our traffic. (The grant itself is asked for over
//! the exit channel, [`super::channel`].) The decisions (when to send again, what an
//! answer means) are the sans-IO [`Exchange`]; this file carries them out with a UDP
//! socket and the clock.

use crate::serve::{NEGOTIATION_PORT, PROVIDER_V4};
use anyhow::Context as _;
use portdistrict_exitnode::client::{Action, Exchange, Grant};
use portdistrict_exitnode::invite::Invite;
use portdistrict_exitnode::wire::Message;
use portdistrict_wg::PrivateKey;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// The exit request for `invite` as `key`, with the proof that we hold `key`.
pub(super) fn request(invite: &Invite, key: &PrivateKey) -> Message {
    portdistrict_exitnode::negotiate::request(invite.token, key.as_bytes(), &invite.wg_key)
}

/// Asks the provider again as ourselves from our inner address: an ack proves the
/// tunnel carries our traffic.
pub(super) fn probe(
    inner_v4: Ipv4Addr,
    invite: &Invite,
    key: &PrivateKey,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut exchange = Exchange::probe(&request(invite, key), timeout);
    run(IpAddr::V4(inner_v4), &mut exchange).map(|_| ())
}

/// One probe within `wait`: its round trip when the provider answered through the
/// tunnel, `None` when nothing came; a refusal is an error.
pub(super) fn probe_once(
    inner_v4: Ipv4Addr,
    invite: &Invite,
    key: &PrivateKey,
    wait: Duration,
) -> anyhow::Result<Option<Duration>> {
    let started = std::time::Instant::now();
    match probe(inner_v4, invite, key, wait) {
        Ok(()) => Ok(Some(started.elapsed())),
        Err(e)
            if matches!(
                e.downcast_ref::<portdistrict_exitnode::client::ExchangeError>(),
                Some(portdistrict_exitnode::client::ExchangeError::NoAnswer { .. })
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Carries out `exchange` to its end from a UDP socket on `src` to the provider's
/// negotiation port.
fn run(src: IpAddr, exchange: &mut Exchange) -> anyhow::Result<Grant> {
    let to = SocketAddr::new(IpAddr::V4(PROVIDER_V4), NEGOTIATION_PORT);
    let sock = UdpSocket::bind(SocketAddr::new(src, 0))
        .with_context(|| format!("binding a UDP socket to {src}"))?;
    let mut buf = [0u8; 512];
    loop {
        let now = Instant::now();
        match exchange.poll(now) {
            Action::Done(result) => return result.map_err(Into::into),
            Action::Send(bytes) => {
                // Sends fail while the kernel has no route yet; the next one may not.
                if let Err(e) = sock.send_to(bytes, to) {
                    tracing::debug!("sending the exit request to {to}: {e}");
                }
            }
            Action::Wait(until) => {
                let wait = until.saturating_duration_since(now);
                if wait.is_zero() {
                    continue;
                }
                sock.set_read_timeout(Some(wait))?;
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) if from == to => exchange.handle(&buf[..n]),
                    Ok(_) => {}
                    Err(e) if crate::nothing_arrived(&e) => {}
                    Err(e) => return Err(e).context("receiving the provider's answer"),
                }
            }
        }
    }
}
