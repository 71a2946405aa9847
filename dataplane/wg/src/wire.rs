//! Zero-copy views of the four WireGuard messages (smoltcp style).
//!
//! A datagram from the UDP socket goes through [`message_type`] first, which
//! checks the type byte, the three reserved bytes and the length. The caller
//! then wraps the buffer in the matching view ([`Initiation`], [`Response`],
//! [`CookieReply`], [`Data`]); `new_checked` repeats those checks so that no
//! accessor of a checked view can panic. For sending, the caller wraps its own
//! output buffer, calls `fill_header` and the setters, and hands the bytes on.
//!
//! All integers are little-endian; every message starts with the type byte
//! followed by three zero bytes.

use std::fmt;

/// Type byte of a handshake initiation.
pub const MSG_INITIATION: u8 = 1;
/// Type byte of a handshake response.
pub const MSG_RESPONSE: u8 = 2;
/// Type byte of a cookie reply.
pub const MSG_COOKIE_REPLY: u8 = 3;
/// Type byte of a transport data message.
pub const MSG_DATA: u8 = 4;

/// Exact length of a handshake initiation.
pub const INITIATION_LEN: usize = 148;
/// Exact length of a handshake response.
pub const RESPONSE_LEN: usize = 92;
/// Exact length of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Length of the header of a transport data message (type, receiver, counter).
pub const DATA_HEADER_LEN: usize = 16;
/// Length of the Poly1305 tag that ends every AEAD ciphertext.
pub const AEAD_TAG_LEN: usize = 16;
/// Shortest transport data message: header plus the tag of an empty keepalive.
pub const DATA_MIN_LEN: usize = DATA_HEADER_LEN + AEAD_TAG_LEN;

/// Byte ranges of every field of every message.
pub mod field {
    use std::ops::Range;

    /// A byte range inside a message.
    pub type Field = Range<usize>;

    /// The type byte.
    pub const TYPE: usize = 0;
    /// The three reserved bytes, always zero.
    pub const RESERVED: Field = 1..4;
    /// The whole 4-byte header (type + reserved).
    pub const HEADER: Field = 0..4;

    /// Fields of a handshake initiation (148 bytes).
    pub mod initiation {
        use super::Field;
        /// Sender index chosen by the initiator.
        pub const SENDER: Field = 4..8;
        /// Unencrypted ephemeral public key.
        pub const EPHEMERAL: Field = 8..40;
        /// Initiator static public key, AEAD-encrypted (32 + 16 bytes).
        pub const ENCRYPTED_STATIC: Field = 40..88;
        /// TAI64N timestamp, AEAD-encrypted (12 + 16 bytes).
        pub const ENCRYPTED_TIMESTAMP: Field = 88..116;
        /// First MAC, over everything before it.
        pub const MAC1: Field = 116..132;
        /// Second (cookie) MAC, over everything before it.
        pub const MAC2: Field = 132..148;
    }

    /// Fields of a handshake response (92 bytes).
    pub mod response {
        use super::Field;
        /// Sender index chosen by the responder.
        pub const SENDER: Field = 4..8;
        /// The initiator's sender index, echoed.
        pub const RECEIVER: Field = 8..12;
        /// Unencrypted ephemeral public key.
        pub const EPHEMERAL: Field = 12..44;
        /// AEAD tag over the empty plaintext.
        pub const ENCRYPTED_NOTHING: Field = 44..60;
        /// First MAC, over everything before it.
        pub const MAC1: Field = 60..76;
        /// Second (cookie) MAC, over everything before it.
        pub const MAC2: Field = 76..92;
    }

    /// Fields of a cookie reply (64 bytes).
    pub mod cookie_reply {
        use super::Field;
        /// Sender index of the message that triggered the reply.
        pub const RECEIVER: Field = 4..8;
        /// XChaCha20-Poly1305 nonce.
        pub const NONCE: Field = 8..32;
        /// The cookie, AEAD-encrypted (16 + 16 bytes).
        pub const ENCRYPTED_COOKIE: Field = 32..64;
    }

