//! The certificate table the SEV-SNP firmware hands a guest with its report (the
//! kernel's configfs-tsm `auxblob`, AMD's `SNP_GET_EXT_REPORT` layout): entries of a
//! 16-byte GUID, a 32-bit offset and a 32-bit length (little-endian), ended by an
//! all-zero entry; the offsets point into the same blob. The VCEK, ASK and ARK come
//! out as DER; [`chain_pem`] makes the ASK+ARK chain the verifier reads.

use x509_cert::der::{Decode as _, EncodePem as _};

/// The GUIDs of the table, in RFC 4122 byte order (as the host tools that fill the
/// table write them).
const VCEK: [u8; 16] = guid(
    0x63da758d,
    0xe664,
    0x4564,
    [0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd],
);
const ASK: [u8; 16] = guid(
    0x4ab7b379,
    0xbbac,
    0x4fe4,
    [0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82],
);
const ARK: [u8; 16] = guid(
    0xc0b406a4,
    0xa803,
    0x4952,
    [0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae],
);
const VLEK: [u8; 16] = guid(
    0xa8074bc2,
    0xa25a,
    0x483e,
    [0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8, 0xa1],
);

/// Most entries read from a table.
const MAX_ENTRIES: usize = 16;

const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_be_bytes();
    let b = b.to_be_bytes();
    let c = c.to_be_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// Why a certificate table is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// An entry runs past the blob, or no terminating entry within it.
    #[error("the certificate table is truncated at entry {0}")]
    Truncated(usize),
    /// An entry's certificate lies outside the blob.
    #[error("certificate table entry {0} points outside the table ({1} bytes at {2})")]
    OutOfBounds(usize, u32, u32),
    /// More entries than a table has.
    #[error("the certificate table has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    /// A certificate needed is not in the table.
    #[error("the certificate table has no {0}")]
    Missing(&'static str),
    /// A certificate that is not DER X.509.
    #[error("the table's {0} is not an X.509 certificate: {1}")]
    NotACertificate(&'static str, String),
    /// A VLEK instead of a VCEK.
    #[error("the table holds a VLEK, not a VCEK: VLEK-signed reports are not handled")]
    Vlek,
}

/// The certificates of a table, DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertTable {
    /// The VCEK.
    pub vcek: Vec<u8>,
    /// The ASK.
    pub ask: Vec<u8>,
    /// The ARK.
    pub ark: Vec<u8>,
}

/// Reads a table; unknown GUIDs are skipped.
pub fn parse_cert_table(blob: &[u8]) -> Result<CertTable, TableError> {
    let (mut vcek, mut ask, mut ark, mut vlek) = (None, None, None, false);
    let mut i = 0;
    loop {
        if i >= MAX_ENTRIES {
            return Err(TableError::TooManyEntries);
        }
        let at = i * 24;
        let e = blob.get(at..at + 24).ok_or(TableError::Truncated(i))?;
        let mut g = [0u8; 16];
        g.copy_from_slice(&e[..16]);
        let offset = u32::from_le_bytes([e[16], e[17], e[18], e[19]]);
        let len = u32::from_le_bytes([e[20], e[21], e[22], e[23]]);
        if g == [0; 16] {
            break;
        }
        let start = offset as usize;
        let cert = start
            .checked_add(len as usize)
            .and_then(|end| blob.get(start..end))
            .ok_or(TableError::OutOfBounds(i, len, offset))?;
        match g {
            VCEK => vcek = Some(cert.to_vec()),
            ASK => ask = Some(cert.to_vec()),
            ARK => ark = Some(cert.to_vec()),
            VLEK => vlek = true,
            _ => {}
        }
        i += 1;
    }
    let vcek = match vcek {
        Some(v) => v,
        None if vlek => return Err(TableError::Vlek),
        None => return Err(TableError::Missing("VCEK")),
    };
    Ok(CertTable {
        vcek,
        ask: ask.ok_or(TableError::Missing("ASK"))?,
        ark: ark.ok_or(TableError::Missing("ARK"))?,
    })
}

