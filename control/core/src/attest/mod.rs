//! SEV-SNP attestation, verified offline and without a clock (`now` is an argument):
//! a report ([`Report::parse`]), the VCEK that signed it and the AMD chain (ASK and
//! ARK) become a [`Verdict`]: every check with its outcome, in order.
//!
//! | check | what passes |
//! | --- | --- |
//! | `root` | the ARK's SHA-256 fingerprint is a pinned one (Milan and Genoa built in, others added) |
//! | `ark` | the ARK signed itself (RSA-PSS, SHA-384) |
//! | `ask` | the ARK signed the ASK |
//! | `vcek` | the ASK signed the VCEK |
//! | `validity` | `now` is inside each certificate's validity |
//! | `tcb` | the VCEK's TCB extensions equal the report's reported TCB |
//! | `chip_id` | the VCEK's hardware ID equals the report's chip ID (not masked) |
//! | `signature` | the VCEK signed the report (ECDSA P-384, SHA-384, over its first 0x2A0 bytes) |
//! | `policy` | debugging not allowed, the ABI at least the minimum, SMT as expected, bit 17 set |
//! | `vmpl` | the report was asked for at the expected VM privilege level (0) |
//! | `measurement` | the launch measurement is the expected one (skipped when none is expected) |
//! | `report_data` | the report data is the expected one (skipped when none is expected) |
//!
//! A report or certificate that does not parse fails the checks that need it; the
//! others still run, so a verdict always lists all of them.

pub mod chain;
pub mod grant;
pub mod report;
#[cfg(any(test, feature = "synthetic"))]
pub mod synthetic;
pub mod tsm;

pub use report::{Policy, Report, SigningKey, Tcb};

use sha2::Digest as _;

/// The SHA-256 fingerprints of the AMD root keys built in: Milan's and Genoa's ARK.
pub const BUILTIN_ROOTS: [(&str, [u8; 32]); 2] = [
    (
        "ARK-Milan",
        hex32("69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd"),
    ),
    (
        "ARK-Genoa",
        hex32("4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1"),
    ),
];

const fn hex32(s: &str) -> [u8; 32] {
    let b = s.as_bytes();
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nibble(b[2 * i]) << 4) | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("not a lowercase hex digit"),
    }
}

/// Why a report does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// Not 1184 bytes.
    #[error("a report of {0} bytes; an SEV-SNP report has 1184")]
    Length(usize),
    /// A report version this verifier does not handle.
    #[error("report version {0} is not handled (only version 2)")]
    UnsupportedVersion(u32),
    /// A signature algorithm other than ECDSA P-384 with SHA-384.
    #[error("signature algorithm {0} is not handled (only 1, ECDSA P-384 with SHA-384)")]
    UnsupportedAlgorithm(u32),
    /// A signing-key kind that is not defined.
    #[error("signing key kind {0} is not defined")]
    UnknownSigningKey(u32),
    /// A VLEK-signed or unsigned report.
    #[error("a report signed by {0:?} is not handled (only VCEK-signed reports)")]
    UnsupportedSigningKey(SigningKey),
    /// A signature component with bytes beyond P-384's 48.
    #[error("the signature's {0} has bytes beyond 48")]
    Signature(&'static str),
}