    /// Fields of a transport data message (at least 32 bytes).
    pub mod data {
        use super::Field;
        /// The recipient's index of the session.
        pub const RECEIVER: Field = 4..8;
        /// Nonce counter, u64 little-endian.
        pub const COUNTER: Field = 8..16;
        /// Start of the encrypted payload (ciphertext followed by the tag).
        pub const PAYLOAD: usize = 16;
    }
}

/// The four message kinds of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Handshake initiation (type 1).
    Initiation,
    /// Handshake response (type 2).
    Response,
    /// Cookie reply (type 3).
    CookieReply,
    /// Transport data (type 4).
    Data,
}

impl MessageType {
    /// Decodes a type byte.
    pub fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            MSG_INITIATION => Some(Self::Initiation),
            MSG_RESPONSE => Some(Self::Response),
            MSG_COOKIE_REPLY => Some(Self::CookieReply),
            MSG_DATA => Some(Self::Data),
            _ => None,
        }
    }

    /// The type byte on the wire.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::Initiation => MSG_INITIATION,
            Self::Response => MSG_RESPONSE,
            Self::CookieReply => MSG_COOKIE_REPLY,
            Self::Data => MSG_DATA,
        }
    }

    /// Whether `len` is a valid total length for this kind.
    pub fn length_ok(self, len: usize) -> bool {
        match self {
            Self::Initiation => len == INITIATION_LEN,
            Self::Response => len == RESPONSE_LEN,
            Self::CookieReply => len == COOKIE_REPLY_LEN,
            Self::Data => len >= DATA_MIN_LEN,
        }
    }

    fn length_rule(self) -> &'static str {
        match self {
            Self::Initiation => "exactly 148",
            Self::Response => "exactly 92",
            Self::CookieReply => "exactly 64",
            Self::Data => "at least 32",
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Initiation => "handshake initiation",
            Self::Response => "handshake response",
            Self::CookieReply => "cookie reply",
            Self::Data => "transport data",
        })
    }
}

/// Why a datagram is not a well-formed WireGuard message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than the 4-byte header.
    #[error("datagram shorter than the 4-byte WireGuard header")]
    Truncated,
    /// The type byte is not 1..=4.
    #[error("unknown WireGuard message type {0}")]
    BadType(u8),
    /// One of the three bytes after the type byte is not zero.
    #[error("reserved header bytes of a WireGuard message are not zero")]
    BadReserved,
    /// The length does not fit the message type.
    #[error("{kind} message of {len} bytes (must be {} bytes)", .kind.length_rule())]
    BadLength {
        /// The type announced by the header.
        kind: MessageType,
        /// The datagram length.
        len: usize,
    },
    /// A view was built over a well-formed message of a different type.
    #[error("expected a {expected} message, got a {found} message")]
    WrongType {
        /// The type the view is for.
        expected: MessageType,
        /// The type announced by the header.
        found: MessageType,
    },
}

/// Classifies a datagram: checks the type byte, the reserved bytes and the
/// length (exact for handshake messages, at least [`DATA_MIN_LEN`] for data;
/// data lengths need not be a multiple of 16, since padding stops at the MTU).
pub fn message_type(buf: &[u8]) -> Result<MessageType, WireError> {
    let header: &[u8; 4] = buf.first_chunk().ok_or(WireError::Truncated)?;
    let [kind, reserved @ ..] = *header;
    let kind = MessageType::from_u8(kind).ok_or(WireError::BadType(kind))?;
    if reserved != [0; 3] {
        return Err(WireError::BadReserved);
    }
    if !kind.length_ok(buf.len()) {
        return Err(WireError::BadLength {
            kind,
            len: buf.len(),
        });
    }
    Ok(kind)
}

/// Checks that `buf` is a well-formed message of kind `expected`.
fn check(buf: &[u8], expected: MessageType) -> Result<(), WireError> {
    let found = message_type(buf)?;
    if found != expected {
        return Err(WireError::WrongType { expected, found });
    }
    Ok(())
}

const UNCHECKED: &str = "wire view shorter than its message; build it with new_checked";

fn array<const N: usize>(buf: &[u8], range: field::Field) -> &[u8; N] {
    debug_assert_eq!(range.len(), N);
    buf.get(range)
        .and_then(|s| s.first_chunk())
        .expect(UNCHECKED)
}

