//! `exit invite`'s options.

use super::{InviteFormat, MAX_EXPIRY};
use crate::parse_duration;
use anyhow::{bail, Context as _};
use portdistrict_exitnode::invite::{Pin, MAX_ENDPOINTS};
use std::net::SocketAddr;
use std::time::Duration;

/// `exit invite` on the command line (checked into [`InviteOptions`]).
#[derive(Debug, Clone, clap::Args)]
pub struct InviteArgs {
    /// Where consumers reach this node (repeatable; default: the endpoints `exit
    /// serve --endpoint` recorded)
    #[arg(long, value_name = "HOST:PORT")]
    pub endpoint: Vec<String>,
    /// How long the invite is valid (s, m, h, d; at most 3650d)
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    pub expires: String,
    /// How many consumers may redeem it
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub uses: u16,
    /// Pin an attested exit: consumers require an SEV-SNP attestation of this launch
    /// measurement (96 hex digits)
    #[arg(long, value_name = "HEX")]
    pub measurement: Option<String>,
    /// With --measurement: the lowest firmware ABI accepted
    #[arg(long, value_name = "MAJOR.MINOR")]
    pub min_abi: Option<String>,
    /// With --measurement: whether SMT may be on (any) or must be off (forbidden)
    #[arg(long, value_name = "any|forbidden")]
    pub smt: Option<String>,
    /// `line`: a portdistrict-invite1: line for `portdistrict use`; `wg-quick`: a
    /// config for a stock WireGuard client (its key made here; NO kill switch)
    #[arg(long, value_name = "FORMAT", default_value = "line")]
    pub format: String,
    /// With --format wg-quick: a QR code of the config too, for phones
    #[arg(long)]
    pub qr: bool,
}

/// Options of `exit invite`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteOptions {
    /// Where consumers reach the provider (empty: the endpoints on record).
    pub endpoints: Vec<SocketAddr>,
    /// How long the invite is valid.
    pub expires: Duration,
    /// How many consumers may redeem it.
    pub uses: u16,
    /// The attestation the consumer must require of this exit, if pinned.
    pub pin: Option<Pin>,
    /// What to print.
    pub format: InviteFormat,
    /// With `wg-quick`: a QR code of the config too (for phones).
    pub qr: bool,
}

impl InviteOptions {
    /// The pin as the control socket carries it.
    pub fn pin_request(&self) -> Option<crate::ctl::protocol::InvitePin> {
        self.pin.map(|p| crate::ctl::protocol::InvitePin {
            measurement: hex::encode(p.measurement),
            min_abi: p.min_abi,
            smt_forbidden: p.smt == portdistrict_control_core::attest::Smt::Forbidden,
        })
    }

    /// The pin the control socket carried.
    pub fn pin_of(p: Option<&crate::ctl::protocol::InvitePin>) -> anyhow::Result<Option<Pin>> {
        use portdistrict_control_core::attest::Smt;
        p.map(|p| {
            Ok(Pin {
                measurement: crate::args::hex_bytes::<48>("measurement", &p.measurement)?,
                min_abi: p.min_abi,
                smt: if p.smt_forbidden {
                    Smt::Forbidden
                } else {
                    Smt::Any
                },
            })
        })
        .transpose()
    }

    /// Parses the options of `exit invite` (see [`InviteArgs`]), as on the command line.
    pub fn parse(opts: &[&str]) -> anyhow::Result<InviteOptions> {
        InviteOptions::from_args(crate::args::parse_args("exit invite", opts)?)
    }

    /// Checks `exit invite`'s options; errors name the option and what it takes.
    pub fn from_args(a: InviteArgs) -> anyhow::Result<InviteOptions> {
        let mut o = InviteOptions {
            endpoints: Vec::new(),
            expires: parse_duration(&a.expires, MAX_EXPIRY).context("--expires")?,
            uses: a.uses,
            pin: None,
            format: InviteFormat::parse(&a.format)?,
            qr: a.qr,
        };
        for value in &a.endpoint {
            o.endpoints.push(crate::args::endpoint(value)?);
        }
        if let Some(m) = &a.measurement {
            o.pin = Some(Pin {
                measurement: crate::args::hex_bytes::<48>("--measurement", m)?,
                min_abi: (0, 0),
                smt: portdistrict_control_core::attest::Smt::Any,
            });
        }
        let min_abi = a
            .min_abi
            .as_deref()
            .map(crate::args::parse_abi)
            .transpose()?;
        let smt = a.smt.as_deref().map(crate::args::parse_smt).transpose()?;
        match &mut o.pin {
            Some(p) => {
                p.min_abi = min_abi.unwrap_or(p.min_abi);
                p.smt = smt.unwrap_or(p.smt);
            }
            None if min_abi.is_some() || smt.is_some() => {
                bail!("--min-abi and --smt pin an attested exit: they need --measurement HEX")
            }
            None => {}
        }
        if o.format == InviteFormat::WgQuick {
            if o.uses != 1 {
                bail!("--format wg-quick makes one client's config (its key is made here): it takes no --uses");
            }
            if o.pin.is_some() {
                bail!("--format wg-quick is for stock WireGuard clients, which check no attestation: it takes no --measurement");
            }
        } else if o.qr {
            bail!("--qr goes with --format wg-quick");
        }
        if o.endpoints.len() > MAX_ENDPOINTS {
            bail!("exit invite takes at most {MAX_ENDPOINTS} endpoints");
        }
        Ok(o)
    }
}
