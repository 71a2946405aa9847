//! The control socket's protocol, pure: typed requests and answers, one JSON document
//! per line (at most [`MAX_FRAME`] bytes with its newline), and the permission check
//! on the caller's peer credentials. No sockets here; [`super::server`] and
//! [`super::client`] move these bytes.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The largest frame (one JSON document and its newline) either side accepts.
pub const MAX_FRAME: usize = 64 * 1024;

/// An invite's pin of an attested exit, as the control socket carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvitePin {
    /// The launch measurement, 96 hex digits.
    pub measurement: String,
    /// The lowest guest ABI (major, minor).
    pub min_abi: (u8, u8),
    /// Whether SMT must be off.
    pub smt_forbidden: bool,
}

/// What the CLI asks a running daemon to do. Each variant is one CLI command whose
/// effect the daemon must see: the daemon runs it itself, so that while it runs it is
/// the only writer of its stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// `exit invite` (served by `exit serve`).
    ExitInvite {
        /// Where consumers reach the provider (empty: the recorded ones).
        endpoints: Vec<SocketAddr>,
        /// Lifetime of the invite in seconds.
        expires_secs: u64,
        /// How many consumers may redeem it.
        uses: u16,
        /// The attestation the invite pins, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pin: Option<InvitePin>,
        /// What to print: `line` (the default) or `wg-quick`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<String>,
        /// With `wg-quick`: a QR code too.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        qr: bool,
    },
    /// `exit list [--json]` (served by `exit serve`).
    ExitList {
        /// JSON instead of text.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        json: bool,
    },
    /// `exit revoke CONSUMER|TOKEN` (served by `exit serve`).
    ExitRevoke {
        /// A consumer's WireGuard key or inner address, or an invite's token.
        who: String,
    },
    /// `peer add BUNDLE` (served by `portdistrictd`).
    PeerAdd {
        /// The `portdistrict-id1:` bundle.
        bundle: String,
    },
    /// `peer verify|trust|demote|revoke|forget NODE` (served by `portdistrictd`).
    PeerChange {
        /// Which change.
        verb: PeerVerb,
        /// The peer (node ID or namespace).
        who: String,
        /// The fingerprint read out of band (`verify` only).
        fingerprint: Option<String>,
    },
    /// `tunnel connect|disconnect NAME` (served by `portdistrictd`).
    TunnelSet {
        /// The tunnel (`device.namespace`).
        name: String,
        /// `connect` (true) or `disconnect` (false).
        connect: bool,
    },
    /// `device roster add REQUEST` (served by `portdistrictd`, which signs the
    /// delegation with the seed it holds).
    RosterAdd {
        /// The `portdistrict-dev1:` line from `device request` (not `request`: that
        /// is the tag).
        line: String,
    },
    /// `device roster remove NAME` (served by `portdistrictd`).
    RosterRemove {
        /// The device's name.
        name: String,
    },
}

/// One frame from the CLI: the request and the state directory it means. A daemon
/// serves only its own state directory; a request for another one is answered
/// [`CtlError::OtherState`] (and the CLI works on that directory itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The caller's `--state-dir` (absolute, canonical where it can be).
    pub state_dir: PathBuf,
    /// What it asks.
    pub request: Request,
}

/// The peer store changes `peer ...` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerVerb {
    /// SEEN -> VERIFIED by fingerprint.
    Verify,
    /// -> TRUSTED.
    Trust,
    /// TRUSTED -> VERIFIED.
    Demote,
    /// -> REVOKED.
    Revoke,
    /// Removed from the store.
    Forget,
}

impl PeerVerb {
    /// The CLI word (`trust`, ...), as `node::peer_change` takes it.
    pub fn word(self) -> &'static str {
        match self {
            PeerVerb::Verify => "verify",
            PeerVerb::Trust => "trust",
            PeerVerb::Demote => "demote",
            PeerVerb::Revoke => "revoke",
            PeerVerb::Forget => "forget",
        }
    }

    /// The verb of a CLI word.
    pub fn from_word(word: &str) -> Option<PeerVerb> {
        [
            PeerVerb::Verify,
            PeerVerb::Trust,
            PeerVerb::Demote,
            PeerVerb::Revoke,
            PeerVerb::Forget,
        ]
        .into_iter()
        .find(|v| v.word() == word)
    }
}

