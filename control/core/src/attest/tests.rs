//! The verifier on real AMD material (`testdata/sev-snp/`: a Milan report, its VCEK,
//! the Milan VCEK and VLEK chains) and on the synthetic chain ([`super::synthetic`]:
//! RSA-PSS ARK and ASK, a P-384 VCEK with AMD's extensions) that signs reports built in
//! the tests.

use super::synthetic::{Chain, Spec};
use super::*;

const REPORT: &[u8] = include_bytes!("../../testdata/sev-snp/attestation.bin");
const VCEK: &[u8] = include_bytes!("../../testdata/sev-snp/vcek.testcer");
const MILAN: &[u8] = include_bytes!("../../testdata/sev-snp/milan.testcer");
const MILAN_VLEK: &[u8] = include_bytes!("../../testdata/sev-snp/milanvlek.testcer");

/// 2025-01-01T00:00:00Z: inside the real chain's validity (2022-09-24 .. 2029-09-24
/// for the VCEK).
const IN_VALIDITY: u64 = 1_735_689_600;
/// 2030-01-01T00:00:00Z: after the VCEK expired.
const AFTER_EXPIRY: u64 = 1_893_456_000;

fn outcome_name(v: &Verdict, c: Check) -> String {
    v.outcome(c).to_string()
}

fn real_measurement() -> [u8; 48] {
    Report::parse(REPORT).unwrap().measurement
}

#[test]
fn the_real_report_parses_with_its_fields() {
    let r = Report::parse(REPORT).unwrap();
    assert_eq!(r.version, 2);
    assert_eq!(r.policy, Policy(0xB0000));
    assert!(r.policy.debug() && r.policy.smt() && r.policy.reserved_one());
    assert_eq!(r.vmpl, 0);
    assert_eq!(
        r.reported_tcb,
        Tcb {
            bootloader: 2,
            tee: 0,
            snp: 5,
            microcode: 0x44
        }
    );
    assert_eq!(&r.report_data[..5], &[1, 2, 3, 4, 5]);
}

#[test]
fn the_real_chain_verifies_and_only_the_policy_fails_debug_allowed() {
    let expected = Expected {
        measurement: Some(real_measurement()),
        ..Expected::default()
    };
    let v = verify(REPORT, VCEK, MILAN, &expected, IN_VALIDITY);
    for c in Check::ALL {
        let want = match c {
            Check::Policy => "failed: debug allowed",
            Check::ReportData => "skipped: no expected report data",
            _ => "ok",
        };
        assert_eq!(outcome_name(&v, c), want, "{}", c.name());
    }
    assert!(!v.passed());
    assert_eq!(v.first_failure().unwrap().0, Check::Policy);
}

#[test]
fn the_real_chain_fails_after_its_expiry() {
    let v = verify(REPORT, VCEK, MILAN, &Expected::default(), AFTER_EXPIRY);
    assert!(matches!(
        v.outcome(Check::Validity),
        Outcome::Failed(AttestError::Validity {
            which: "ARK" | "ASK" | "VCEK",
            ..
        })
    ));
    assert_eq!(outcome_name(&v, Check::Signature), "ok");
}

#[test]
fn a_flipped_byte_anywhere_in_the_signed_region_fails() {
    for at in (0..report::SIGNED_LEN)
        .step_by(16)
        .chain([report::SIGNED_LEN - 1])
    {
        let mut bad = REPORT.to_vec();
        bad[at] ^= 0x01;
        let v = verify(&bad, VCEK, MILAN, &Expected::default(), IN_VALIDITY);
        assert!(!v.passed(), "byte {at:#x}");
        match v.outcome(Check::Signature) {
            // The version, algorithm and key-info bytes make the report unreadable.
            Outcome::Failed(AttestError::Report(_)) => assert!(at < 0x50, "byte {at:#x}"),
            Outcome::Failed(AttestError::ReportSignature(_)) => {}
            o => panic!("byte {at:#x}: signature {o}"),
        }
    }
}