/// Why a check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    /// The report does not parse.
    #[error("report: {0}")]
    Report(#[from] ReportError),
    /// A certificate does not parse.
    #[error("{which} certificate: {why}")]
    Certificate {
        /// Which: VCEK or chain.
        which: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The ARK is not a pinned root.
    #[error("the root {name} (SHA-256 {fingerprint}) is not a pinned AMD root")]
    Root {
        /// Its subject.
        name: String,
        /// Its fingerprint, hex.
        fingerprint: String,
    },
    /// A certificate's signature does not verify.
    #[error("{0}")]
    CertSignature(String),
    /// A certificate is not valid at `now`.
    #[error("{which} is valid from {not_before} to {not_after} (Unix seconds), not at {now}")]
    Validity {
        /// ARK, ASK or VCEK.
        which: &'static str,
        /// Start.
        not_before: u64,
        /// End.
        not_after: u64,
        /// The time checked.
        now: u64,
    },
    /// The VCEK's extensions are unreadable.
    #[error("VCEK extensions: {0}")]
    Extensions(String),
    /// The VCEK's TCB is not the report's.
    #[error("the VCEK is for TCB {vcek}, the report for {report}")]
    Tcb {
        /// The VCEK's.
        vcek: Tcb,
        /// The report's reported TCB.
        report: Tcb,
    },
    /// The chip ID does not match the VCEK's hardware ID.
    #[error("{0}")]
    ChipId(&'static str),
    /// The report's signature does not verify with the VCEK.
    #[error("{0}")]
    ReportSignature(String),
    /// The guest policy breaks a rule.
    #[error("{0}")]
    Policy(String),
    /// The report was made at another VM privilege level.
    #[error("VMPL {got}, expected {expected}")]
    Vmpl {
        /// The report's.
        got: u32,
        /// Expected.
        expected: u32,
    },
    /// Another measurement.
    #[error("measurement {got}, expected {expected}")]
    Measurement {
        /// The report's, hex.
        got: String,
        /// Expected, hex.
        expected: String,
    },
    /// Other report data.
    #[error("report data {got}, expected {expected}")]
    ReportData {
        /// The report's, hex.
        got: String,
        /// Expected, hex.
        expected: String,
    },
}

/// How SMT must be set in the guest policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Smt {
    /// Either.
    #[default]
    Any,
    /// The policy must not allow SMT (sibling-thread side channels).
    Forbidden,
}

/// What the verifier expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Pinned root fingerprints (SHA-256 of the ARK's DER), besides [`BUILTIN_ROOTS`].
    pub extra_roots: Vec<[u8; 32]>,
    /// The launch measurement, if pinned.
    pub measurement: Option<[u8; 48]>,
    /// The report data, if known (an exit binds its keys there).
    pub report_data: Option<[u8; 64]>,
    /// The lowest guest ABI (major, minor) the policy may require.
    pub min_abi: (u8, u8),
    /// SMT.
    pub smt: Smt,
    /// The VM privilege level.
    pub vmpl: u32,
}

impl Default for Expected {
    fn default() -> Expected {
        Expected {
            extra_roots: Vec::new(),
            measurement: None,
            report_data: None,
            min_abi: (0, 0),
            smt: Smt::Any,
            vmpl: 0,
        }
    }
}

/// Every check, in the order the verdict lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The ARK is pinned.
    Root,
    /// The ARK signed itself.
    Ark,
    /// The ARK signed the ASK.
    Ask,
    /// The ASK signed the VCEK.
    Vcek,
    /// Certificates valid at `now`.
    Validity,
    /// VCEK TCB = reported TCB.
    Tcb,
    /// VCEK hardware ID = chip ID.
    ChipId,
    /// The report's signature.
    Signature,
    /// Guest policy.
    Policy,
    /// VMPL.
    Vmpl,
    /// Measurement.
    Measurement,
    /// Report data.
    ReportData,
}

impl Check {
    /// Every check.
    pub const ALL: [Check; 12] = [
        Check::Root,
        Check::Ark,
        Check::Ask,
        Check::Vcek,
        Check::Validity,
        Check::Tcb,
        Check::ChipId,
        Check::Signature,
        Check::Policy,
        Check::Vmpl,
        Check::Measurement,
        Check::ReportData,
    ];

    /// Its name in the verdict (`root`, `signature`, `report_data`, ...).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Check::Root => "root",
            Check::Ark => "ark",
            Check::Ask => "ask",
            Check::Vcek => "vcek",
            Check::Validity => "validity",
            Check::Tcb => "tcb",
            Check::ChipId => "chip_id",
            Check::Signature => "signature",
            Check::Policy => "policy",
            Check::Vmpl => "vmpl",
            Check::Measurement => "measurement",
            Check::ReportData => "report_data",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed.
    Ok,
    /// Failed, and why.
    Failed(AttestError),
    /// Not checked, and why (nothing expected, or an input it needs failed).
    Skipped(&'static str),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok => write!(f, "ok"),
            Outcome::Failed(e) => write!(f, "failed: {e}"),
            Outcome::Skipped(why) => write!(f, "skipped: {why}"),
        }
    }
}

/// Every check's outcome, and the report when it parsed.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// In [`Check::ALL`]'s order.
    pub checks: Vec<(Check, Outcome)>,
    /// The report.
    pub report: Option<Report>,
}

impl Verdict {
    /// True when no check failed (skipped ones do not fail).
    #[must_use]
    pub fn passed(&self) -> bool {
        self.first_failure().is_none()
    }

