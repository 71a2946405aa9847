//! A synthetic SEV-SNP chain for tests: an RSA-PSS ARK and ASK and a P-384 VCEK with
//! AMD's extensions, made from a fixed seed, that signs version-2 reports built from a
//! [`Spec`]. Its ARK is not a built-in root: a verifier accepts it only when its
//! fingerprint ([`Chain::ark_fingerprint`]) is added.
//!
//! Compiled for this crate's tests and with the `synthetic` feature (the netns suites
//! start exit providers with reports signed here). No shipped crate enables the
//! feature: `portdistrict-control` and `portdistrict-exitnode` build without it.
//!
//! The OIDs and offsets are written out here, not taken from the verifier, so a
//! mistake in one is not repeated in the other.

use super::chain;
use super::report::{self, Tcb};
use rand_chacha::rand_core::SeedableRng as _;
use rsa::signature::{Keypair as _, RandomizedSigner as _, SignatureEncoding as _};
use rsa::RsaPrivateKey;
use std::path::Path;
use std::str::FromStr as _;
use std::sync::OnceLock;
use x509_cert::der::asn1::{BitString, OctetString, UtcTime};
use x509_cert::der::{Encode as _, EncodePem as _};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::spki::{DynSignatureAlgorithmIdentifier as _, EncodePublicKey as _};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate};

/// The files `portdistrict exit serve --attestation DIR` reads, as
/// [`Chain::write_dir`] writes them: the report, the VCEK (DER), the chain (PEM).
pub const FILES: [&str; 3] = ["report.bin", "vcek.der", "chain.pem"];

/// A passing policy: ABI 1.55, reserved bit 17 set, no SMT, no debugging.
pub const POLICY: u64 = 0x2_0137;

/// The synthetic chain: the VCEK's key, the certificates, and what the VCEK
/// certifies (the ARK and ASK keys sign the certificates when it is made, and are
/// dropped).
pub struct Chain {
    vcek_key: p384::ecdsa::SigningKey,
    vcek_der: Vec<u8>,
    chain_pem: Vec<u8>,
    ark_fingerprint: [u8; 32],
    tcb: Tcb,
    chip_id: [u8; 64],
}

/// What a synthetic report says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The guest policy.
    pub policy: u64,
    /// The VM privilege level the report was asked for at.
    pub vmpl: u32,
    /// The launch measurement.
    pub measurement: [u8; 48],
    /// The report data (an exit binds its keys here: [`super::binding`]).
    pub report_data: [u8; 64],
    /// The current and reported TCB (the VCEK certifies the chain's).
    pub tcb: Tcb,
    /// The chip ID (the VCEK certifies the chain's).
    pub chip_id: [u8; 64],
}