fn array_mut<const N: usize>(buf: &mut [u8], range: field::Field) -> &mut [u8; N] {
    debug_assert_eq!(range.len(), N);
    buf.get_mut(range)
        .and_then(|s| s.first_chunk_mut())
        .expect(UNCHECKED)
}

fn read_u32(buf: &[u8], range: field::Field) -> u32 {
    u32::from_le_bytes(*array(buf, range))
}

fn write_u32(buf: &mut [u8], range: field::Field, value: u32) {
    *array_mut(buf, range) = value.to_le_bytes();
}

/// Common part of the four views: construction, checks, header.
macro_rules! view {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        ///
        /// Accessors of a view made by `new_checked` never panic; those of a
        /// view made by `new_unchecked` panic if the buffer is too short.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// Wraps a buffer without any check.
            pub fn new_unchecked(buffer: T) -> Self {
                Self { buffer }
            }

            /// Wraps a buffer after checking type, reserved bytes and length.
            pub fn new_checked(buffer: T) -> Result<Self, WireError> {
                check(buffer.as_ref(), $kind)?;
                Ok(Self { buffer })
            }

            /// Gives the buffer back.
            pub fn into_inner(self) -> T {
                self.buffer
            }

            /// The whole message.
            pub fn as_bytes(&self) -> &[u8] {
                self.buffer.as_ref()
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            /// Writes the type byte and the three zero reserved bytes.
            pub fn fill_header(&mut self) {
                *array_mut(self.buffer.as_mut(), field::HEADER) = [$kind.as_u8(), 0, 0, 0];
            }
        }
    };
}