    /// The first failed check.
    #[must_use]
    pub fn first_failure(&self) -> Option<(Check, &AttestError)> {
        self.checks.iter().find_map(|(c, o)| match o {
            Outcome::Failed(e) => Some((*c, e)),
            _ => None,
        })
    }

    /// The outcome of `check`.
    #[must_use]
    pub fn outcome(&self, check: Check) -> &Outcome {
        self.checks
            .iter()
            .find(|(c, _)| *c == check)
            .map_or(&Outcome::Skipped("not run"), |(_, o)| o)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Verifies `report` against the VCEK (DER) and the ASK+ARK chain (PEM) at `now`
/// (Unix seconds).
#[must_use]
pub fn verify(
    report: &[u8],
    vcek_der: &[u8],
    chain_pem: &[u8],
    expected: &Expected,
    now: u64,
) -> Verdict {
    use Outcome::{Failed, Ok as Pass, Skipped};
    let mut out: Vec<(Check, Outcome)> = Vec::new();
    let parsed = Report::parse(report);
    let vcek = chain::parse_der(vcek_der);
    let ca = chain::parse_chain(chain_pem);
    let outcome = |r: Result<(), AttestError>| match r {
        Ok(()) => Pass,
        Err(e) => Failed(e),
    };
    let need_chain = |ca: &Result<_, AttestError>| match ca {
        Err(e) => Some(Failed(e.clone())),
        Ok(_) => None,
    };
    // The root, and the certificates' signatures.
    match &ca {
        Ok((ask, ark)) => {
            let fp = chain::fingerprint(ark);
            let pinned =
                BUILTIN_ROOTS.iter().any(|(_, f)| *f == fp) || expected.extra_roots.contains(&fp);
            out.push((
                Check::Root,
                outcome(if pinned {
                    Ok(())
                } else {
                    Err(AttestError::Root {
                        name: chain::name(ark),
                        fingerprint: hex(&fp),
                    })
                }),
            ));
            let sig = |signer, signee, what: &str| {
                chain::rsa_pss_signed(signer, signee)
                    .map_err(|e| AttestError::CertSignature(format!("{what}: {e}")))
            };
            out.push((
                Check::Ark,
                outcome(sig(ark, ark, "the ARK's own signature")),
            ));
            out.push((
                Check::Ask,
                outcome(sig(ark, ask, "the ARK's signature on the ASK")),
            ));
            out.push((
                Check::Vcek,
                match &vcek {
                    Ok(v) => outcome(sig(ask, v, "the ASK's signature on the VCEK")),
                    Err(e) => Failed(e.clone()),
                },
            ));
        }
        Err(_) => {
            for c in [Check::Root, Check::Ark, Check::Ask] {
                out.push((c, need_chain(&ca).unwrap_or(Skipped("no chain"))));
            }
            out.push((
                Check::Vcek,
                match &vcek {
                    Err(e) => Failed(e.clone()),
                    Ok(_) => Skipped("no chain"),
                },
            ));
        }
    }
    // Validity at `now`.
    let mut certs = Vec::new();
    if let Ok((ask, ark)) = &ca {
        certs.push(("ARK", ark));
        certs.push(("ASK", ask));
    }
    if let Ok(v) = &vcek {
        certs.push(("VCEK", v));
    }
    out.push((
        Check::Validity,
        if certs.len() < 3 {
            Skipped("a certificate did not parse")
        } else {
            outcome(certs.iter().try_for_each(|(which, c)| {
                let (not_before, not_after) = chain::validity(c);
                if now < not_before || now > not_after {
                    Err(AttestError::Validity {
                        which,
                        not_before,
                        not_after,
                        now,
                    })
                } else {
                    Ok(())
                }
            }))
        },
    ));
    // The VCEK against the report.
    let report_ok = parsed.as_ref().ok();
    let ext = vcek
        .as_ref()
        .ok()
        .map(|v| chain::vcek_extensions(v).map_err(AttestError::Extensions));
    match (report_ok, &ext) {
        (Some(r), Some(Ok((tcb, hwid)))) => {
            out.push((
                Check::Tcb,
                outcome(if *tcb == r.reported_tcb {
                    Ok(())
                } else {
                    Err(AttestError::Tcb {
                        vcek: *tcb,
                        report: r.reported_tcb,
                    })
                }),
            ));
            out.push((
                Check::ChipId,
                outcome(if r.mask_chip_id {
                    Err(AttestError::ChipId("the report masks the chip ID"))
                } else if *hwid != r.chip_id {
                    Err(AttestError::ChipId(
                        "the report's chip ID is not the VCEK's hardware ID",
                    ))
                } else {
                    Ok(())
                }),
            ));
        }
        (_, Some(Err(e))) => {
            out.push((Check::Tcb, Failed(e.clone())));
            out.push((Check::ChipId, Failed(e.clone())));
        }
        (None, _) => {
            let e = parsed.as_ref().err().cloned().map(AttestError::Report);
            for c in [Check::Tcb, Check::ChipId] {
                out.push((c, e.clone().map_or(Skipped("no report"), Failed)));
            }
        }
        (Some(_), None) => {
            for c in [Check::Tcb, Check::ChipId] {
                out.push((c, Skipped("no VCEK")));
            }
        }
    }
    // The report's signature and contents.
    match &parsed {
        Err(e) => {
            for c in [
                Check::Signature,
                Check::Policy,
                Check::Vmpl,
                Check::Measurement,
                Check::ReportData,
            ] {
                out.push((c, Failed(AttestError::Report(e.clone()))));
            }
        }
        Ok(r) => {
            out.push((
                Check::Signature,
                match &vcek {
                    Err(_) => Skipped("no VCEK"),
                    Ok(v) => outcome(report_signature(r, v)),
                },
            ));
            out.push((Check::Policy, outcome(policy(r.policy, expected))));
            out.push((
                Check::Vmpl,
                outcome(if r.vmpl == expected.vmpl {
                    Ok(())
                } else {
                    Err(AttestError::Vmpl {
                        got: r.vmpl,
                        expected: expected.vmpl,
                    })
                }),
            ));
            out.push((
                Check::Measurement,
                match expected.measurement {
                    None => Skipped("no expected measurement"),
                    Some(m) if m == r.measurement => Pass,
                    Some(m) => Failed(AttestError::Measurement {
                        got: hex(&r.measurement),
                        expected: hex(&m),
                    }),
                },
            ));
            out.push((
                Check::ReportData,
                match expected.report_data {
                    None => Skipped("no expected report data"),
                    Some(d) if d == r.report_data => Pass,
                    Some(d) => Failed(AttestError::ReportData {
                        got: hex(&r.report_data),
                        expected: hex(&d),
                    }),
                },
            ));
        }
    }
    Verdict {
        checks: out,
        report: parsed.ok(),
    }
}

/// ECDSA P-384 over SHA-384 of the signed part, with the VCEK's key.
fn report_signature(r: &Report, vcek: &x509_cert::Certificate) -> Result<(), AttestError> {
    use p384::ecdsa::signature::Verifier as _;
    let key = chain::vcek_key(vcek).map_err(AttestError::ReportSignature)?;
    let sig = p384::ecdsa::Signature::from_scalars(r.signature.0, r.signature.1).map_err(|_| {
        AttestError::ReportSignature("the signature is not a valid P-384 (r, s)".into())
    })?;
    key.verify(&r.signed[..], &sig)
        .map_err(|_| AttestError::ReportSignature("the VCEK did not sign this report".into()))
}

/// The guest policy against the expectations.
fn policy(p: Policy, e: &Expected) -> Result<(), AttestError> {
    let fail = |s: String| Err(AttestError::Policy(s));
    if p.debug() {
        return fail("debug allowed".into());
    }
    if !p.reserved_one() {
        return fail("bit 17 (must be one) is zero".into());
    }
    if (p.abi_major(), p.abi_minor()) < e.min_abi {
        return fail(format!(
            "ABI {}.{} below the minimum {}.{}",
            p.abi_major(),
            p.abi_minor(),
            e.min_abi.0,
            e.min_abi.1
        ));
    }
    if e.smt == Smt::Forbidden && p.smt() {
        return fail("SMT allowed".into());
    }
    Ok(())
}

/// The report data an exit node binds its keys with: SHA-512 over a label, its Noise
/// static public key and its WireGuard public key.
#[must_use]
pub fn binding(noise_static: &[u8; 32], wireguard: &[u8; 32]) -> [u8; 64] {
    let mut h = sha2::Sha512::new();
    h.update(b"portdistrict 2026-12 exit attestation binding");
    h.update(noise_static);
    h.update(wireguard);
    h.finalize().into()
}

#[cfg(test)]
mod tests;
