//! The consumer's side of the exit channel: asks the provider for its grant over TCP
//! in Noise (`portdistrict_exitnode::channel`), judges the provider's attestation
//! against the pins it holds (a grant, the invite's own pin), and only then confirms.
//! Nothing on the machine changes here: a refused exit leaves it as it was.
//!
//! Which address to dial and when is the sans-IO [`Dialer`]: each endpoint's address
//! at the channel port in the invite's order, each with a share of the time budget,
//! again after a moment when busy or failed. This file dials, runs one exchange per
//! attempt and reports how it ended. A refusal of the request itself (used up,
//! revoked, ...) or of the attestation ends the exchange at once: every endpoint is
//! the same provider.

use super::state::Granted;
use crate::exit::frames::FrameConn;
use anyhow::{bail, Context as _};
use portdistrict_control_core::attest::binding;
use portdistrict_control_core::attest::grant::{judge, Grant, Presented};
use portdistrict_exitnode::channel::{
    Answer, ConsumerSession, DialAction, Dialer, FrameKind, Initiator, InitiatorError,
    NoisePublicKey, NoiseSecretKey, ProviderRef, RefusalCode, Request,
};
use portdistrict_exitnode::invite::{Invite, Pin};
use portdistrict_exitnode::wire::Message;
use portdistrict_wg::PrivateKey;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the consumer requires of the exit's attestation.
#[derive(Debug, Clone, Default)]
pub struct Pins {
    /// Grants that apply here (checked: trusted issuer, holder, unexpired), each
    /// pinning a measurement and policy.
    pub grants: Vec<Grant>,
    /// The invite's own pin.
    pub invite: Option<Pin>,
    /// ARK fingerprints to accept besides AMD's built-in roots.
    pub extra_roots: Vec<[u8; 32]>,
}

impl Pins {
    /// Whether anything is pinned (else an attestation is not required).
    pub fn any(&self) -> bool {
        !self.grants.is_empty() || self.invite.is_some()
    }

    /// Every pin as a grant to judge by.
    fn all(&self) -> Vec<Grant> {
        let mut all = self.grants.clone();
        if let Some(p) = self.invite {
            all.push(Grant {
                issuer: [0; 32],
                holder: None,
                measurement: p.measurement,
                min_abi: p.min_abi,
                smt: p.smt,
                issued: 0,
                expires: u64::MAX,
            });
        }
        all
    }
}

/// What the provider granted, and where.
#[derive(Debug, Clone)]
pub struct Asked {
    /// The addresses and resolver.
    pub granted: Granted,
    /// The endpoint whose address answered.
    pub endpoint: SocketAddr,
    /// The measurement of the attestation that passed every pin, if pinned.
    pub measurement: Option<[u8; 48]>,
}

/// Why asking ended without a grant, when it is final (no other endpoint would
/// answer otherwise).
#[derive(Debug, thiserror::Error)]
enum Final {
    #[error("the provider refused: {0}")]
    Refused(portdistrict_exitnode::store::Refusal),
    #[error("refusing this exit: {0}")]
    Attestation(String),
    #[error("{0}")]
    Channel(InitiatorError),
}

/// Asks for a grant as WireGuard key `wg` with Noise static key `noise`, through each
/// of the invite's endpoints in turn within `timeout`; `mark` is put on the TCP
/// socket (so that it passes a kill switch already in place).
pub fn ask(
    invite: &Invite,
    wg: &PrivateKey,
    noise: &NoiseSecretKey,
    pins: &Pins,
    timeout: Duration,
    mark: Option<u32>,
) -> anyhow::Result<Asked> {
    let channel = invite.channel.context(
        "this invite is in format 1, from before the exit channel: ask the provider for a new invite",
    )?;
    let mut dialer = Dialer::new(&invite.endpoints, channel.port, timeout);
    loop {
        match dialer.poll(Instant::now()) {
            DialAction::Connect(addr, until) => {
                match once(
                    invite,
                    &channel.noise_key,
                    addr,
                    wg,
                    noise,
                    pins,
                    until,
                    mark,
                ) {
                    Ok(asked) => return Ok(asked),
                    Err(Attempt::Final(e)) => return Err(anyhow::Error::new(e)),
                    Err(Attempt::Busy) => dialer.busy(Instant::now()),
                    // A refused connection may be a provider still starting.
                    Err(Attempt::Io(e)) => dialer.failed(Instant::now(), format!("{e:#}")),
                }
            }
            DialAction::Wait(until) => {
                std::thread::sleep(until.saturating_duration_since(Instant::now()));
            }
            DialAction::GiveUp(tried) => bail!(
                "no answer on the exit channel within {}s ({tried}): is `portdistrict exit serve` running there, and TCP port {} open to it?",
                timeout.as_secs(),
                channel.port
            ),
        }
    }
}

/// How one attempt ended.
enum Attempt {
    /// For good.
    Final(Final),
    /// The provider is busy: ask again.
    Busy,
    /// The connection failed: this endpoint again, or the next.
    Io(anyhow::Error),
}

impl From<std::io::Error> for Attempt {
    fn from(e: std::io::Error) -> Attempt {
        Attempt::Io(e.into())
    }
}

impl From<anyhow::Error> for Attempt {
    fn from(e: anyhow::Error) -> Attempt {
        Attempt::Io(e)
    }
}