#[test]
fn the_vlek_chain_does_not_sign_the_vcek() {
    let v = verify(REPORT, VCEK, MILAN_VLEK, &Expected::default(), IN_VALIDITY);
    assert_eq!(outcome_name(&v, Check::Root), "ok", "the same ARK");
    assert!(matches!(
        v.outcome(Check::Vcek),
        Outcome::Failed(AttestError::CertSignature(_))
    ));
}

#[test]
fn a_foreign_root_is_not_pinned_unless_added() {
    let s = Chain::get();
    let v = verify(
        REPORT,
        VCEK,
        s.chain_pem(),
        &Expected::default(),
        IN_VALIDITY,
    );
    assert!(
        matches!(
            v.outcome(Check::Root),
            Outcome::Failed(AttestError::Root { .. })
        ),
        "{}",
        v.outcome(Check::Root)
    );
    assert!(matches!(
        v.outcome(Check::Vcek),
        Outcome::Failed(AttestError::CertSignature(_))
    ));
}

#[test]
fn reports_we_do_not_handle_are_refused_by_name() {
    let mut v3 = REPORT.to_vec();
    v3[0] = 3;
    assert_eq!(Report::parse(&v3), Err(ReportError::UnsupportedVersion(3)));
    let mut vlek = REPORT.to_vec();
    vlek[0x48] = 1 << 2;
    assert_eq!(
        Report::parse(&vlek),
        Err(ReportError::UnsupportedSigningKey(SigningKey::Vlek))
    );
    let mut algo = REPORT.to_vec();
    algo[0x34] = 2;
    assert_eq!(
        Report::parse(&algo),
        Err(ReportError::UnsupportedAlgorithm(2))
    );
    assert_eq!(Report::parse(&REPORT[..100]), Err(ReportError::Length(100)));
    let mut high = REPORT.to_vec();
    high[report::SIGNED_LEN + 60] = 1;
    assert_eq!(Report::parse(&high), Err(ReportError::Signature("R")));
    let v = verify(&v3, VCEK, MILAN, &Expected::default(), IN_VALIDITY);
    assert_eq!(
        outcome_name(&v, Check::Signature),
        "failed: report: report version 3 is not handled (only version 2)"
    );
}

#[test]
fn garbage_certificates_fail_their_checks_and_the_rest_still_run() {
    let v = verify(
        REPORT,
        b"not der",
        b"not pem",
        &Expected::default(),
        IN_VALIDITY,
    );
    assert!(matches!(
        v.outcome(Check::Root),
        Outcome::Failed(AttestError::Certificate { which: "chain", .. })
    ));
    assert!(matches!(
        v.outcome(Check::Vcek),
        Outcome::Failed(AttestError::Certificate { which: "VCEK", .. })
    ));
    assert_eq!(outcome_name(&v, Check::Vmpl), "ok");
    assert_eq!(v.checks.len(), Check::ALL.len());
}

// --- the synthetic chain ---

/// A passing report of the synthetic chain, bound to keys `[1; 32]` and `[2; 32]`.
fn spec() -> Spec {
    Chain::get().spec([0x3e; 48], binding(&[1; 32], &[2; 32]))
}

fn signed_report(spec: &Spec) -> Vec<u8> {
    Chain::get().signed_report(spec)
}

fn synth_expected(spec: &Spec) -> Expected {
    Expected {
        extra_roots: vec![Chain::get().ark_fingerprint()],
        measurement: Some(spec.measurement),
        report_data: Some(spec.report_data),
        min_abi: (1, 0),
        smt: Smt::Forbidden,
        vmpl: 0,
    }
}

fn synth_verify(spec: &Spec, expected: &Expected) -> Verdict {
    let s = Chain::get();
    verify(
        &signed_report(spec),
        s.vcek_der(),
        s.chain_pem(),
        expected,
        IN_VALIDITY,
    )
}

#[test]
fn a_synthetic_report_bound_to_keys_passes_every_check() {
    let spec = spec();
    let v = synth_verify(&spec, &synth_expected(&spec));
    for (c, o) in &v.checks {
        assert_eq!(*o, Outcome::Ok, "{}: {o}", c.name());
    }
    assert!(v.passed());
    // Without the root added, only the root fails.
    let mut unpinned = synth_expected(&spec);
    unpinned.extra_roots.clear();
    let v = synth_verify(&spec, &unpinned);
    assert_eq!(v.first_failure().unwrap().0, Check::Root);
    assert_eq!(
        v.checks.iter().filter(|(_, o)| *o != Outcome::Ok).count(),
        1
    );
}

