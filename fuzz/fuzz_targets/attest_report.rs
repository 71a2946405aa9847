//! Fuzzes the SEV-SNP verifier with what an attacker controls: the report, the VCEK
//! and the chain, each in turn (and the grant decoder), with the real Milan material as the others. Nothing
//! may panic, every check is in the verdict, and no report but the real one has a
//! signature the real VCEK verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portdistrict_control_core::attest::grant::Grant;
use portdistrict_control_core::attest::{verify, Check, Expected, Outcome, Report};

const REPORT: &[u8] = include_bytes!("../../control/core/testdata/sev-snp/attestation.bin");
const VCEK: &[u8] = include_bytes!("../../control/core/testdata/sev-snp/vcek.testcer");
const CHAIN: &[u8] = include_bytes!("../../control/core/testdata/sev-snp/milan.testcer");
/// 2025-01-01T00:00:00Z, inside the real chain's validity.
const NOW: u64 = 1_735_689_600;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let expected = Expected::default();
    let v = match selector % 5 {
        0 => {
            let _ = Report::parse(rest);
            return;
        }
        4 => {
            // A grant line: whatever decodes was signed by its issuer.
            if let Ok(g) = Grant::decode(&String::from_utf8_lossy(rest)) {
                let _ = g.expected([0; 64]);
            }
            return;
        }
        1 => {
            // A report of the right length most of the time: the real one with the
            // input laid over it from an offset the input picks.
            let mut report = REPORT.to_vec();
            if let Some((&at, patch)) = rest.split_first() {
                let at = usize::from(at) * 8 % report.len();
                let n = patch.len().min(report.len() - at);
                report[at..at + n].copy_from_slice(&patch[..n]);
            }
            let v = verify(&report, VCEK, CHAIN, &expected, NOW);
            if report[..0x2A0] != REPORT[..0x2A0] {
                assert_ne!(*v.outcome(Check::Signature), Outcome::Ok, "a forged report verified");
            }
            v
        }
        2 => verify(REPORT, rest, CHAIN, &expected, NOW),
        _ => verify(REPORT, VCEK, rest, &expected, NOW),
    };
    assert_eq!(v.checks.len(), Check::ALL.len());
    assert!(!v.passed(), "the real report allows debug: never a pass");
});