#[allow(clippy::too_many_arguments)]
fn once(
    invite: &Invite,
    provider_noise: &[u8; 32],
    addr: SocketAddr,
    wg: &PrivateKey,
    noise: &NoiseSecretKey,
    pins: &Pins,
    until: Instant,
    mark: Option<u32>,
) -> Result<Asked, Attempt> {
    let mut conn = connect(addr, until, mark)?;
    let request =
        portdistrict_exitnode::negotiate::request(invite.token, wg.as_bytes(), &invite.wg_key);
    let Message::Request { wg_key, proof, .. } = request else {
        return Err(Attempt::Io(anyhow::anyhow!("not a request")));
    };
    let mut out = Vec::new();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let initiator = Initiator::start(
        noise,
        &ProviderRef {
            key: NoisePublicKey(*provider_noise),
            token: invite.token,
        },
        Request { wg_key, proof },
        now,
        &mut out,
    )
    .map_err(|e| Attempt::Final(Final::Channel(e)))?;
    conn.write(&out)?;
    let (kind, body) = conn.frame()?;
    let (reply, mut session) = match initiator.read_reply(frame(kind, &body)) {
        Ok(x) => x,
        Err(InitiatorError::Refused(RefusalCode::Busy)) => return Err(Attempt::Busy),
        Err(e) => return Err(Attempt::Final(Final::Channel(e))),
    };
    if let Answer::Nak(r) = reply.answer {
        return Err(Attempt::Final(Final::Refused(r)));
    }
    // The attestation, judged before anything is confirmed.
    let measurement = judge_all(invite, provider_noise, pins, reply.attestation.as_ref())
        .map_err(|e| Attempt::Final(Final::Attestation(e)))?;
    out.clear();
    seal(&mut session, &request.emit(), &mut out)?;
    conn.write(&out)?;
    let (kind, body) = conn.frame()?;
    let mut plain = Vec::new();
    session
        .open(frame(kind, &body), &mut plain)
        .map_err(|e| Attempt::Io(anyhow::anyhow!("the provider's final answer: {e}")))?;
    match Message::parse(&plain) {
        Ok(Message::Ack {
            inner_v4,
            inner_v6,
            resolver,
        }) => Ok(Asked {
            granted: Granted {
                inner_v4,
                inner_v6,
                resolver,
            },
            endpoint: invite
                .endpoints
                .iter()
                .copied()
                .find(|e| e.ip() == addr.ip())
                .unwrap_or(invite.endpoints[0]),
            measurement,
        }),
        Ok(Message::Nak(r)) => Err(Attempt::Final(Final::Refused(r))),
        Ok(Message::Request { .. }) | Err(_) => Err(Attempt::Io(anyhow::anyhow!(
            "the provider's final answer is not an ack or a nak"
        ))),
    }
}

fn seal(session: &mut ConsumerSession, plain: &[u8], out: &mut Vec<u8>) -> Result<(), Attempt> {
    session
        .seal(plain, out)
        .map_err(|e| Attempt::Io(anyhow::anyhow!("sealing the confirmation: {e}")))
}

fn frame(kind: FrameKind, body: &[u8]) -> portdistrict_exitnode::channel::Frame<'_> {
    portdistrict_exitnode::channel::Frame { kind, body }
}

/// Every pin must pass: the attestation present, verified, and measuring as each
/// pins; returns its measurement (`None` when nothing is pinned).
fn judge_all(
    invite: &Invite,
    provider_noise: &[u8; 32],
    pins: &Pins,
    attestation: Option<&portdistrict_exitnode::channel::Attestation>,
) -> Result<Option<[u8; 48]>, String> {
    if !pins.any() {
        return Ok(None);
    }
    let data = binding(provider_noise, &invite.wg_key);
    let presented = attestation.map(|a| Presented {
        report: &a.report,
        vcek: &a.vcek,
        chain: &a.chain,
    });
    let now = crate::exit::now();
    let mut measurement = None;
    for g in pins.all() {
        let v = judge(&g, presented, data, &pins.extra_roots, now).map_err(|e| e.to_string())?;
        measurement = v.report.map(|r| r.measurement);
    }
    Ok(measurement)
}

/// Connects to `addr` before `until`, with `mark` on the socket.
fn connect(addr: SocketAddr, until: Instant, mark: Option<u32>) -> Result<FrameConn, Attempt> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    if let Some(m) = mark {
        sock.set_mark(m)?;
    }
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Attempt::Io(anyhow::anyhow!("out of time")));
    }
    sock.connect_timeout(&addr.into(), left)?;
    Ok(FrameConn::new(sock.into(), until, "the provider")?)
}

/// The pins of `use`: grants read from files (each must apply here: signed by this
/// node's identity or a trusted peer, for this node or anyone, unexpired), the
/// invite's pin, and extra roots.
pub(crate) fn pins(
    dirs: &crate::Dirs,
    grant_lines: &[String],
    invite: &Invite,
    extra_roots: &[[u8; 32]],
) -> anyhow::Result<Pins> {
    let mut grants = Vec::new();
    if !grant_lines.is_empty() {
        let me = crate::node::record(dirs)
            .context("a grant is checked against this node's identity")?
            .identity
            .master;
        let mut trusted = vec![me];
        if let Ok(peers) = crate::node::load_peers(dirs) {
            trusted.extend(
                peers
                    .peers
                    .iter()
                    .filter(|p| p.state == portdistrict_control_core::trust::TrustState::Trusted)
                    .map(|p| p.identity.master),
            );
        }
        for line in grant_lines {
            let g = Grant::decode(line.trim()).context("the grant is not usable")?;
            g.check(&trusted, &me, crate::exit::now())
                .context("the grant is not usable")?;
            grants.push(g);
        }
    }
    Ok(Pins {
        grants,
        invite: invite.pin,
        extra_roots: extra_roots.to_vec(),
    })
}
