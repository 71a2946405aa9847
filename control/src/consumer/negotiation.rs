//! The exit request: as the invite's negotiation identity to get a grant, and as
//! ourselves to prove the tunnel carries our traffic. The decisions (which endpoint,
//! when to send again, when to move on, what an answer means) are the sans-IO
//! [`Exchange`]; this file carries them out with the tunnel, a UDP socket and the clock.

use super::tunnel::{configure, set_addresses};
use super::{netlink, Granted, UseState};
use portdistrict_netlink as nl;

use crate::serve::{NEGOTIATION_PORT, PROVIDER_V4};
use anyhow::Context as _;
use portdistrict_exitnode::client::{Action, Exchange, Grant};
use portdistrict_exitnode::invite::Invite;
use portdistrict_exitnode::wire::Message;
use portdistrict_wg::config::AllowedIpChange;
use portdistrict_wg::{PrivateKey, PublicKey};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// The exit request as the invite's negotiation identity, trying each endpoint in
/// turn; records the endpoint that answered.
pub(super) fn negotiate(
    s: &mut UseState,
    invite: &Invite,
    key: &PrivateKey,
    timeout: Duration,
) -> anyhow::Result<Granted> {
    let mut exchange = Exchange::negotiate(&request(invite, key), &invite.endpoints, timeout);
    let g = run(IpAddr::V4(invite.negotiation_addr), &mut exchange, |ep| {
        point(s, invite, ep)
    })?;
    if let Some(ep) = g.endpoint {
        s.endpoint = ep;
    }
    Ok(Granted {
        inner_v4: g.inner_v4,
        inner_v6: g.inner_v6,
        resolver: g.resolver,
    })
}

/// Points the tunnel at `ep` as the invite's negotiation identity, with a route to
/// the provider's negotiation address through it.
fn point(s: &UseState, invite: &Invite, ep: SocketAddr) -> anyhow::Result<()> {
    let provider = PublicKey(invite.wg_key);
    let neg = PrivateKey::from_bytes(invite.negotiation_key);
    configure(
        &s.interface,
        &neg,
        &provider,
        ep,
        &[host(IpAddr::V4(PROVIDER_V4))],
    )?;
    set_addresses(&s.interface, IpAddr::V4(invite.negotiation_addr), None)?;
    let mut nl = netlink()?;
    let route = nl::Route {
        family: nl::Family::V4,
        dst: Some((IpAddr::V4(PROVIDER_V4), 32)),
        oif: Some(nl.link_index(&s.interface)?),
        table: 254,
        kind: nl::RouteKind::Unicast,
    };
    nl.route(nl::Verb::Replace, &route)
        .with_context(|| format!("a route to {PROVIDER_V4} via {}", s.interface))
}

pub(super) fn host(addr: IpAddr) -> AllowedIpChange {
    AllowedIpChange {
        addr,
        cidr: if addr.is_ipv4() { 32 } else { 128 },
        remove: false,
    }
}

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
    run(IpAddr::V4(inner_v4), &mut exchange, |_| Ok(())).map(|_| ())
}

/// Carries out `exchange` to its end from a UDP socket on `src` to the provider's
/// negotiation port; `point` points the tunnel at an endpoint. The socket is bound
/// after pointing (which may put `src` on the interface), afresh for each endpoint.
fn run(
    src: IpAddr,
    exchange: &mut Exchange,
    mut point: impl FnMut(SocketAddr) -> anyhow::Result<()>,
) -> anyhow::Result<Grant> {
    let to = SocketAddr::new(IpAddr::V4(PROVIDER_V4), NEGOTIATION_PORT);
    let mut sock: Option<UdpSocket> = None;
    let mut buf = [0u8; 512];
    loop {
        let now = Instant::now();
        match exchange.poll(now) {
            Action::Done(result) => return result.map_err(Into::into),
            Action::UseEndpoint(ep) => {
                sock = None;
                point(ep)?;
            }
            Action::Send(bytes) => {
                let s = match sock.take() {
                    Some(s) => s,
                    None => UdpSocket::bind(SocketAddr::new(src, 0))
                        .with_context(|| format!("binding a UDP socket to {src}"))?,
                };
                // Sends fail while the kernel has no route yet; the next one may not.
                if let Err(e) = s.send_to(bytes, to) {
                    tracing::debug!("sending the exit request to {to}: {e}");
                }
                sock = Some(s);
            }
            Action::Wait(until) => {
                let wait = until.saturating_duration_since(now);
                let Some(s) = sock.as_ref().filter(|_| !wait.is_zero()) else {
                    std::thread::sleep(wait);
                    continue;
                };
                s.set_read_timeout(Some(wait))?;
                match s.recv_from(&mut buf) {
                    Ok((n, from)) if from == to => exchange.handle(&buf[..n]),
                    Ok(_) => {}
                    Err(e) if crate::nothing_arrived(&e) => {}
                    Err(e) => return Err(e).context("receiving the provider's answer"),
                }
            }
        }
    }
}
