//! Frames of the exit control channel over a byte stream (TCP):
//!
//! ```text
//! length u16 (big-endian, 1..=MAX_FRAME: the bytes after it) | kind u8 | body
//! kind: 1 handshake message 1, 2 handshake message 2, 3 transport message,
//!       4 refusal (body: reason u8)
//! ```
//!
//! [`FrameDecoder`] takes bytes as they arrive (any split, one byte at a time works),
//! never holds more than [`MAX_FRAME`] + 2 bytes, never panics, and names what is
//! wrong. An error ends the stream: the decoder keeps returning it.

/// Most bytes after a frame's length field (kind + body). A Noise message may be
/// 65535 bytes; ours are far shorter, but message 2 carries the attestation
/// (report, VCEK and a PEM chain of about 4.6 kB), hence 16 KiB rather than 4.
pub const MAX_FRAME: usize = 16 * 1024;
/// Most bytes of a frame's body.
pub const MAX_BODY: usize = MAX_FRAME - 1;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Noise handshake message 1 (consumer -> provider).
    Handshake1,
    /// Noise handshake message 2 (provider -> consumer).
    Handshake2,
    /// A Noise transport message, either way.
    Transport,
    /// The provider's plaintext refusal to answer message 1 (unauthenticated).
    Refusal,
}

impl FrameKind {
    /// Its code on the wire.
    pub fn code(self) -> u8 {
        match self {
            FrameKind::Handshake1 => 1,
            FrameKind::Handshake2 => 2,
            FrameKind::Transport => 3,
            FrameKind::Refusal => 4,
        }
    }

    /// The kind of a code.
    pub fn from_code(code: u8) -> Option<FrameKind> {
        [
            FrameKind::Handshake1,
            FrameKind::Handshake2,
            FrameKind::Transport,
            FrameKind::Refusal,
        ]
        .into_iter()
        .find(|k| k.code() == code)
    }
}

/// Why a byte stream is not a sequence of frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A length field of zero (a frame has at least its kind byte).
    #[error("exit channel frame of length 0")]
    ZeroLength,
    /// A length field above [`MAX_FRAME`].
    #[error("exit channel frame of {0} bytes is longer than the {MAX_FRAME} allowed")]
    TooLong(usize),
    /// A kind byte this version does not know.
    #[error("exit channel frame of unknown kind {0}: is the other side a newer portdistrict?")]
    UnknownKind(u8),
    /// A body to send is longer than [`MAX_BODY`].
    #[error("exit channel frame body of {0} bytes is longer than the {MAX_BODY} allowed")]
    BodyTooLong(usize),
}

/// One decoded frame, borrowed from the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// What it carries.
    pub kind: FrameKind,
    /// The bytes after the kind.
    pub body: &'a [u8],
}

