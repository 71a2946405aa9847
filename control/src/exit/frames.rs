//! A blocking exit channel connection, shared by both ends (`exit serve` and `use`):
//! whole frames in, bytes out, everything before one deadline. The frames themselves
//! are `portdistrict_exitnode::channel`'s (sans-IO); this is only their socket.

use anyhow::bail;
use portdistrict_exitnode::channel::{FrameDecoder, FrameKind};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A connection and its deadline.
pub(crate) struct FrameConn {
    stream: TcpStream,
    decoder: FrameDecoder,
    /// Bytes read and not yet decoded.
    buf: Vec<u8>,
    deadline: Instant,
    /// Who is at the other end, for messages ("the provider", "the consumer").
    peer: &'static str,
}

impl FrameConn {
    /// `stream` (made blocking, without Nagle) until `deadline`.
    pub(crate) fn new(
        stream: TcpStream,
        deadline: Instant,
        peer: &'static str,
    ) -> std::io::Result<FrameConn> {
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        Ok(FrameConn {
            stream,
            decoder: FrameDecoder::new(),
            buf: Vec::new(),
            deadline,
            peer,
        })
    }

    fn left(&self) -> anyhow::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no answer from {} in time", self.peer);
        }
        Ok(left)
    }

    /// The next whole frame: its kind and body.
    pub(crate) fn frame(&mut self) -> anyhow::Result<(FrameKind, Vec<u8>)> {
        let mut chunk = [0u8; 4096];
        loop {
            // What is buffered first: a frame may already be whole.
            let mut input: &[u8] = &self.buf;
            let before = input.len();
            let frame = self
                .decoder
                .decode(&mut input)?
                .map(|f| (f.kind, f.body.to_vec()));
            let used = before - input.len();
            self.buf.drain(..used);
            if let Some(f) = frame {
                return Ok(f);
            }
            let left = self.left()?;
            self.stream.set_read_timeout(Some(left))?;
            let n = match self.stream.read(&mut chunk) {
                Ok(0) => bail!("{} closed the connection", self.peer),
                Ok(n) => n,
                Err(e) if crate::nothing_arrived(&e) => continue,
                Err(e) => return Err(e.into()),
            };
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Writes `bytes` whole.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let left = self.left()?;
        self.stream.set_write_timeout(Some(left))?;
        self.stream.write_all(bytes)?;
        Ok(())
    }
}
