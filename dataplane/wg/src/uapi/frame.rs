//! Cutting requests out of a UAPI byte stream, with limits.
//!
//! The socket server feeds whatever it reads into a [`Framer`] and takes complete
//! requests out of it. A request is every line up to and including the first empty
//! one (`\n` or `\r\n`); only a complete request is returned, so one that is cut
//! short (end of input, timeout) or breaks a limit (a line or the request too long,
//! a line that is not UTF-8) is refused as a whole and nothing of it is applied.

/// Longest line of a request, in bytes, without its newline. The longest valid
/// line is an `endpoint=` with a scoped IPv6 address (well under 100 bytes).
pub const LINE_MAX: usize = 64 * 1024;

/// Largest request, in bytes. A `set` of 1 million IPv6 AllowedIPs
/// (`allowed_ip=` and up to 43 characters each) fits.
pub const REQUEST_MAX: usize = 64 * 1024 * 1024;

/// Linux `EINVAL`.
const EINVAL: i32 = 22;
/// Linux `EMSGSIZE`.
const EMSGSIZE: i32 = 90;

/// Why no request could be read. [`FrameError::errno`] is what to answer; the
/// connection is then closed, since the rest of its input cannot be trusted to
/// start a new request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A line is not valid UTF-8.
    #[error("line {line} of the request is not valid UTF-8")]
    NotUtf8 {
        /// Line number (the operation line is 1).
        line: usize,
    },
    /// A line is longer than the limit (checked before its newline arrives).
    #[error("line {line} of the request is longer than {max} bytes")]
    LineTooLong {
        /// Line number.
        line: usize,
        /// The limit.
        max: usize,
    },
    /// The request is longer than the limit.
    #[error("the request is longer than {max} bytes")]
    RequestTooLarge {
        /// The limit.
        max: usize,
    },
    /// The input ended before the blank line that ends a request.
    #[error("the connection ended in the middle of a request (no blank line after line {lines})")]
    Truncated {
        /// Complete lines received.
        lines: usize,
    },
    /// The request did not arrive completely in time.
    #[error("the request did not arrive completely within {secs} s")]
    TimedOut {
        /// The time allowed.
        secs: u64,
    },
    /// Requests of other clients hold the memory this one would need.
    #[error("too many bytes of unfinished requests on the socket (at most {max} in all)")]
    Busy {
        /// The limit across all clients.
        max: usize,
    },
}

impl FrameError {
    /// The negative errno to answer with (`errno=N`): `-EMSGSIZE` for a limit,
    /// `-EINVAL` for everything else.
    pub fn errno(&self) -> i32 {
        match self {
            Self::LineTooLong { .. } | Self::RequestTooLarge { .. } | Self::Busy { .. } => {
                -EMSGSIZE
            }
            Self::NotUtf8 { .. } | Self::Truncated { .. } | Self::TimedOut { .. } => -EINVAL,
        }
    }
}

/// Accumulates the bytes of one connection and returns complete requests.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes of `buf` already checked: whole lines of the current request.
    checked: usize,
    /// Whole lines of the current request so far.
    lines: usize,
    line_max: usize,
    request_max: usize,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new(LINE_MAX, REQUEST_MAX)
    }
}

impl Framer {
    /// A framer with the given limits (the defaults are [`LINE_MAX`] and
    /// [`REQUEST_MAX`]).
    pub fn new(line_max: usize, request_max: usize) -> Self {
        Self {
            buf: Vec::new(),
            checked: 0,
            lines: 0,
            line_max,
            request_max,
        }
    }

    /// Appends bytes read from the connection. Call [`Framer::next_request`] after
    /// each append: it enforces the limits, so appending in chunks of at most
    /// [`LINE_MAX`] bounds the buffer to the limits plus one chunk.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held: the unfinished request and anything after it.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete request (ending in its blank line), `Ok(None)` if more
    /// bytes are needed, or why the input can never become a request.
    pub fn next_request(&mut self) -> Result<Option<String>, FrameError> {
        while let Some(n) = self.buf[self.checked..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[self.checked..self.checked + n];
            let number = self.lines + 1;
            if n > self.line_max {
                return Err(FrameError::LineTooLong {
                    line: number,
                    max: self.line_max,
                });
            }
            if std::str::from_utf8(line).is_err() {
                return Err(FrameError::NotUtf8 { line: number });
            }
            let blank = line.is_empty() || line == b"\r";
            self.checked += n + 1;
            self.lines = number;
            if self.checked > self.request_max {
                return Err(FrameError::RequestTooLarge {
                    max: self.request_max,
                });
            }
            if blank {
                let rest = self.buf.split_off(self.checked);
                let request = std::mem::replace(&mut self.buf, rest);
                self.checked = 0;
                self.lines = 0;
                // Every line was checked to be UTF-8 above.
                return String::from_utf8(request)
                    .map(Some)
                    .map_err(|_| FrameError::NotUtf8 { line: number });
            }
        }
        if self.buf.len() - self.checked > self.line_max {
            return Err(FrameError::LineTooLong {
                line: self.lines + 1,
                max: self.line_max,
            });
        }
        if self.buf.len() > self.request_max {
            return Err(FrameError::RequestTooLarge {
                max: self.request_max,
            });
        }
        Ok(None)
    }

    /// At the end of the input: `Ok(())` if no request was begun, otherwise
    /// [`FrameError::Truncated`] (call after [`Framer::next_request`] returned
    /// `Ok(None)`).
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated { lines: self.lines })
        }
    }
}
