//! The one binary codec of portdistrict's own formats: identity bundles, device
//! requests, DNS records and their envelopes, exit invites and the exit negotiation
//! messages all read with a [`Reader`] and write with a [`Writer`], and the formats
//! that travel as text lines are [`Label`]led blobs.
//!
//! Conventions (`docs/protocol.md`): integers are big-endian; a `str` is one length
//! byte and that many bytes of UTF-8; an IP address is a family byte (4 or 6) and 4 or
//! 16 bytes; an endpoint is an IP address and a port (u16). A labeled blob is one line,
//! `<stem><version>:` + base64url (no padding) of bytes that begin with the version.
//!
//! The [`Reader`] never panics: every read names the field it was reading, so that
//! each format can say what is wrong in its own terms.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a [`Reader`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The bytes end inside the named field.
    #[error("it ends inside the {0}")]
    Truncated(&'static str),
    /// The named string field is not UTF-8.
    #[error("the {0} is not text")]
    NotText(&'static str),
    /// The named address has a family byte other than 4 or 6.
    #[error("the {field} has address family {family}, not 4 or 6")]
    Family {
        /// The field being read.
        field: &'static str,
        /// The family byte found.
        family: u8,
    },
}

/// Reads fields off the front of a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    whole: &'a [u8],
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader {
            whole: bytes,
            rest: bytes,
        }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], CodecError> {
        if self.rest.len() < n {
            return Err(CodecError::Truncated(field));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], CodecError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(CodecError::Truncated(field))?;
        self.rest = rest;
        Ok(*head)
    }

    /// One byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, CodecError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// A big-endian u16.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// A big-endian u64.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A `str`: one length byte, then that many bytes of UTF-8.
    pub fn str(&mut self, field: &'static str) -> Result<String, CodecError> {
        let n = usize::from(self.u8(field)?);
        let raw = self.bytes(n, field)?;
        String::from_utf8(raw.to_vec()).map_err(|_| CodecError::NotText(field))
    }

    /// An IP address: family byte (4 or 6), then 4 or 16 bytes.
    pub fn ip(&mut self, field: &'static str) -> Result<IpAddr, CodecError> {
        match self.u8(field)? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>(field)?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.array::<16>(field)?))),
            family => Err(CodecError::Family { field, family }),
        }
    }

    /// An endpoint: an IP address, then the port.
    pub fn socket_addr(&mut self, field: &'static str) -> Result<SocketAddr, CodecError> {
        let ip = self.ip(field)?;
        Ok(SocketAddr::new(ip, self.u16(field)?))
    }

    /// What is left to read.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// How many bytes were read so far (the length of what a trailing signature covers).
    pub fn consumed(&self) -> usize {
        self.whole.len() - self.rest.len()
    }
}

/// Writes fields in the layout a [`Reader`] reads back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writer(Vec<u8>);

impl Writer {
    /// An empty writer.
    pub fn new() -> Writer {
        Writer(Vec::new())
    }

    /// A writer that continues after `prefix` (a signature context, a magic).
    pub fn after(prefix: &[u8]) -> Writer {
        Writer(prefix.to_vec())
    }

    /// Raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Writer {
        self.0.extend_from_slice(b);
        self
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Writer {
        self.0.push(v);
        self
    }

    /// A big-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Writer {
        self.bytes(&v.to_be_bytes())
    }

    /// A big-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Writer {
        self.bytes(&v.to_be_bytes())
    }

    /// A `str`: its length byte and its bytes, cut at 255 (callers check names before;
    /// a longer one would fail the reader's checks, never shift the fields after it).
    pub fn str(&mut self, s: &str) -> &mut Writer {
        let b = &s.as_bytes()[..s.len().min(255)];
        self.u8(u8::try_from(b.len()).unwrap_or(u8::MAX)).bytes(b)
    }

    /// An IP address: family byte, then its octets.
    pub fn ip(&mut self, ip: IpAddr) -> &mut Writer {
        match ip {
            IpAddr::V4(a) => self.u8(4).bytes(&a.octets()),
            IpAddr::V6(a) => self.u8(6).bytes(&a.octets()),
        }
    }

    /// An endpoint: its address, then its port.
    pub fn socket_addr(&mut self, ep: SocketAddr) -> &mut Writer {
        self.ip(ep.ip()).u16(ep.port())
    }

    /// What was written.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Why a line is not the labeled blob asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// It does not start with the label.
    #[error("it does not start with the expected label")]
    Foreign,
    /// It carries the same stem with a later version (`<stem>N:` with N above ours).
    #[error("format version {0} is newer than this portdistrict understands")]
    Later(u8),
    /// The part after the label is not base64url.
    #[error("not base64url ({0})")]
    Base64(String),
}

/// The label of a blob that travels as one text line, `<stem><version>:`, such as
/// `portdistrict-id1:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(&'static str);

impl Label {
    /// The label written in full, `<stem><version>:` (the version in decimal).
    pub const fn new(prefix: &'static str) -> Label {
        Label(prefix)
    }

