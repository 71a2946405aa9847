//! Bringing the tunnel up: kill switch first, dataplane, negotiation, the full plan,
//! DNS, and the proof that traffic flows.

use super::negotiation::{negotiate, probe};
use super::tunnel::{configure, set_addresses};
use super::{link_exists, netlink, policy, resolver, UseDir, UseState};
use crate::run_cmd;
use crate::serve::dataplane_binary;
use anyhow::{bail, Context as _};
use portdistrict_exitnode::apply::{apply_nft, apply_planned, plan_undo, reapply};
use portdistrict_exitnode::invite::Invite;
use portdistrict_wg::config::AllowedIpChange;
use portdistrict_wg::{PrivateKey, PublicKey};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Applies the kill switch, starts the dataplane, negotiates if needed, applies the
/// full plan and proves traffic flows. Saves the state before each change.
pub(super) fn bring_up(
    dir: &UseDir,
    mut s: UseState,
    invite: &Invite,
    key: &PrivateKey,
    timeout: Duration,
) -> anyhow::Result<UseState> {
    // 1. Blocked before anything else: the kill switch of the current stage.
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
    let provider = PublicKey(invite.wg_key);
    // A first `use` negotiates; a repair asks again while the invite's negotiation
    // identity still lives (until its expiry), so that a revocation is reported as
    // such; the provider answers a known consumer with the same grant.
    let renegotiate = s.granted.is_none() || invite.check_expiry(crate::exit::now()).is_ok();
    let mut first_grant = false;
    if renegotiate {
        let g = negotiate(&mut s, invite, key, timeout)?;
        match s.granted {
            None => {
                s.granted = Some(g);
                first_grant = true;
            }
            Some(had) if had != g => bail!(
                "the provider now grants {} instead of {}: run `portdistrict use off`, then `use` again",
                g.inner_v4,
                had.inner_v4
            ),
            Some(_) => {}
        }
    }
    let granted = s.granted.context("granted after negotiation")?;
    // The full plan, computed once: a repair's stage already had the grant (the
    // same one: a different grant failed above), so its plan is the full one; a
    // first grant makes it now. Applied after a first grant, put back below.
    let full = if first_grant {
        policy(&s, invite).plan()?
    } else {
        plan
    };
    if first_grant {
        // 3. The full plan's way back on disk before it is applied.
        s.undo = plan_undo(&full)?;
        dir.save(&s)?;
        apply_planned(&full, &s.undo).context("applying system mode")?;
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
    reapply(&full, true).context("putting the kill switch, rules and routes back")?;
    resolver::apply(
        s.dns_via(),
        &s.interface,
        granted.resolver,
        s.resolv.as_ref().map(|r| r.path.as_path()),
    )?;
    dir.save(&s)?;
    // 5. Proof: the provider answers us through the default route.
    probe(granted.inner_v4, invite, key, timeout)
        .context("the tunnel does not carry traffic to the provider (the kill switch stays on)")?;
    Ok(s)
}
