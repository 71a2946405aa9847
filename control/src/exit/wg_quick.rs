//! `exit invite --format wg-quick`: a stock WireGuard client's config (phones, the
//! official apps), for a key made here and authorized at once. No kill switch, and
//! it says so.

use super::{now, ExitDir};
use anyhow::{bail, Context as _};
use portdistrict_exitnode::invite::Invite;
use portdistrict_exitnode::store::Store;
use portdistrict_wg::PrivateKey;

/// What `exit invite` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InviteFormat {
    /// The `portdistrict-invite1:` line for `portdistrict use`.
    #[default]
    Line,
    /// A wg-quick config for a stock WireGuard client: a key made here and
    /// authorized at once, no kill switch.
    WgQuick,
}

impl InviteFormat {
    /// Its name on the command line and the control socket.
    pub fn name(self) -> &'static str {
        match self {
            InviteFormat::Line => "line",
            InviteFormat::WgQuick => "wg-quick",
        }
    }

    /// The format of `name`.
    pub fn parse(name: &str) -> anyhow::Result<InviteFormat> {
        match name {
            "line" => Ok(InviteFormat::Line),
            "wg-quick" => Ok(InviteFormat::WgQuick),
            _ => bail!("--format {name}: expected line or wg-quick"),
        }
    }
}

/// The first lines of every wg-quick config `exit invite` prints.
pub const WG_QUICK_WARNING: &str = "# portdistrict exit for a stock WireGuard client.\n\
# NO KILL SWITCH: when this tunnel is down, traffic leaves outside it, and DNS too.\n\
# For a guarantee, use `portdistrict use INVITE --mode system` on the client instead.";

/// `exit invite --format wg-quick`: a key made here, authorized at once with the
/// invite's token (so the invite is used up), and the client's config.
pub(super) fn config(
    dir: &ExitDir,
    store: &mut Store,
    invite: &Invite,
    qr: bool,
) -> anyhow::Result<String> {
    let key = PrivateKey::generate(&mut rand_core::OsRng);
    let public = key.public_key().to_base64();
    let grant = store
        .authorize(now(), &invite.token, &public)
        .map_err(|r| anyhow::anyhow!("authorizing the new client's key: {r}"))?;
    // Recorded before it is shown: a running `exit serve` makes it a peer from the
    // store, and a config the store does not know is worthless.
    dir.save(store)?;
    let mut addrs = format!("{}/32", grant.inner_v4);
    let mut allowed = "0.0.0.0/0".to_owned();
    if let Some(v6) = grant.inner_v6 {
        addrs.push_str(&format!(", {v6}/128"));
        allowed.push_str(", ::/0");
    }
    let conf = format!(
        "{WG_QUICK_WARNING}\n[Interface]\nPrivateKey = {}\nAddress = {addrs}\nDNS = {}\n\n[Peer]\nPublicKey = {}\nEndpoint = {}\nAllowedIPs = {allowed}\nPersistentKeepalive = 25\n",
        key.to_base64(),
        portdistrict_exitnode::store::PROVIDER_V4,
        portdistrict_wg::PublicKey(invite.wg_key).to_base64(),
        invite.endpoints[0],
    );
    if !qr {
        return Ok(conf.trim_end().to_owned());
    }
    // The QR code carries the config without the comment lines (phones scan it into
    // their WireGuard app; a smaller code scans more easily).
    let body: String = conf
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let code = qrcode::QrCode::new(body.as_bytes()).context("making the QR code")?;
    let image = code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .build();
    Ok(format!("{}\n\n{image}", conf.trim_end()))
}