    /// The label as written, with its colon.
    pub const fn prefix(self) -> &'static str {
        self.0
    }

    /// The part before the version digits.
    fn stem(self) -> &'static str {
        self.0
            .trim_end_matches(':')
            .trim_end_matches(|c: char| c.is_ascii_digit())
    }

    /// The version this label carries.
    fn version(self) -> u8 {
        self.0[self.stem().len()..]
            .trim_end_matches(':')
            .parse()
            .unwrap_or(0)
    }

    /// The line: the label and base64url of `bytes`.
    pub fn encode(self, bytes: &[u8]) -> String {
        format!("{}{}", self.0, URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The bytes of a line (surrounding whitespace allowed).
    pub fn decode(self, text: &str) -> Result<Vec<u8>, BlobError> {
        let text = text.trim();
        let Some(b64) = text.strip_prefix(self.0) else {
            return Err(self
                .later(text)
                .map_or(BlobError::Foreign, BlobError::Later));
        };
        URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|e| BlobError::Base64(e.to_string()))
    }

    /// The N of a `<stem>N:` line with N above our version.
    fn later(self, text: &str) -> Option<u8> {
        let (n, _) = text.strip_prefix(self.stem())?.split_once(':')?;
        n.parse::<u8>().ok().filter(|&n| n > self.version())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_in_golden_layout() {
        let mut w = Writer::after(b"ctx\0");
        w.u8(1)
            .u16(0x0203)
            .u64(0x0405_0607_0809_0a0b)
            .str("ab")
            .ip("192.0.2.1".parse().unwrap())
            .socket_addr("[2001:db8::1]:51820".parse().unwrap())
            .bytes(&[0xee; 2]);
        let b = w.into_bytes();
        let mut want =
            b"ctx\0\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x02ab\x04\xc0\x00\x02\x01\x06"
                .to_vec();
        want.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        want.extend_from_slice(&[0xca, 0x6c, 0xee, 0xee]);
        assert_eq!(b, want);

        let mut r = Reader::new(&b);
        assert_eq!(r.bytes(4, "ctx").unwrap(), b"ctx\0");
        assert_eq!(r.u8("a"), Ok(1));
        assert_eq!(r.u16("b"), Ok(0x0203));
        assert_eq!(r.u64("c"), Ok(0x0405_0607_0809_0a0b));
        assert_eq!(r.str("d").unwrap(), "ab");
        assert_eq!(r.ip("e").unwrap(), "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            r.socket_addr("f").unwrap(),
            "[2001:db8::1]:51820".parse().unwrap()
        );
        assert_eq!(r.consumed(), b.len() - 2);
        assert_eq!(r.array::<2>("g"), Ok([0xee; 2]));
        assert!(r.is_empty());
        assert_eq!(r.u8("h"), Err(CodecError::Truncated("h")));
    }

    #[test]
    fn strings_are_cut_at_255_bytes_with_a_matching_length() {
        let long = "x".repeat(300);
        let b = Writer::new().str(&long).as_bytes().to_vec();
        assert_eq!(b.len(), 256);
        assert_eq!(b[0], 255);
        assert_eq!(Reader::new(&b).str("s").unwrap(), "x".repeat(255));
    }

    #[test]
    fn readers_refuse_short_foreign_and_non_text_input_by_field() {
        for n in 0..4 {
            assert_eq!(
                Reader::new(&[0; 3][..n.min(3)]).array::<4>("key"),
                Err(CodecError::Truncated("key"))
            );
        }
        assert_eq!(
            Reader::new(b"\x03ab").str("name"),
            Err(CodecError::Truncated("name"))
        );
        assert_eq!(
            Reader::new(b"\x02\xff\xfe").str("name"),
            Err(CodecError::NotText("name"))
        );
        assert_eq!(
            Reader::new(b"\x05\x01\x02\x03\x04").ip("endpoint"),
            Err(CodecError::Family {
                field: "endpoint",
                family: 5
            })
        );
        assert_eq!(
            Reader::new(b"\x06\x01\x02\x03\x04").ip("endpoint"),
            Err(CodecError::Truncated("endpoint"))
        );
        assert_eq!(
            Reader::new(b"\x04\x01\x02\x03\x04\x05").socket_addr("endpoint"),
            Err(CodecError::Truncated("endpoint"))
        );
    }

    #[test]
    fn labeled_blobs_round_trip_and_name_later_versions() {
        let l = Label::new("portdistrict-test1:");
        let line = l.encode(&[1, 2, 3, 250]);
        assert_eq!(line, "portdistrict-test1:AQID-g");
        assert_eq!(l.decode(&format!("  {line}\n")), Ok(vec![1, 2, 3, 250]));
        assert_eq!(
            l.decode("portdistrict-test2:AQID"),
            Err(BlobError::Later(2))
        );
        assert_eq!(l.decode("portdistrict-test0:AQID"), Err(BlobError::Foreign));
        assert_eq!(l.decode("portdistrict-test2"), Err(BlobError::Foreign));
        assert_eq!(l.decode("hello"), Err(BlobError::Foreign));
        assert!(matches!(
            l.decode("portdistrict-test1:!!"),
            Err(BlobError::Base64(_))
        ));
        assert_eq!(l.prefix(), "portdistrict-test1:");
    }
}
