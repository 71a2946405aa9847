//! The exit request: as the invite's negotiation identity to get a grant, and as
//! ourselves to prove the tunnel carries our traffic.

use super::tunnel::{configure, set_addresses};
use super::{netlink, Granted, UseState};
use portdistrict_netlink as nl;

use crate::serve::{NEGOTIATION_PORT, PROVIDER_V4};
use anyhow::{bail, Context as _};
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
    let provider = PublicKey(invite.wg_key);
    let neg = PrivateKey::from_bytes(invite.negotiation_key);
    let mut answer = None;
    let per = timeout / u32::try_from(invite.endpoints.len()).unwrap_or(1);
    for ep in &invite.endpoints {
        configure(
            &s.interface,
            &neg,
            &provider,
            *ep,
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
            .with_context(|| format!("a route to {PROVIDER_V4} via {}", s.interface))?;
        match exchange(
            IpAddr::V4(invite.negotiation_addr),
            &request(invite, key),
            per,
        ) {
            Ok(m) => {
                s.endpoint = *ep;
                answer = Some(m);
                break;
            }
            Err(e) => tracing::warn!("{ep}: {e:#}"),
        }
    }
    match answer {
        Some(Message::Ack {
            inner_v4,
            inner_v6,
            resolver,
        }) => Ok(Granted {
            inner_v4,
            inner_v6,
            resolver,
        }),
        Some(Message::Nak(reason)) => bail!("the provider refused: {reason}"),
        Some(other) => bail!("the provider answered {other:?}, not an ack"),
        None => bail!(
            "no answer from the provider at {} within {}s: is `portdistrict exit serve` running there, and UDP to it open?",
            invite
                .endpoints
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            timeout.as_secs()
        ),
    }
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

/// Sends `msg` from `src` to the provider's negotiation port every half second until
/// a negotiation message comes back or `timeout` passes.
pub(super) fn exchange(src: IpAddr, msg: &Message, timeout: Duration) -> anyhow::Result<Message> {
    let sock = UdpSocket::bind(SocketAddr::new(src, 0))
        .with_context(|| format!("binding a UDP socket to {src}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let to = SocketAddr::new(IpAddr::V4(PROVIDER_V4), NEGOTIATION_PORT);
    let bytes = msg.emit();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        // Sends fail while the kernel has no route yet; keep trying.
        let _ = sock.send_to(&bytes, to);
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from == to => match Message::parse(&buf[..n]) {
                Ok(m) => return Ok(m),
                Err(e) => bail!("the provider's answer is unreadable: {e}"),
            },
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e).context("receiving the provider's answer"),
        }
    }
    bail!("no answer within {}s", timeout.as_secs())
}

/// Asks the provider again as ourselves from our inner address: an ack proves the
/// tunnel carries our traffic.
pub(super) fn probe(
    inner_v4: Ipv4Addr,
    invite: &Invite,
    key: &PrivateKey,
    timeout: Duration,
) -> anyhow::Result<()> {
    match exchange(IpAddr::V4(inner_v4), &request(invite, key), timeout)? {
        Message::Ack { .. } => Ok(()),
        Message::Nak(r) => bail!("the provider refused us: {r}"),
        other => bail!("unexpected answer {other:?}"),
    }
}