impl Chain {
    /// The chain of this process: made once, from a fixed seed, so every call gives
    /// the same keys and certificates (and every run of the same build).
    ///
    /// # Panics
    ///
    /// If making a key or certificate fails (it does not for these inputs).
    #[must_use]
    pub fn get() -> &'static Chain {
        static CHAIN: OnceLock<Chain> = OnceLock::new();
        CHAIN.get_or_init(Chain::make)
    }

    fn make() -> Chain {
        let mut rng = rand_chacha::ChaCha20Rng::from_seed([7; 32]);
        let ark_key = RsaPrivateKey::new(&mut rng, 2048).unwrap();
        let ask_key = RsaPrivateKey::new(&mut rng, 2048).unwrap();
        let ark_signer = rsa::pss::SigningKey::<sha2::Sha384>::new(ark_key);
        let ask_signer = rsa::pss::SigningKey::<sha2::Sha384>::new(ask_key);
        let spki = |der: Vec<u8>| SubjectPublicKeyInfoOwned::try_from(der.as_slice()).unwrap();
        let rsa_spki = |s: &rsa::pss::SigningKey<sha2::Sha384>| {
            spki(
                s.verifying_key()
                    .as_ref()
                    .to_public_key_der()
                    .unwrap()
                    .into_vec(),
            )
        };
        let ark = cert(
            "ARK-Synth",
            "ARK-Synth",
            rsa_spki(&ark_signer),
            &ark_signer,
            None,
            &mut rng,
        );
        let ask = cert(
            "SEV-Synth",
            "ARK-Synth",
            rsa_spki(&ask_signer),
            &ark_signer,
            None,
            &mut rng,
        );
        let vcek_key = p384::ecdsa::SigningKey::from_slice(&[0x42; 48]).unwrap();
        let tcb = Tcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 0xd1,
        };
        let chip_id = [0xc1; 64];
        let int = |v: u8| v.to_der().unwrap();
        let vcek = cert(
            "SEV-VCEK",
            "SEV-Synth",
            spki(
                vcek_key
                    .verifying_key()
                    .to_public_key_der()
                    .unwrap()
                    .into_vec(),
            ),
            &ask_signer,
            Some(vec![
                ext("1.3.6.1.4.1.3704.1.3.1", int(tcb.bootloader)),
                ext("1.3.6.1.4.1.3704.1.3.2", int(tcb.tee)),
                ext("1.3.6.1.4.1.3704.1.3.3", int(tcb.snp)),
                ext("1.3.6.1.4.1.3704.1.3.8", int(tcb.microcode)),
                ext("1.3.6.1.4.1.3704.1.4", chip_id.to_vec()),
            ]),
            &mut rng,
        );
        let pem = |c: &Certificate| {
            c.to_pem(x509_cert::der::pem::LineEnding::LF)
                .unwrap()
                .into_bytes()
        };
        let mut chain_pem = pem(&ask);
        chain_pem.extend(pem(&ark));
        Chain {
            vcek_key,
            vcek_der: vcek.to_der().unwrap(),
            chain_pem,
            ark_fingerprint: chain::fingerprint(&ark),
            tcb,
            chip_id,
        }
    }

    /// The SHA-256 fingerprint of the ARK: the root a verifier must add.
    #[must_use]
    pub fn ark_fingerprint(&self) -> [u8; 32] {
        self.ark_fingerprint
    }

    /// The VCEK certificate, DER.
    #[must_use]
    pub fn vcek_der(&self) -> &[u8] {
        &self.vcek_der
    }

    /// The ASK then the ARK certificate, PEM.
    #[must_use]
    pub fn chain_pem(&self) -> &[u8] {
        &self.chain_pem
    }

    /// A report that passes every check for `measurement` and `report_data`: the
    /// passing [`POLICY`], VMPL 0, the chain's TCB and chip ID.
    #[must_use]
    pub fn spec(&self, measurement: [u8; 48], report_data: [u8; 64]) -> Spec {
        Spec {
            policy: POLICY,
            vmpl: 0,
            measurement,
            report_data,
            tcb: self.tcb,
            chip_id: self.chip_id,
        }
    }

    /// A version-2 report of `spec` (1184 bytes), signed by the VCEK.
    #[must_use]
    pub fn signed_report(&self, spec: &Spec) -> Vec<u8> {
        use p384::ecdsa::signature::Signer as _;
        let mut b = vec![0u8; report::REPORT_LEN];
        b[0..4].copy_from_slice(&2u32.to_le_bytes());
        b[0x08..0x10].copy_from_slice(&spec.policy.to_le_bytes());
        b[0x30..0x34].copy_from_slice(&spec.vmpl.to_le_bytes());
        b[0x34..0x38].copy_from_slice(&1u32.to_le_bytes());
        b[0x38..0x40].copy_from_slice(&tcb_bytes(spec.tcb));
        b[0x50..0x90].copy_from_slice(&spec.report_data);
        b[0x90..0xC0].copy_from_slice(&spec.measurement);
        b[0x180..0x188].copy_from_slice(&tcb_bytes(spec.tcb));
        b[0x1A0..0x1E0].copy_from_slice(&spec.chip_id);
        let sig: p384::ecdsa::Signature = self.vcek_key.sign(&b[..report::SIGNED_LEN]);
        let (r, s) = sig.split_bytes();
        // R and S are little-endian, each in a 72-byte field.
        for (i, x) in r.iter().enumerate() {
            b[report::SIGNED_LEN + 47 - i] = *x;
        }
        for (i, x) in s.iter().enumerate() {
            b[report::SIGNED_LEN + 72 + 47 - i] = *x;
        }
        b
    }

    /// Writes the report of `spec`, the VCEK and the chain into `dir` (which must
    /// exist) as `--attestation DIR` reads them ([`FILES`]), each mode 0600.
    ///
    /// # Errors
    ///
    /// If a file cannot be written.
    // Test support, not the pure core: a suite hands the directory to a provider.
    #[allow(clippy::disallowed_methods)]
    pub fn write_dir(&self, dir: &Path, spec: &Spec) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let report = self.signed_report(spec);
        let [report_name, vcek_name, chain_name] = FILES;
        for (name, bytes) in [
            (report_name, report.as_slice()),
            (vcek_name, self.vcek_der()),
            (chain_name, self.chain_pem()),
        ] {
            let path = dir.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            // A file that was there keeps its mode on open: set it.
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        Ok(())
    }
}

fn name(cn: &str) -> Name {
    Name::from_str(&format!("CN={cn},O=portdistrict tests")).unwrap()
}

fn time(unix: u64) -> Time {
    Time::UtcTime(UtcTime::from_unix_duration(std::time::Duration::from_secs(unix)).unwrap())
}

/// A certificate of `subject` with `spki`, issued and signed (RSA-PSS, SHA-384) by
/// `issuer`'s key, valid 2024-01-01 .. 2034-01-01.
fn cert(
    subject: &str,
    issuer: &str,
    spki: SubjectPublicKeyInfoOwned,
    signer: &rsa::pss::SigningKey<sha2::Sha384>,
    extensions: Option<Vec<Extension>>,
    rng: &mut rand_chacha::ChaCha20Rng,
) -> Certificate {
    let alg = signer.signature_algorithm_identifier().unwrap();
    let tbs = TbsCertificate {
        version: x509_cert::Version::V3,
        serial_number: SerialNumber::from(1u32),
        signature: alg.clone(),
        issuer: name(issuer),
        validity: Validity {
            not_before: time(1_704_067_200),
            not_after: time(2_019_686_400),
        },
        subject: name(subject),
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions,
    };
    let sig = signer.sign_with_rng(rng, &tbs.to_der().unwrap());
    Certificate {
        tbs_certificate: tbs,
        signature_algorithm: alg,
        signature: BitString::from_bytes(&sig.to_bytes()).unwrap(),
    }
}

fn ext(oid: &str, value: Vec<u8>) -> Extension {
    Extension {
        extn_id: x509_cert::der::oid::ObjectIdentifier::new_unwrap(oid),
        critical: false,
        extn_value: OctetString::new(value).unwrap(),
    }
}

fn tcb_bytes(t: Tcb) -> [u8; 8] {
    [t.bootloader, t.tee, 0, 0, 0, 0, t.snp, t.microcode]
}
