//! The SEV-SNP attestation report (AMD SEV-SNP ABI, `ATTESTATION_REPORT`): 1184
//! bytes, little-endian. Only what this verifier handles parses: report version 2,
//! signature algorithm 1 (ECDSA P-384 with SHA-384), signed by a VCEK; anything else
//! is refused by name.

use super::ReportError;

/// A report's length.
pub const REPORT_LEN: usize = 0x4A0;
/// The signed part: every byte before the signature.
pub const SIGNED_LEN: usize = 0x2A0;
/// The report version this verifier handles (Milan and Genoa firmware; 3 and 5 add
/// fields and are refused).
pub const VERSION: u32 = 2;

/// A TCB version (Milan/Genoa layout: one security patch level per component).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tcb {
    /// The bootloader's SPL.
    pub bootloader: u8,
    /// The PSP OS (TEE) SPL.
    pub tee: u8,
    /// The SNP firmware SPL.
    pub snp: u8,
    /// The microcode SPL.
    pub microcode: u8,
}

impl Tcb {
    /// From the 8 bytes of a `TCB_VERSION`.
    #[must_use]
    pub fn from_bytes(b: [u8; 8]) -> Tcb {
        Tcb {
            bootloader: b[0],
            tee: b[1],
            snp: b[6],
            microcode: b[7],
        }
    }
}

impl std::fmt::Display for Tcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bootloader {} tee {} snp {} microcode {}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

/// The guest policy the VM was launched with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy(pub u64);

impl Policy {
    /// The minimum ABI minor version the guest requires.
    #[must_use]
    pub fn abi_minor(self) -> u8 {
        self.0 as u8
    }
    /// The minimum ABI major version the guest requires.
    #[must_use]
    pub fn abi_major(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// Simultaneous multithreading allowed.
    #[must_use]
    pub fn smt(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// Bit 17, which the ABI requires to be one.
    #[must_use]
    pub fn reserved_one(self) -> bool {
        self.0 & (1 << 17) != 0
    }
    /// Association with a migration agent allowed.
    #[must_use]
    pub fn migrate_ma(self) -> bool {
        self.0 & (1 << 18) != 0
    }
    /// Debugging allowed (the hypervisor can read and write the guest's memory).
    #[must_use]
    pub fn debug(self) -> bool {
        self.0 & (1 << 19) != 0
    }
    /// Only one socket.
    #[must_use]
    pub fn single_socket(self) -> bool {
        self.0 & (1 << 20) != 0
    }
}

/// Which key signed the report (`KEY_INFO.SIGNING_KEY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKey {
    /// The chip's versioned chip endorsement key.
    Vcek,
    /// A versioned loaded endorsement key (cloud provider's).
    Vlek,
    /// Not signed.
    None,
}

/// A parsed report (fields this verifier checks or shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The report format version.
    pub version: u32,
    /// The guest's security version number.
    pub guest_svn: u32,
    /// The guest policy.
    pub policy: Policy,
    /// The VM privilege level that asked for the report.
    pub vmpl: u32,
    /// The platform's current TCB.
    pub current_tcb: Tcb,
    /// Platform information bits (SMT enabled, TSME enabled, ...).
    pub platform_info: u64,
    /// Whether the chip ID is masked (zeros).
    pub mask_chip_id: bool,
    /// What the guest put in its request (the exit binds its keys here).
    pub report_data: [u8; 64],
    /// The launch measurement of the guest image.
    pub measurement: [u8; 48],
    /// Data the host gave at launch.
    pub host_data: [u8; 32],
    /// The TCB the report is signed for (the VCEK's).
    pub reported_tcb: Tcb,
    /// The chip's unique ID (the VCEK's hardware ID).
    pub chip_id: [u8; 64],
    /// The committed TCB.
    pub committed_tcb: Tcb,
    /// The TCB at launch.
    pub launch_tcb: Tcb,
    /// The signature's R and S, big-endian, 48 bytes each.
    pub signature: ([u8; 48], [u8; 48]),
    /// The signed bytes.
    pub signed: Box<[u8; SIGNED_LEN]>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut x = [0u8; N];
    x.copy_from_slice(&b[at..at + N]);
    x
}

/// A little-endian 72-byte signature component as 48 big-endian bytes; the 24 bytes
/// above must be zero.
fn component(b: &[u8], at: usize, which: &'static str) -> Result<[u8; 48], ReportError> {
    let le = &b[at..at + 72];
    if le[48..].iter().any(|x| *x != 0) {
        return Err(ReportError::Signature(which));
    }
    let mut be = [0u8; 48];
    for (i, x) in le[..48].iter().enumerate() {
        be[47 - i] = *x;
    }
    Ok(be)
}

impl Report {
    /// Parses a report; never panics, names what it refuses.
    pub fn parse(b: &[u8]) -> Result<Report, ReportError> {
        if b.len() != REPORT_LEN {
            return Err(ReportError::Length(b.len()));
        }
        let version = u32_at(b, 0x00);
        if version != VERSION {
            return Err(ReportError::UnsupportedVersion(version));
        }
        let algo = u32_at(b, 0x34);
        if algo != 1 {
            return Err(ReportError::UnsupportedAlgorithm(algo));
        }
        let key_info = u32_at(b, 0x48);
        let signing_key = match (key_info >> 2) & 7 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            k => return Err(ReportError::UnknownSigningKey(k)),
        };
        if signing_key != SigningKey::Vcek {
            return Err(ReportError::UnsupportedSigningKey(signing_key));
        }
        let mut signed = Box::new([0u8; SIGNED_LEN]);
        signed.copy_from_slice(&b[..SIGNED_LEN]);
        Ok(Report {
            version,
            guest_svn: u32_at(b, 0x04),
            policy: Policy(u64_at(b, 0x08)),
            vmpl: u32_at(b, 0x30),
            current_tcb: Tcb::from_bytes(array(b, 0x38)),
            platform_info: u64_at(b, 0x40),
            mask_chip_id: key_info & 2 != 0,
            report_data: array(b, 0x50),
            measurement: array(b, 0x90),
            host_data: array(b, 0xC0),
            reported_tcb: Tcb::from_bytes(array(b, 0x180)),
            chip_id: array(b, 0x1A0),
            committed_tcb: Tcb::from_bytes(array(b, 0x1E0)),
            launch_tcb: Tcb::from_bytes(array(b, 0x1F0)),
            signature: (
                component(b, SIGNED_LEN, "R")?,
                component(b, SIGNED_LEN + 72, "S")?,
            ),
            signed,
        })
    }
}