/// The ASK and ARK as one PEM chain (ASK first, as AMD's `cert_chain`).
pub fn chain_pem(ask_der: &[u8], ark_der: &[u8]) -> Result<String, TableError> {
    let pem = |der: &[u8], what: &'static str| {
        x509_cert::Certificate::from_der(der)
            .and_then(|c| c.to_pem(x509_cert::der::pem::LineEnding::LF))
            .map_err(|e| TableError::NotACertificate(what, e.to_string()))
    };
    Ok(format!("{}{}", pem(ask_der, "ASK")?, pem(ark_der, "ARK")?))
}

/// A table of these certificates (for tests and tools that assemble one).
#[must_use]
pub fn build_cert_table(vcek: &[u8], ask: &[u8], ark: &[u8]) -> Vec<u8> {
    let entries = [(VCEK, vcek), (ASK, ask), (ARK, ark)];
    let header = (entries.len() + 1) * 24;
    let mut out = vec![0u8; header];
    let mut at = header;
    for (i, (g, cert)) in entries.iter().enumerate() {
        let e = &mut out[i * 24..i * 24 + 24];
        e[..16].copy_from_slice(g);
        e[16..20].copy_from_slice(&(at as u32).to_le_bytes());
        e[20..24].copy_from_slice(&(cert.len() as u32).to_le_bytes());
        at += cert.len();
    }
    for (_, cert) in entries {
        out.extend_from_slice(cert);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const VCEK_DER: &[u8] = include_bytes!("../../testdata/sev-snp/vcek.testcer");
    const MILAN: &str = include_str!("../../testdata/sev-snp/milan.testcer");

    fn ders() -> (Vec<u8>, Vec<u8>) {
        use x509_cert::der::Encode as _;
        let certs = x509_cert::Certificate::load_pem_chain(MILAN.as_bytes()).unwrap();
        (certs[0].to_der().unwrap(), certs[1].to_der().unwrap())
    }

    #[test]
    fn a_table_round_trips_and_its_chain_verifies_the_real_report() {
        let (ask, ark) = ders();
        let blob = build_cert_table(VCEK_DER, &ask, &ark);
        let t = parse_cert_table(&blob).unwrap();
        assert_eq!((t.vcek.as_slice(), &t.ask, &t.ark), (VCEK_DER, &ask, &ark));
        let chain = chain_pem(&t.ask, &t.ark).unwrap();
        let v = super::super::verify(
            include_bytes!("../../testdata/sev-snp/attestation.bin"),
            &t.vcek,
            chain.as_bytes(),
            &super::super::Expected::default(),
            1_735_689_600,
        );
        assert_eq!(
            *v.outcome(super::super::Check::Signature),
            super::super::Outcome::Ok
        );
        assert_eq!(
            *v.outcome(super::super::Check::Root),
            super::super::Outcome::Ok
        );
    }

    #[test]
    fn bad_tables_are_refused_by_name() {
        let (ask, ark) = ders();
        let blob = build_cert_table(VCEK_DER, &ask, &ark);
        assert_eq!(parse_cert_table(&blob[..20]), Err(TableError::Truncated(0)));
        assert_eq!(
            parse_cert_table(&blob[..30]),
            Err(TableError::OutOfBounds(0, VCEK_DER.len() as u32, 96))
        );
        let mut oob = blob.clone();
        oob[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse_cert_table(&oob),
            Err(TableError::OutOfBounds(0, u32::MAX, _))
        ));
        let mut no_ark = blob.clone();
        no_ark[48..64].copy_from_slice(&[0xee; 16]);
        assert_eq!(parse_cert_table(&no_ark), Err(TableError::Missing("ARK")));
        let mut vlek = blob.clone();
        vlek[..16].copy_from_slice(&VLEK);
        assert_eq!(parse_cert_table(&vlek), Err(TableError::Vlek));
        let mut garbage = blob;
        let ask_at = u32::from_le_bytes([garbage[40], garbage[41], garbage[42], garbage[43]]);
        garbage[ask_at as usize] = 0x00;
        let t = parse_cert_table(&garbage).unwrap();
        assert!(matches!(
            chain_pem(&t.ask, &t.ark),
            Err(TableError::NotACertificate("ASK", _))
        ));
        assert_eq!(
            parse_cert_table(&[0xff; 24 * 17]),
            Err(TableError::OutOfBounds(0, u32::MAX, u32::MAX))
        );
    }
}
