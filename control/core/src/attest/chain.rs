//! The AMD certificate chain: ARK (root, self-signed) -> ASK -> VCEK, RSA-PSS with
//! SHA-384 on the certificates; the VCEK's AMD extensions (its TCB and the chip's
//! hardware ID).

use super::report::Tcb;
use super::AttestError;
use sha2::{Digest, Sha256, Sha384};
use x509_cert::der::referenced::OwnedToRef;
use x509_cert::der::{Decode, Encode};
use x509_cert::Certificate;

/// RSASSA-PSS.
const RSA_PSS: &str = "1.2.840.113549.1.1.10";
/// AMD's VCEK extensions.
const OID_BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_HWID: &str = "1.3.6.1.4.1.3704.1.4";

/// The SHA-256 fingerprint of a certificate's DER.
#[must_use]
pub fn fingerprint(c: &Certificate) -> [u8; 32] {
    let der = c.to_der().unwrap_or_default();
    Sha256::digest(der).into()
}

/// A certificate's subject common name (for messages).
#[must_use]
pub fn name(c: &Certificate) -> String {
    c.tbs_certificate.subject.to_string()
}

/// The VCEK from DER.
pub fn parse_der(der: &[u8]) -> Result<Certificate, AttestError> {
    Certificate::from_der(der).map_err(|e| AttestError::Certificate {
        which: "VCEK",
        why: e.to_string(),
    })
}

/// The ASK and ARK from a PEM chain (AMD's `cert_chain`: ASK then ARK, in any order
/// here: the ARK is the self-issued one).
pub fn parse_chain(pem: &[u8]) -> Result<(Certificate, Certificate), AttestError> {
    let bad = |why: String| AttestError::Certificate {
        which: "chain",
        why,
    };
    let certs = Certificate::load_pem_chain(pem).map_err(|e| bad(e.to_string()))?;
    if certs.len() != 2 {
        return Err(bad(format!(
            "{} certificates, expected 2 (ASK and ARK)",
            certs.len()
        )));
    }
    let self_issued = |c: &Certificate| c.tbs_certificate.issuer == c.tbs_certificate.subject;
    let mut it = certs.into_iter();
    let (a, b) = match (it.next(), it.next()) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err(bad("fewer than 2 certificates".into())),
    };
    match (self_issued(&a), self_issued(&b)) {
        (false, true) => Ok((a, b)),
        (true, false) => Ok((b, a)),
        _ => Err(bad(
            "no single self-issued root (ARK) among the two certificates".into(),
        )),
    }
}

/// Whether `signer`'s RSA key made `signee`'s RSA-PSS (SHA-384) signature.
pub fn rsa_pss_signed(signer: &Certificate, signee: &Certificate) -> Result<(), String> {
    let oid = signee.signature_algorithm.oid.to_string();
    if oid != RSA_PSS {
        return Err(format!("signature algorithm {oid}, not RSASSA-PSS"));
    }
    let spki = signer
        .tbs_certificate
        .subject_public_key_info
        .owned_to_ref();
    let key = rsa::RsaPublicKey::try_from(spki).map_err(|e| format!("not an RSA key: {e}"))?;
    let tbs = signee
        .tbs_certificate
        .to_der()
        .map_err(|e| format!("re-encoding: {e}"))?;
    let sig = signee
        .signature
        .as_bytes()
        .ok_or_else(|| "the signature is not whole bytes".to_owned())?;
    let hashed = Sha384::digest(&tbs);
    key.verify(rsa::Pss::new::<Sha384>(), &hashed, sig)
        .map_err(|_| "the signature does not verify".to_owned())
}

/// Unix seconds of a certificate's validity: (not before, not after).
#[must_use]
pub fn validity(c: &Certificate) -> (u64, u64) {
    let v = &c.tbs_certificate.validity;
    (
        v.not_before.to_unix_duration().as_secs(),
        v.not_after.to_unix_duration().as_secs(),
    )
}

/// The VCEK's TCB and hardware ID from its AMD extensions.
pub fn vcek_extensions(c: &Certificate) -> Result<(Tcb, [u8; 64]), String> {
    let exts = c
        .tbs_certificate
        .extensions
        .as_deref()
        .ok_or_else(|| "no extensions".to_owned())?;
    let find = |oid: &str| {
        exts.iter()
            .find(|e| e.extn_id.to_string() == oid)
            .map(|e| e.extn_value.as_bytes())
    };
    let spl = |oid: &str, what: &str| -> Result<u8, String> {
        let v = find(oid).ok_or_else(|| format!("no {what} extension ({oid})"))?;
        u8::from_der(v).map_err(|e| format!("{what} extension: {e}"))
    };
    let tcb = Tcb {
        bootloader: spl(OID_BL_SPL, "bootloader SPL")?,
        tee: spl(OID_TEE_SPL, "TEE SPL")?,
        snp: spl(OID_SNP_SPL, "SNP SPL")?,
        microcode: spl(OID_UCODE_SPL, "microcode SPL")?,
    };
    let hwid = find(OID_HWID).ok_or_else(|| format!("no hardware ID extension ({OID_HWID})"))?;
    let hwid: [u8; 64] = hwid
        .try_into()
        .map_err(|_| format!("a hardware ID of {} bytes, not 64", hwid.len()))?;
    Ok((tcb, hwid))
}

/// The VCEK's P-384 public key.
pub fn vcek_key(c: &Certificate) -> Result<p384::ecdsa::VerifyingKey, String> {
    let sec1 = c
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| "the public key is not whole bytes".to_owned())?;
    p384::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
        .map_err(|_| "not a P-384 public key".to_owned())
}