/// Appends a frame of `kind` with `body` to `out`.
pub fn encode(kind: FrameKind, body: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if body.len() > MAX_BODY {
        return Err(FrameError::BodyTooLong(body.len()));
    }
    let len = u16::try_from(body.len() + 1).map_err(|_| FrameError::BodyTooLong(body.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.push(kind.code());
    out.extend_from_slice(body);
    Ok(())
}

/// Reassembles frames from a byte stream.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// The length field and what followed it, at most `2 + MAX_FRAME` bytes.
    buf: Vec<u8>,
    /// The frame in `buf` was returned: clear it before reading on.
    returned: bool,
    /// The first error: the stream is unusable after it.
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Takes bytes off the front of `input` up to the end of the next frame and
    /// returns that frame, or `None` when `input` ran out first (call again with the
    /// next bytes that arrive). Call again with the same `input` for further frames.
    pub fn decode<'d>(&'d mut self, input: &mut &[u8]) -> Result<Option<Frame<'d>>, FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.returned {
            self.buf.clear();
            self.returned = false;
        }
        let want = match self.wanted() {
            Ok(n) => n,
            Err(e) => return Err(self.fail(e)),
        };
        self.take(input, want);
        let want = match self.wanted() {
            Ok(n) => n,
            Err(e) => return Err(self.fail(e)),
        };
        self.take(input, want);
        if self.buf.len() < 3 || self.buf.len() < want {
            return Ok(None);
        }
        let Some(kind) = FrameKind::from_code(self.buf[2]) else {
            return Err(self.fail(FrameError::UnknownKind(self.buf[2])));
        };
        self.returned = true;
        Ok(Some(Frame {
            kind,
            body: &self.buf[3..],
        }))
    }

    /// How many bytes the buffer must hold: the length field, then the whole frame.
    fn wanted(&self) -> Result<usize, FrameError> {
        let [a, b, ..] = self.buf[..] else {
            return Ok(2);
        };
        match usize::from(u16::from_be_bytes([a, b])) {
            0 => Err(FrameError::ZeroLength),
            n if n > MAX_FRAME => Err(FrameError::TooLong(n)),
            n => Ok(2 + n),
        }
    }

    /// Moves bytes from `input` into the buffer until it holds `want`.
    fn take(&mut self, input: &mut &[u8], want: usize) {
        let n = want.saturating_sub(self.buf.len()).min(input.len());
        let (head, rest) = input.split_at(n);
        // Exactly what the frame needs, never a doubling past `2 + MAX_FRAME`.
        self.buf.reserve_exact(want.saturating_sub(self.buf.len()));
        self.buf.extend_from_slice(head);
        *input = rest;
    }

    fn fail(&mut self, e: FrameError) -> FrameError {
        self.failed = Some(e);
        self.buf = Vec::new();
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(stream: &[u8], chunk: usize) -> Result<Vec<(FrameKind, Vec<u8>)>, FrameError> {
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for mut piece in stream.chunks(chunk) {
            while let Some(f) = d.decode(&mut piece)? {
                got.push((f.kind, f.body.to_vec()));
            }
            assert!(piece.is_empty());
        }
        Ok(got)
    }

    #[test]
    fn golden_frame() {
        let mut out = Vec::new();
        encode(FrameKind::Refusal, &[2], &mut out).unwrap();
        assert_eq!(out, [0x00, 0x02, 0x04, 0x02]);
        encode(FrameKind::Transport, b"", &mut out).unwrap();
        assert_eq!(&out[4..], [0x00, 0x01, 0x03]);
    }

    #[test]
    fn decoder_fed_one_byte_at_a_time_or_all_at_once() {
        let mut stream = Vec::new();
        encode(FrameKind::Handshake1, &[7; 100], &mut stream).unwrap();
        encode(FrameKind::Transport, &[], &mut stream).unwrap();
        encode(FrameKind::Handshake2, &[9; MAX_BODY], &mut stream).unwrap();
        let want = vec![
            (FrameKind::Handshake1, vec![7; 100]),
            (FrameKind::Transport, vec![]),
            (FrameKind::Handshake2, vec![9; MAX_BODY]),
        ];
        for chunk in [1, 2, 3, 7, 1000, stream.len()] {
            assert_eq!(frames(&stream, chunk).unwrap(), want, "chunks of {chunk}");
        }
    }

    #[test]
    fn truncated_frames_wait_for_more() {
        let mut stream = Vec::new();
        encode(FrameKind::Handshake1, &[7; 40], &mut stream).unwrap();
        for n in 0..stream.len() {
            let mut d = FrameDecoder::new();
            let mut part = &stream[..n];
            assert_eq!(d.decode(&mut part), Ok(None), "prefix {n}");
            let mut rest = &stream[n..];
            let f = d.decode(&mut rest).unwrap().unwrap();
            assert_eq!(f.body, &[7; 40][..]);
            assert!(d.buf.capacity() <= stream.len());
        }
    }

    #[test]
    fn oversized_zero_and_unknown_frames_are_named_and_final() {
        let long = u16::try_from(MAX_FRAME + 1).unwrap().to_be_bytes();
        let mut d = FrameDecoder::new();
        let mut input = &[long[0], long[1], 1, 0, 0][..];
        assert_eq!(
            d.decode(&mut input),
            Err(FrameError::TooLong(MAX_FRAME + 1))
        );
        assert_eq!(d.buf.capacity(), 0);
        let mut more = &[0, 2, 3, 0][..];
        assert_eq!(d.decode(&mut more), Err(FrameError::TooLong(MAX_FRAME + 1)));
        assert_eq!(
            frames(&[0xff, 0xff], 1),
            Err(FrameError::TooLong(usize::from(u16::MAX)))
        );
        assert_eq!(frames(&[0, 0, 1], 3), Err(FrameError::ZeroLength));
        assert_eq!(frames(&[0, 1, 9], 1), Err(FrameError::UnknownKind(9)));
        let mut out = Vec::new();
        assert_eq!(
            encode(FrameKind::Transport, &[0; MAX_BODY + 1], &mut out),
            Err(FrameError::BodyTooLong(MAX_BODY + 1))
        );
        assert!(out.is_empty());
    }
}
