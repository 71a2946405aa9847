//! The exit node's attestation: its Noise static key, the report data that binds its
//! keys ([`attest::binding`]), and its report with certificates, obtained once per
//! `exit serve` start — from the kernel's configfs-tsm report interface where present,
//! otherwise from files (`--attestation DIR`: `report.bin`, `vcek.der`, `chain.pem`,
//! as a cloud provider's tooling delivers them) — and checked against its own keys
//! before it is served.

use anyhow::{bail, Context as _};
use portdistrict_control_core::attest::{self, tsm, Check, Expected, Outcome, Verdict};
use portdistrict_exitnode::channel::{NoisePublicKey, NoiseSecretKey};
use std::path::{Path, PathBuf};

/// The configfs-tsm report directory.
pub const TSM_REPORT: &str = "/sys/kernel/config/tsm/report";

/// Largest file read: a report is 1184 bytes, a certificate table a few KiB.
const MAX_FILE: u64 = 64 * 1024;

/// A report with the certificates that verify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// The report (1184 bytes).
    pub report: Vec<u8>,
    /// The VCEK, DER.
    pub vcek: Vec<u8>,
    /// The ASK and ARK, PEM.
    pub chain: Vec<u8>,
    /// Where it came from (for messages).
    pub source: String,
}

/// Where the provider's report comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Files in this directory.
    Dir(PathBuf),
    /// The kernel's configfs-tsm interface.
    Tsm(PathBuf),
}

impl Source {
    /// `--attestation DIR` if given, else configfs-tsm when the kernel has it, else
    /// none (the exit serves no attestation).
    #[must_use]
    pub fn choose(dir: Option<&Path>) -> Option<Source> {
        match dir {
            Some(d) => Some(Source::Dir(d.to_owned())),
            None => Path::new(TSM_REPORT)
                .is_dir()
                .then(|| Source::Tsm(PathBuf::from(TSM_REPORT))),
        }
    }
}

fn read_bounded(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut b = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut b)
        .with_context(|| format!("reading {}", path.display()))?;
    if b.len() as u64 > MAX_FILE {
        bail!("{} is larger than {MAX_FILE} bytes", path.display());
    }
    Ok(b)
}

/// The report for `report_data` from `source`.
pub fn obtain(source: &Source, report_data: &[u8; 64]) -> anyhow::Result<Attestation> {
    match source {
        Source::Dir(d) => {
            let file = |n: &str| read_bounded(&d.join(n));
            Ok(Attestation {
                report: file("report.bin")?,
                vcek: file("vcek.der")?,
                chain: file("chain.pem")?,
                source: d.display().to_string(),
            })
        }
        Source::Tsm(root) => from_tsm(root, report_data),
    }
}

/// One report request through configfs-tsm: a fresh entry, `inblob` = the report
/// data, `outblob` the report, `auxblob` the certificate table; the entry is removed
/// after.
fn from_tsm(root: &Path, report_data: &[u8; 64]) -> anyhow::Result<Attestation> {
    let entry = root.join(format!("portdistrict-{}", std::process::id()));
    std::fs::create_dir(&entry)
        .with_context(|| format!("creating the configfs-tsm entry {}", entry.display()))?;
    let result = (|| {
        std::fs::write(entry.join("inblob"), report_data)
            .with_context(|| format!("writing {}/inblob", entry.display()))?;
        let report = read_bounded(&entry.join("outblob"))?;
        let aux = read_bounded(&entry.join("auxblob")).context(
            "the firmware gave no certificate table (auxblob): give the certificates with --attestation DIR",
        )?;
        let table = tsm::parse_cert_table(&aux)?;
        Ok(Attestation {
            report,
            chain: tsm::chain_pem(&table.ask, &table.ark)?.into_bytes(),
            vcek: table.vcek,
            source: entry.display().to_string(),
        })
    })();
    let _ = std::fs::remove_dir(&entry);
    result
}

/// The provider checks its own report before serving it: it must verify (pinned
/// root, chain, validity, signature) and bind this node's keys. Measurement and
/// policy are the consumers' to judge; the verdict is returned for the log.
pub fn self_check(
    a: &Attestation,
    noise: &NoisePublicKey,
    wg: &[u8; 32],
    extra_roots: &[[u8; 32]],
    now: u64,
) -> anyhow::Result<Verdict> {
    let expected = Expected {
        extra_roots: extra_roots.to_vec(),
        report_data: Some(attest::binding(&noise.0, wg)),
        ..Expected::default()
    };
    let v = attest::verify(&a.report, &a.vcek, &a.chain, &expected, now);
    for c in [
        Check::Root,
        Check::Ark,
        Check::Ask,
        Check::Vcek,
        Check::Validity,
        Check::Tcb,
        Check::ChipId,
        Check::Signature,
        Check::ReportData,
    ] {
        if let Outcome::Failed(e) = v.outcome(c) {
            bail!(
                "the attestation from {} fails its check {}: {e}{}",
                a.source,
                c.name(),
                if c == Check::ReportData {
                    " (the report must be made for this node's keys: see `portdistrict exit attestation-data`)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(v)
}

/// The exit node's Noise static key (`STATE_DIR/exit/noise.key`, base64, 0600, made on
/// first use): the exit channel's identity, never its WireGuard key.
pub fn noise_key(path: &Path) -> anyhow::Result<NoiseSecretKey> {
    let k = crate::wg_key_file(path)?;
    Ok(NoiseSecretKey::from_bytes(*k.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("core/testdata/sev-snp")
    }

    /// A directory laid out as `--attestation DIR` expects, from the real material.
    fn real_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("pd-attest-dir-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for (from, to) in [
            ("attestation.bin", "report.bin"),
            ("vcek.testcer", "vcek.der"),
            ("milan.testcer", "chain.pem"),
        ] {
            std::fs::copy(material().join(from), d.join(to)).unwrap();
        }
        d
    }

    #[test]
    fn files_are_read_and_a_report_for_other_keys_is_refused_by_name() {
        let d = real_dir();
        let a = obtain(&Source::Dir(d.clone()), &[0; 64]).unwrap();
        assert_eq!(a.report.len(), 1184);
        // The real report binds no keys of ours: refused on report_data, after the
        // chain and signature passed.
        let e = self_check(&a, &NoisePublicKey([1; 32]), &[2; 32], &[], 1_735_689_600)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fails its check report_data"), "{e}");
        assert!(e.contains("exit attestation-data"), "{e}");
        // After the certificates expired, validity comes first.
        let e = self_check(&a, &NoisePublicKey([1; 32]), &[2; 32], &[], 1_893_456_000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fails its check validity"), "{e}");
        std::fs::remove_file(d.join("vcek.der")).unwrap();
        let e = obtain(&Source::Dir(d.clone()), &[0; 64]).unwrap_err();
        assert!(format!("{e:#}").contains("vcek.der"), "{e:#}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn without_the_kernel_a_configfs_tsm_request_names_what_is_missing() {
        // configfs-tsm is not on these machines (no SEV-SNP guest): in a plain
        // directory nothing answers the request, and the error says which file.
        let root = std::env::temp_dir().join(format!("pd-tsm-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let e = from_tsm(&root, &[7; 64]).unwrap_err();
        assert!(format!("{e:#}").contains("outblob"), "{e:#}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