#[test]
fn the_synthetic_chain_is_the_same_every_time_and_its_spec_passes() {
    let s = Chain::get();
    assert!(std::ptr::eq(s, Chain::get()));
    let spec = spec();
    assert_eq!(spec.policy, synthetic::POLICY);
    let p = Policy(spec.policy);
    assert_eq!((p.abi_major(), p.abi_minor()), (1, 55));
    assert!(!p.smt() && !p.debug() && p.reserved_one());
    assert_eq!(spec.vmpl, 0);
    let r = Report::parse(&signed_report(&spec)).unwrap();
    assert_eq!(r.measurement, spec.measurement);
    assert_eq!(r.report_data, spec.report_data);
    assert_eq!(r.reported_tcb, spec.tcb);
    assert_eq!(r.chip_id, spec.chip_id);
    // ECDSA over P-384 here is deterministic (RFC 6979): the same report each time.
    assert_eq!(signed_report(&spec), signed_report(&spec));
    // The chain is ASK then ARK.
    let certs = x509_cert::Certificate::load_pem_chain(s.chain_pem()).unwrap();
    assert_eq!(certs.len(), 2);
    assert!(chain::name(&certs[0]).contains("CN=SEV-Synth"));
    assert!(chain::name(&certs[1]).contains("CN=ARK-Synth"));
    assert_eq!(chain::fingerprint(&certs[1]), s.ark_fingerprint());
    assert_eq!(
        synthetic::FILES,
        ["report.bin", "vcek.der", "chain.pem"],
        "as `exit serve --attestation DIR` reads them"
    );
}

#[test]
fn binding_other_keys_fails_report_data() {
    let spec = spec();
    let mut expected = synth_expected(&spec);
    expected.report_data = Some(binding(&[1; 32], &[3; 32]));
    let v = synth_verify(&spec, &expected);
    assert!(matches!(
        v.first_failure(),
        Some((Check::ReportData, AttestError::ReportData { .. }))
    ));
    assert_ne!(binding(&[1; 32], &[2; 32]), binding(&[2; 32], &[1; 32]));
}

#[test]
fn another_measurement_fails() {
    let spec = spec();
    let mut expected = synth_expected(&spec);
    expected.measurement = Some([0x3f; 48]);
    let v = synth_verify(&spec, &expected);
    assert!(matches!(
        v.first_failure(),
        Some((Check::Measurement, AttestError::Measurement { .. }))
    ));
}

#[test]
fn policy_rules_each_fail_by_name() {
    let spec0 = spec();
    let expected = synth_expected(&spec0);
    for (policy, why) in [
        (0x2_0137 | 1 << 19, "debug allowed"),
        (0x2_0137 | 1 << 16, "SMT allowed"),
        (0x0_0137, "bit 17 (must be one) is zero"),
        (0x2_0037, "ABI 0.55 below the minimum 1.0"),
    ] {
        let spec = Spec {
            policy,
            ..spec0.clone()
        };
        let v = synth_verify(&spec, &expected);
        assert_eq!(
            outcome_name(&v, Check::Policy),
            format!("failed: {why}"),
            "{policy:#x}"
        );
        assert_eq!(outcome_name(&v, Check::Signature), "ok");
    }
    // SMT allowed passes when the grant does not forbid it.
    let spec = Spec {
        policy: 0x3_0137,
        ..spec0.clone()
    };
    let any = Expected {
        smt: Smt::Any,
        ..expected.clone()
    };
    assert!(synth_verify(&spec, &any).passed());
}

#[test]
fn vmpl_tcb_and_chip_id_must_match() {
    let spec0 = spec();
    let expected = synth_expected(&spec0);
    let v = synth_verify(
        &Spec {
            vmpl: 1,
            ..spec0.clone()
        },
        &expected,
    );
    assert_eq!(outcome_name(&v, Check::Vmpl), "failed: VMPL 1, expected 0");
    let v = synth_verify(
        &Spec {
            tcb: Tcb {
                snp: 7,
                ..spec0.tcb
            },
            ..spec0.clone()
        },
        &expected,
    );
    assert!(matches!(
        v.outcome(Check::Tcb),
        Outcome::Failed(AttestError::Tcb { .. })
    ));
    let v = synth_verify(
        &Spec {
            chip_id: [0xc2; 64],
            ..spec0.clone()
        },
        &expected,
    );
    assert!(matches!(
        v.outcome(Check::ChipId),
        Outcome::Failed(AttestError::ChipId(_))
    ));
}