/// Generates, for each fixed-size byte field, a getter (any view) and a
/// `_mut` accessor (mutable views). Field widths are checked at compile time.
macro_rules! byte_fields {
    ($name:ident { $( $(#[$doc:meta])* $get:ident, $get_mut:ident: $range:expr, $n:literal; )* }) => {
        impl<T: AsRef<[u8]>> $name<T> {
            $(
                $(#[$doc])*
                pub fn $get(&self) -> &[u8; $n] {
                    const { assert!($range.end - $range.start == $n) };
                    array(self.buffer.as_ref(), $range)
                }
            )*
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            $(
                $(#[$doc])*
                ///
                /// Mutable, for building a message in place.
                pub fn $get_mut(&mut self) -> &mut [u8; $n] {
                    array_mut(self.buffer.as_mut(), $range)
                }
            )*
        }
    };
}

/// Generates a little-endian `u32` getter and setter.
macro_rules! u32_field {
    ($name:ident, $(#[$doc:meta])* $get:ident, $set:ident: $range:expr) => {
        impl<T: AsRef<[u8]>> $name<T> {
            $(#[$doc])*
            pub fn $get(&self) -> u32 {
                read_u32(self.buffer.as_ref(), $range)
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            $(#[$doc])*
            ///
            /// Setter, for building a message in place.
            pub fn $set(&mut self, value: u32) {
                write_u32(self.buffer.as_mut(), $range, value);
            }
        }
    };
}

view!(
    /// A handshake initiation (148 bytes).
    Initiation,
    MessageType::Initiation
);

u32_field!(Initiation,
    /// The initiator's sender index.
    sender, set_sender: field::initiation::SENDER);

byte_fields!(Initiation {
    /// The unencrypted ephemeral public key.
    ephemeral, ephemeral_mut: field::initiation::EPHEMERAL, 32;
    /// The encrypted static public key (with its tag).
    encrypted_static, encrypted_static_mut: field::initiation::ENCRYPTED_STATIC, 48;
    /// The encrypted TAI64N timestamp (with its tag).
    encrypted_timestamp, encrypted_timestamp_mut: field::initiation::ENCRYPTED_TIMESTAMP, 28;
    /// MAC1.
    mac1, mac1_mut: field::initiation::MAC1, 16;
    /// MAC2 (all zero when no cookie is known).
    mac2, mac2_mut: field::initiation::MAC2, 16;
});

impl<T: AsRef<[u8]>> Initiation<T> {
    /// The bytes MAC1 is computed over (everything before MAC1).
    pub fn mac1_covered(&self) -> &[u8] {
        prefix(self.buffer.as_ref(), field::initiation::MAC1.start)
    }

    /// The bytes MAC2 is computed over (everything before MAC2).
    pub fn mac2_covered(&self) -> &[u8] {
        prefix(self.buffer.as_ref(), field::initiation::MAC2.start)
    }
}

view!(
    /// A handshake response (92 bytes).
    Response,
    MessageType::Response
);

u32_field!(Response,
    /// The responder's sender index.
    sender, set_sender: field::response::SENDER);
u32_field!(Response,
    /// The initiator's sender index, echoed back.
    receiver, set_receiver: field::response::RECEIVER);

byte_fields!(Response {
    /// The unencrypted ephemeral public key.
    ephemeral, ephemeral_mut: field::response::EPHEMERAL, 32;
    /// The AEAD tag over the empty plaintext.
    encrypted_nothing, encrypted_nothing_mut: field::response::ENCRYPTED_NOTHING, 16;
    /// MAC1.
    mac1, mac1_mut: field::response::MAC1, 16;
    /// MAC2 (all zero when no cookie is known).
    mac2, mac2_mut: field::response::MAC2, 16;
});

impl<T: AsRef<[u8]>> Response<T> {
    /// The bytes MAC1 is computed over (everything before MAC1).
    pub fn mac1_covered(&self) -> &[u8] {
        prefix(self.buffer.as_ref(), field::response::MAC1.start)
    }

    /// The bytes MAC2 is computed over (everything before MAC2).
    pub fn mac2_covered(&self) -> &[u8] {
        prefix(self.buffer.as_ref(), field::response::MAC2.start)
    }
}

view!(
    /// A cookie reply (64 bytes).
    CookieReply,
    MessageType::CookieReply
);

u32_field!(CookieReply,
    /// The sender index of the handshake message being answered.
    receiver, set_receiver: field::cookie_reply::RECEIVER);

byte_fields!(CookieReply {
    /// The XChaCha20-Poly1305 nonce.
    nonce, nonce_mut: field::cookie_reply::NONCE, 24;
    /// The encrypted cookie (with its tag).
    encrypted_cookie, encrypted_cookie_mut: field::cookie_reply::ENCRYPTED_COOKIE, 32;
});

view!(
    /// A transport data message (header, ciphertext, tag; at least 32 bytes).
    Data,
    MessageType::Data
);

u32_field!(Data,
    /// The recipient's session index.
    receiver, set_receiver: field::data::RECEIVER);

impl<T: AsRef<[u8]>> Data<T> {
    /// The nonce counter.
    pub fn counter(&self) -> u64 {
        u64::from_le_bytes(*array(self.buffer.as_ref(), field::data::COUNTER))
    }

    /// The encrypted payload: ciphertext followed by the 16-byte tag.
    pub fn payload(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(field::data::PAYLOAD..)
            .unwrap_or_default()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Data<T> {
    /// Sets the nonce counter.
    pub fn set_counter(&mut self, value: u64) {
        *array_mut(self.buffer.as_mut(), field::data::COUNTER) = value.to_le_bytes();
    }

    /// The payload area, for encrypting in place.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(field::data::PAYLOAD..)
            .unwrap_or_default()
    }
}

fn prefix(buf: &[u8], end: usize) -> &[u8] {
    buf.get(..end).expect(UNCHECKED)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` bytes where byte `i` is `i as u8` (a pattern that exposes any
    /// off-by-one in field offsets).
    fn ramp<const N: usize>(start: u8) -> [u8; N] {
        std::array::from_fn(|i| start.wrapping_add(i as u8))
    }

    fn golden_initiation() -> Vec<u8> {
        let mut v = vec![1, 0, 0, 0, 0x78, 0x56, 0x34, 0x12];
        v.extend_from_slice(&ramp::<32>(0x10)); // ephemeral
        v.extend_from_slice(&ramp::<48>(0x40)); // encrypted static
        v.extend_from_slice(&ramp::<28>(0x80)); // encrypted timestamp
        v.extend_from_slice(&[0xa1; 16]); // mac1
        v.extend_from_slice(&[0xa2; 16]); // mac2
        v
    }

    #[test]
    fn initiation_golden() {
        let mut buf = [0xffu8; INITIATION_LEN];
        let mut msg = Initiation::new_unchecked(&mut buf[..]);
        msg.fill_header();
        msg.set_sender(0x1234_5678);
        *msg.ephemeral_mut() = ramp(0x10);
        *msg.encrypted_static_mut() = ramp(0x40);
        *msg.encrypted_timestamp_mut() = ramp(0x80);
        *msg.mac1_mut() = [0xa1; 16];
        *msg.mac2_mut() = [0xa2; 16];
        let golden = golden_initiation();
        assert_eq!(golden.len(), INITIATION_LEN);
        assert_eq!(&buf[..], &golden[..]);

        let msg = Initiation::new_checked(&golden[..]).unwrap();
        assert_eq!(msg.sender(), 0x1234_5678);
        assert_eq!(msg.ephemeral(), &ramp::<32>(0x10));
        assert_eq!(msg.encrypted_static(), &ramp::<48>(0x40));
        assert_eq!(msg.encrypted_timestamp(), &ramp::<28>(0x80));
        assert_eq!(msg.mac1(), &[0xa1; 16]);
        assert_eq!(msg.mac2(), &[0xa2; 16]);
        assert_eq!(msg.mac1_covered(), &golden[..116]);
        assert_eq!(msg.mac2_covered(), &golden[..132]);
        assert_eq!(msg.as_bytes(), &golden[..]);
        assert_eq!(message_type(&golden), Ok(MessageType::Initiation));
    }

    fn golden_response() -> Vec<u8> {
        let mut v = vec![2, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde, 0x04, 0x03, 0x02, 0x01];
        v.extend_from_slice(&ramp::<32>(0x20)); // ephemeral
        v.extend_from_slice(&ramp::<16>(0x60)); // encrypted nothing
        v.extend_from_slice(&[0xb1; 16]); // mac1
        v.extend_from_slice(&[0xb2; 16]); // mac2
        v
    }

    #[test]
    fn response_golden() {
        let mut buf = vec![0xffu8; RESPONSE_LEN];
        let mut msg = Response::new_unchecked(&mut buf);
        msg.fill_header();
        msg.set_sender(0xdead_beef);
        msg.set_receiver(0x0102_0304);
        *msg.ephemeral_mut() = ramp(0x20);
        *msg.encrypted_nothing_mut() = ramp(0x60);
        *msg.mac1_mut() = [0xb1; 16];
        *msg.mac2_mut() = [0xb2; 16];
        let golden = golden_response();
        assert_eq!(golden.len(), RESPONSE_LEN);
        assert_eq!(buf, golden);

        let msg = Response::new_checked(golden.as_slice()).unwrap();
        assert_eq!(msg.sender(), 0xdead_beef);
        assert_eq!(msg.receiver(), 0x0102_0304);
        assert_eq!(msg.ephemeral(), &ramp::<32>(0x20));
        assert_eq!(msg.encrypted_nothing(), &ramp::<16>(0x60));
        assert_eq!(msg.mac1(), &[0xb1; 16]);
        assert_eq!(msg.mac2(), &[0xb2; 16]);
        assert_eq!(msg.mac1_covered(), &golden[..60]);
        assert_eq!(msg.mac2_covered(), &golden[..76]);
    }

    #[test]
    fn cookie_reply_golden() {
        let mut golden = vec![3, 0, 0, 0, 0x01, 0x00, 0x00, 0x80];
        golden.extend_from_slice(&ramp::<24>(0x30));
        golden.extend_from_slice(&ramp::<32>(0x90));
        assert_eq!(golden.len(), COOKIE_REPLY_LEN);

        let mut msg = CookieReply::new_unchecked([0x55u8; COOKIE_REPLY_LEN]);
        msg.fill_header();
        msg.set_receiver(0x8000_0001);
        *msg.nonce_mut() = ramp(0x30);
        *msg.encrypted_cookie_mut() = ramp(0x90);
        assert_eq!(&msg.into_inner()[..], &golden[..]);

        let msg = CookieReply::new_checked(&golden).unwrap();
        assert_eq!(msg.receiver(), 0x8000_0001);
        assert_eq!(msg.nonce(), &ramp::<24>(0x30));
        assert_eq!(msg.encrypted_cookie(), &ramp::<32>(0x90));
    }

    #[test]
    fn data_golden() {
        let mut golden = vec![4, 0, 0, 0, 0x0d, 0x0c, 0x0b, 0x0a];
        golden.extend_from_slice(&[0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01]);
        golden.extend_from_slice(&ramp::<48>(0xc0));
        assert_eq!(golden.len(), DATA_HEADER_LEN + 48);

        let mut buf = vec![0u8; golden.len()];
        let mut msg = Data::new_unchecked(&mut buf[..]);
        msg.fill_header();
        msg.set_receiver(0x0a0b_0c0d);
        msg.set_counter(0x0102_0304_0506_0708);
        msg.payload_mut().copy_from_slice(&ramp::<48>(0xc0));
        assert_eq!(buf, golden);

        let msg = Data::new_checked(&golden[..]).unwrap();
        assert_eq!(msg.receiver(), 0x0a0b_0c0d);
        assert_eq!(msg.counter(), 0x0102_0304_0506_0708);
        assert_eq!(msg.payload(), &ramp::<48>(0xc0)[..]);
    }

    #[test]
    fn data_lengths() {
        let mut keepalive = [0u8; DATA_MIN_LEN];
        keepalive[0] = MSG_DATA;
        let msg = Data::new_checked(&keepalive[..]).unwrap();
        assert_eq!(msg.payload().len(), AEAD_TAG_LEN);
        // Padding stops at the MTU, so a non-multiple of 16 is legal.
        let odd = [&keepalive[..], &[0u8; 5][..]].concat();
        assert_eq!(message_type(&odd), Ok(MessageType::Data));
        assert_eq!(
            message_type(&keepalive[..31]),
            Err(WireError::BadLength {
                kind: MessageType::Data,
                len: 31
            })
        );
    }

    #[test]
    fn bad_inputs() {
        assert_eq!(message_type(&[]), Err(WireError::Truncated));
        assert_eq!(message_type(&[1, 0, 0]), Err(WireError::Truncated));
        assert_eq!(message_type(&[0, 0, 0, 0]), Err(WireError::BadType(0)));
        assert_eq!(message_type(&[5; 148]), Err(WireError::BadType(5)));

        let mut init = golden_initiation();
        for i in 1..4 {
            let mut bad = init.clone();
            bad[i] = 1;
            assert_eq!(message_type(&bad), Err(WireError::BadReserved));
            assert!(Initiation::new_checked(&bad).is_err());
        }
        let short = WireError::BadLength {
            kind: MessageType::Initiation,
            len: 147,
        };
        assert_eq!(Initiation::new_checked(&init[..147]).unwrap_err(), short);
        init.push(0);
        let long = WireError::BadLength {
            kind: MessageType::Initiation,
            len: 149,
        };
        assert_eq!(Initiation::new_checked(&init).unwrap_err(), long);

        let resp = golden_response();
        assert_eq!(
            Initiation::new_checked(&resp).unwrap_err(),
            WireError::WrongType {
                expected: MessageType::Initiation,
                found: MessageType::Response
            }
        );
        assert!(Response::new_checked(&resp[..91]).is_err());
        assert!(CookieReply::new_checked(&[3u8, 0, 0, 0][..]).is_err());
        assert!(Data::new_checked(&resp).is_err());
    }

    #[test]
    fn unchecked_short_data_view_does_not_panic_on_payload() {
        let msg = Data::new_unchecked(&[4u8, 0, 0, 0][..]);
        assert!(msg.payload().is_empty());
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        let e = WireError::BadLength {
            kind: MessageType::Response,
            len: 10,
        };
        assert_eq!(
            e.to_string(),
            "handshake response message of 10 bytes (must be exactly 92 bytes)"
        );
        assert_eq!(
            WireError::BadType(9).to_string(),
            "unknown WireGuard message type 9"
        );
    }

    #[test]
    fn type_byte_roundtrip() {
        for b in 0..=255u8 {
            if let Some(t) = MessageType::from_u8(b) {
                assert_eq!(t.as_u8(), b);
            } else {
                assert!(!(1..=4).contains(&b));
            }
        }
    }
}