impl Request {
    /// Whether serving it may change the daemon's stores (then the daemon brings
    /// itself in line at once).
    pub fn changes_state(&self) -> bool {
        !matches!(self, Request::ExitList { .. })
    }
}

/// The daemon's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case", deny_unknown_fields)]
pub enum Answer {
    /// Done; `output` is what the command prints (the same text as offline).
    Done {
        /// The command's output.
        output: String,
    },
    /// Not done, and nothing changed.
    Refused {
        /// Why.
        error: CtlError,
    },
}

/// Why a request was not carried out. Every refusal changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum CtlError {
    /// The caller is neither root nor in the control group.
    #[error("permission denied: uid {uid} is neither root nor in the daemon's control group (run as root, or start the daemon with --control-group GROUP and join that group)")]
    Denied {
        /// The caller's user ID.
        uid: u32,
    },
    /// The request was longer than [`MAX_FRAME`].
    #[error("request too large: at most {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request was not one of [`Request`]'s documents.
    #[error("malformed request: {reason}")]
    Malformed {
        /// What the parser said.
        reason: String,
    },
    /// This daemon does not serve the request (it is the other daemon's).
    #[error("{daemon} does not serve this command")]
    Unsupported {
        /// Which daemon answered.
        daemon: String,
    },
    /// The daemon serves another state directory.
    #[error("this daemon serves the state directory {served}")]
    OtherState {
        /// The state directory it serves.
        served: PathBuf,
    },
    /// Too many clients at once; try again.
    #[error("the daemon is busy with other clients: try again")]
    Busy,
    /// The command itself failed (its message, as offline).
    #[error("{message}")]
    Failed {
        /// The command's error, with its causes.
        message: String,
    },
}

/// One frame: the JSON document of `value` and a newline.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these enums (strings, numbers, addresses) cannot fail.
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Decodes one frame (with or without its newline): a frame over [`MAX_FRAME`] is
/// [`CtlError::TooLarge`], one that is not a `T` [`CtlError::Malformed`].
pub fn decode<T: for<'de> Deserialize<'de>>(frame: &[u8]) -> Result<T, CtlError> {
    if frame.len() > MAX_FRAME {
        return Err(CtlError::TooLarge { limit: MAX_FRAME });
    }
    let body = frame.strip_suffix(b"\n").unwrap_or(frame);
    serde_json::from_slice(body).map_err(|e| CtlError::Malformed {
        reason: e.to_string(),
    })
}

/// Who may use the socket besides root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access {
    /// The control group (`--control-group`), if any.
    pub group: Option<u32>,
}

/// A caller as the kernel reports it (`SO_PEERCRED`), with its supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Effective user ID.
    pub uid: u32,
    /// Effective group ID.
    pub gid: u32,
    /// Supplementary groups (from `/proc/PID/status`; empty when unknown).
    pub groups: Vec<u32>,
}

impl Access {
    /// Root always; otherwise only a caller whose group or one of whose supplementary
    /// groups is the control group.
    pub fn check(&self, caller: &Caller) -> Result<(), CtlError> {
        let in_group = self
            .group
            .is_some_and(|g| caller.gid == g || caller.groups.contains(&g));
        if caller.uid == 0 || in_group {
            Ok(())
        } else {
            Err(CtlError::Denied { uid: caller.uid })
        }
    }
}

