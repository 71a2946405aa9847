//! Bringing the tunnel up: kill switch first, dataplane, the grant asked again on a
//! repair, the full plan, DNS, and the proof that traffic flows.

use super::negotiation::probe;
use super::tunnel::{configure, set_addresses};
use super::{link_exists, netlink, policy, resolver, Asker, UseDir, UseState};
use crate::run_cmd;
use crate::serve::dataplane_binary;
use anyhow::{bail, Context as _};
use portdistrict_exitnode::apply::{apply_nft, apply_planned, plan_undo, reapply};
use portdistrict_exitnode::invite::Invite;
use portdistrict_wg::config::AllowedIpChange;
use portdistrict_wg::{PrivateKey, PublicKey};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Applies the kill switch, starts the dataplane, asks for the grant again on a
/// repair, applies the full plan and proves traffic flows. Saves the state before
/// each change. A first `use` (`first`) comes with the grant already in `s` (asked
/// before anything changed).
pub(super) fn bring_up(
    dir: &UseDir,
    mut s: UseState,
    invite: &Invite,
    key: &PrivateKey,
    first: bool,
    asker: &Asker<'_>,
) -> anyhow::Result<UseState> {
    // 1. Blocked before anything else: the kill switch.
    let plan = policy(&s, invite).plan()?;
    apply_nft(&plan).context("applying the kill switch")?;
    // 2. A fresh tunnel interface and dataplane.
    if link_exists(&s.interface) {
        netlink()?
            .link_del(&s.interface)
            .with_context(|| format!("deleting {}", s.interface))?;
    }
    let bin = dataplane_binary();
    run_cmd(&[&bin.to_string_lossy(), &s.interface])
        .with_context(|| format!("starting the dataplane {}", bin.display()))?;
    // Up before the plan's routes go through it (the kill switch holds everything).
    netlink()?
        .link_set_up(&s.interface, true)
        .with_context(|| format!("setting {} up", s.interface))?;
    let provider = PublicKey(invite.wg_key);
    // Not granted yet (under lockdown), or a repair: ask over the exit channel
    // through the kill switch, so that a revocation is reported as such and the
    // attestation judged again; the provider answers a known consumer with the same
    // grant. An invite from before the channel has nobody to ask: its grant stands.
    let mut plan = plan;
    if invite.channel.is_some() && (s.granted.is_none() || !first) {
        let asked = asker.ask(&s, invite, key)?;
        match s.granted {
            None => {
                s.granted = Some(asked.granted);
                s.endpoint = asked.endpoint;
                dir.save(&s)?;
                plan = policy(&s, invite).plan()?;
                apply_nft(&plan).context("applying the kill switch")?;
            }
            Some(had) if had != asked.granted => bail!(
                "the provider now grants {} instead of {}: run `portdistrict use off`, then `use` again",
                asked.granted.inner_v4,
                had.inner_v4
            ),
            Some(_) => {}
        }
    }
    let granted = s.granted.context(
        "the provider never granted this invite and it has no exit channel: run `portdistrict use off` and ask the provider for a new invite",
    )?;
    if first {
        // 3. The full plan's way back on disk before it is applied.
        s.undo = plan_undo(&plan)?;
        dir.save(&s)?;
        apply_planned(&plan, &s.undo).context("applying system mode")?;
    }
    // 4. As ourselves, everything through the provider.
    let mut allowed = vec![AllowedIpChange {
        addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        cidr: 0,
        remove: false,
    }];
    if granted.inner_v6.is_some() {
        allowed.push(AllowedIpChange {
            addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            cidr: 0,
            remove: false,
        });
    }
    configure(&s.interface, key, &provider, s.endpoint, &allowed)?;
    set_addresses(
        &s.interface,
        IpAddr::V4(granted.inner_v4),
        granted.inner_v6.map(IpAddr::V6),
    )?;
    // The routes into the tunnel went with an earlier interface, and the rules with a
    // reboot: the whole plan back in place (idempotent), then DNS.
    reapply(&plan, true).context("putting the kill switch, rules and routes back")?;
    resolver::apply(
        s.dns_via(),
        &s.interface,
        granted.resolver,
        s.resolv.as_ref().map(|r| r.path.as_path()),
    )?;
    dir.save(&s)?;
    // 5. Proof: the provider answers us through the default route.
    probe(granted.inner_v4, invite, key, asker.timeout())
        .context("the tunnel does not carry traffic to the provider (the kill switch stays on)")?;
    Ok(s)
}