#[test]
fn the_synthetic_report_with_a_flipped_byte_fails_its_signature() {
    let spec = spec();
    let expected = synth_expected(&spec);
    let good = signed_report(&spec);
    let s = Chain::get();
    for at in (0x50..report::SIGNED_LEN).step_by(16) {
        let mut bad = good.clone();
        bad[at] ^= 0x80;
        let v = verify(&bad, s.vcek_der(), s.chain_pem(), &expected, IN_VALIDITY);
        assert!(
            matches!(
                v.outcome(Check::Signature),
                Outcome::Failed(AttestError::ReportSignature(_))
            ),
            "byte {at:#x}"
        );
    }
}

/// The real material verifies the same way 50 times over (the signature check is
/// not order- or state-dependent), and prints the time of one verification (run with
/// `cargo test --release -p portdistrict-control-core verification_time --
/// --nocapture` for the release figure; the clock is the test's, not the verifier's,
/// and nothing is asserted about it).
#[test]
#[allow(clippy::disallowed_methods)]
fn verification_time() {
    let n = 50;
    let t = std::time::Instant::now();
    for _ in 0..n {
        let v = verify(REPORT, VCEK, MILAN, &Expected::default(), IN_VALIDITY);
        assert_eq!(*v.outcome(Check::Signature), Outcome::Ok);
    }
    eprintln!(
        "FIGURES one verification (parse, ARK/ASK/VCEK RSA-PSS, report ECDSA P-384): {:.2} ms",
        t.elapsed().as_secs_f64() * 1000.0 / f64::from(n)
    );
}

#[test]
fn a_consumer_judges_an_exit_by_its_grant() {
    use grant::{judge, ExitRefused, Grant, Presented};
    let spec = spec();
    let s = Chain::get();
    let report = signed_report(&spec);
    let g = Grant {
        issuer: [0; 32],
        holder: None,
        measurement: spec.measurement,
        min_abi: (1, 0),
        smt: Smt::Forbidden,
        issued: 0,
        expires: u64::MAX,
    };
    let presented = Some(Presented {
        report: &report,
        vcek: s.vcek_der(),
        chain: s.chain_pem(),
    });
    let roots = [s.ark_fingerprint()];
    let bound = spec.report_data;
    assert!(judge(&g, presented, bound, &roots, IN_VALIDITY)
        .unwrap()
        .passed());
    assert_eq!(
        judge(&g, None, bound, &roots, IN_VALIDITY).unwrap_err(),
        ExitRefused::Missing
    );
    let other = Grant {
        measurement: [0x3f; 48],
        ..g.clone()
    };
    assert!(matches!(
        judge(&other, presented, bound, &roots, IN_VALIDITY),
        Err(ExitRefused::Failed {
            check: "measurement",
            ..
        })
    ));
    // A report bound to other keys (replayed from another exit).
    assert!(matches!(
        judge(
            &g,
            presented,
            binding(&[7; 32], &[2; 32]),
            &roots,
            IN_VALIDITY
        ),
        Err(ExitRefused::Failed {
            check: "report_data",
            ..
        })
    ));
    // An altered report.
    let mut altered = report.clone();
    altered[0x90] ^= 1;
    let p = Some(Presented {
        report: &altered,
        vcek: s.vcek_der(),
        chain: s.chain_pem(),
    });
    assert!(matches!(
        judge(&g, p, bound, &roots, IN_VALIDITY),
        Err(ExitRefused::Failed {
            check: "signature",
            ..
        })
    ));
    // Without the synthetic root pinned.
    assert!(matches!(
        judge(&g, presented, bound, &[], IN_VALIDITY),
        Err(ExitRefused::Failed { check: "root", .. })
    ));
}