/// The `Groups:` line of `/proc/PID/status` (supplementary group IDs).
pub fn groups_of_status(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A group given by number, or by name as `/etc/group` (its text) lists it.
pub fn group_id(spec: &str, etc_group: &str) -> Option<u32> {
    if let Ok(gid) = spec.parse() {
        return Some(gid);
    }
    etc_group.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(spec))
            .then(|| f.nth(1).and_then(|g| g.parse().ok()))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_one_line() {
        for r in [
            Request::ExitInvite {
                endpoints: vec!["192.0.2.1:51820".parse().unwrap()],
                expires_secs: 3600,
                uses: 2,
                pin: None,
                format: None,
                qr: false,
            },
            Request::ExitInvite {
                endpoints: vec![],
                expires_secs: 60,
                uses: 1,
                pin: Some(InvitePin {
                    measurement: "ab".repeat(48),
                    min_abi: (1, 51),
                    smt_forbidden: true,
                }),
                format: Some("wg-quick".into()),
                qr: true,
            },
            Request::ExitList { json: false },
            Request::ExitRevoke { who: "x\ny".into() },
            Request::PeerChange {
                verb: PeerVerb::Verify,
                who: "n".into(),
                fingerprint: Some("fp".into()),
            },
            Request::TunnelSet {
                name: "laptop.alice".into(),
                connect: false,
            },
            Request::RosterRemove { name: "a".into() },
            Request::RosterAdd {
                line: "portdistrict-dev1:x".into(),
            },
            Request::PeerAdd { bundle: "b".into() },
        ] {
            let e = Envelope {
                state_dir: "/var/lib/portdistrict".into(),
                request: r,
            };
            let line = encode(&e);
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "{e:?}");
            assert_eq!(decode::<Envelope>(&line).unwrap(), e);
        }
        assert_eq!(
            encode(&Request::ExitList { json: false }),
            b"{\"request\":\"exit_list\"}\n"
        );
        assert_eq!(
            encode(&Request::RosterAdd {
                line: "portdistrict-dev1:x".into()
            }),
            b"{\"request\":\"roster_add\",\"line\":\"portdistrict-dev1:x\"}\n"
        );
    }

    #[test]
    fn answers_round_trip() {
        for a in [
            Answer::Done {
                output: "revoked keyA".into(),
            },
            Answer::Refused {
                error: CtlError::Denied { uid: 65534 },
            },
            Answer::Refused {
                error: CtlError::Busy,
            },
        ] {
            assert_eq!(decode::<Answer>(&encode(&a)).unwrap(), a);
        }
    }

    #[test]
    fn oversized_and_malformed_requests_are_typed_errors() {
        let big = vec![b' '; MAX_FRAME + 1];
        assert_eq!(
            decode::<Request>(&big),
            Err(CtlError::TooLarge { limit: MAX_FRAME })
        );
        for bad in [
            &b"not json"[..],
            b"{\"request\":\"format_disk\"}",
            b"{\"request\":\"exit_revoke\"}",
            b"{\"request\":\"exit_revoke\",\"who\":\"a\",\"extra\":1}",
            b"{\"request\":\"exit_invite\",\"endpoints\":[],\"expires_secs\":1,\"uses\":70000}",
            b"",
        ] {
            assert!(
                matches!(decode::<Request>(bad), Err(CtlError::Malformed { .. })),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn only_root_and_the_control_group_pass() {
        let caller = |uid, gid, groups: &[u32]| Caller {
            uid,
            gid,
            groups: groups.to_vec(),
        };
        let none = Access::default();
        let group = Access { group: Some(4242) };
        assert_eq!(none.check(&caller(0, 0, &[])), Ok(()));
        assert_eq!(group.check(&caller(0, 5, &[])), Ok(()));
        assert_eq!(
            none.check(&caller(1000, 4242, &[4242])),
            Err(CtlError::Denied { uid: 1000 })
        );
        assert_eq!(group.check(&caller(1000, 4242, &[])), Ok(()));
        assert_eq!(group.check(&caller(1000, 100, &[27, 4242])), Ok(()));
        assert_eq!(
            group.check(&caller(65534, 65534, &[100])),
            Err(CtlError::Denied { uid: 65534 })
        );
    }

    #[test]
    fn groups_and_group_names() {
        let status = "Name:\tx\nUid:\t1000\t1000\t1000\t1000\nGroups:\t27 100 4242 \nNgid:\t0\n";
        assert_eq!(groups_of_status(status), [27, 100, 4242]);
        assert_eq!(groups_of_status("Name: x\n"), Vec::<u32>::new());
        let etc = "root:x:0:\nportdistrict:x:997:alice,bob\nbad\n";
        assert_eq!(group_id("portdistrict", etc), Some(997));
        assert_eq!(group_id("4242", etc), Some(4242));
        assert_eq!(group_id("nosuch", etc), None);
        assert_eq!(group_id("bad", etc), None);
    }

    #[test]
    fn peer_verbs_are_the_cli_words() {
        for w in ["verify", "trust", "demote", "revoke", "forget"] {
            assert_eq!(PeerVerb::from_word(w).unwrap().word(), w);
        }
        assert_eq!(PeerVerb::from_word("TRUST"), None);
    }
}
