//! The CLI side of the control socket: one request, one answer. A missing socket
//! file, or one nobody listens on (a daemon that died), is [`Reached::NoDaemon`]:
//! only then does the CLI do the work itself.

use super::protocol::{decode, encode, Answer, Envelope, MAX_FRAME};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the CLI waits for the daemon's answer (it may have to bring a tunnel in
/// line first).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(90);

/// Whether a daemon took the request.
#[derive(Debug, PartialEq, Eq)]
pub enum Reached {
    /// It answered.
    Answer(Answer),
    /// No daemon listens on the socket.
    NoDaemon,
}

/// Why talking to a running daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket exists but this user may not connect to it.
    #[error("cannot reach the daemon at {path}: permission denied (run as root, or as a member of the daemon's --control-group)")]
    Denied {
        /// The socket.
        path: PathBuf,
    },
    /// Sending or receiving failed midway.
    #[error("talking to the daemon at {path}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The daemon's answer was not an [`Answer`].
    #[error("the daemon at {path} answered something unreadable: {reason}")]
    BadAnswer {
        /// The socket.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
}

/// Sends `request` to the daemon listening on `path` and returns its answer.
pub fn call(path: &Path, request: &Envelope) -> Result<Reached, ClientError> {
    use std::io::ErrorKind;
    let io = |source| ClientError::Io {
        path: path.to_owned(),
        source,
    };
    let mut stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Ok(Reached::NoDaemon)
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            return Err(ClientError::Denied {
                path: path.to_owned(),
            })
        }
        Err(e) => return Err(io(e)),
    };
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
    // A caller the daemon refuses may find the connection closed before it is done
    // writing: the answer (the refusal) is read all the same.
    let sent = stream.write_all(&encode(request));
    let mut line = Vec::new();
    let read = BufReader::new((&stream).take(MAX_FRAME as u64 + 1)).read_until(b'\n', &mut line);
    match (sent, read) {
        (_, Ok(n)) if n > 0 => {}
        (Err(e), _) | (_, Err(e)) => return Err(io(e)),
        (Ok(()), Ok(_)) => {
            return Err(ClientError::BadAnswer {
                path: path.to_owned(),
                reason: "the connection closed without an answer".into(),
            })
        }
    }
    decode::<Answer>(&line)
        .map(Reached::Answer)
        .map_err(|e| ClientError::BadAnswer {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}
