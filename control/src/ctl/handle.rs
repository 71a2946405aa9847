//! What a request does: the same library call the CLI makes offline, so that its
//! output is the same whether the daemon or the CLI ran it.

use super::protocol::{Answer, CtlError, Request};
use super::Daemon;
use crate::{device, exit, node, tunnels, Dirs};
use std::time::Duration;

/// Runs `request` against the stores under `dirs` as `daemon` serves it (the daemon
/// in its loop, or the CLI when no daemon runs); returns the command's output.
pub fn run(dirs: &Dirs, daemon: Daemon, request: &Request) -> anyhow::Result<String> {
    match (daemon, request) {
        (
            Daemon::Exit,
            Request::ExitInvite {
                endpoints,
                expires_secs,
                uses,
            },
        ) => exit::invite(
            dirs,
            &exit::InviteOptions {
                endpoints: endpoints.clone(),
                expires: Duration::from_secs(*expires_secs),
                uses: *uses,
            },
        ),
        (Daemon::Exit, Request::ExitList) => exit::list(dirs),
        (Daemon::Exit, Request::ExitRevoke { who }) => exit::revoke(dirs, who),
        (Daemon::Control, Request::PeerAdd { bundle }) => node::peer_add(dirs, bundle, exit::now()),
        (
            Daemon::Control,
            Request::PeerChange {
                verb,
                who,
                fingerprint,
            },
        ) => node::peer_change(dirs, verb.word(), who, fingerprint.as_deref(), exit::now()),
        (Daemon::Control, Request::TunnelSet { name, connect }) => {
            tunnels::set_connected(dirs, name, *connect)
        }
        (Daemon::Control, Request::RosterRemove { name }) => device::roster_remove(dirs, name),
        _ => Err(CtlError::Unsupported {
            daemon: daemon.name().to_owned(),
        }
        .into()),
    }
}

/// [`run`] as the daemon answers it.
pub fn handle(dirs: &Dirs, daemon: Daemon, request: &Request) -> Answer {
    match run(dirs, daemon, request) {
        Ok(output) => Answer::Done { output },
        Err(e) => Answer::Refused {
            error: CtlError::Failed {
                message: format!("{e:#}"),
            },
        },
    }
}

/// The CLI's side: asks `daemon` when it runs (its answer, or its refusal as the
/// error), and runs the request here only when no daemon listens, or the one that
/// listens serves another state directory.
pub fn via_daemon(dirs: &Dirs, daemon: Daemon, request: &Request) -> anyhow::Result<String> {
    let envelope = super::Envelope {
        state_dir: super::state_dir(dirs),
        request: request.clone(),
    };
    match super::client::call(&daemon.socket(dirs), &envelope)? {
        super::client::Reached::NoDaemon
        | super::client::Reached::Answer(Answer::Refused {
            error: CtlError::OtherState { .. },
        }) => run(dirs, daemon, request),
        super::client::Reached::Answer(Answer::Done { output }) => Ok(output),
        super::client::Reached::Answer(Answer::Refused { error }) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::{Access, Control};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn dirs(tag: &str) -> Dirs {
        let base = std::env::temp_dir().join(format!("pd-ctlh-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        Dirs {
            state: base.join("state"),
            run: base.join("run"),
        }
    }

    fn invite() -> Request {
        Request::ExitInvite {
            endpoints: vec!["192.0.2.1:51820".parse().unwrap()],
            expires_secs: 3600,
            uses: 1,
        }
    }

    #[test]
    fn offline_and_through_the_daemon_print_the_same() {
        let d = dirs("same");
        // No daemon: the CLI runs it here.
        let line = via_daemon(&d, Daemon::Exit, &invite()).unwrap();
        assert!(line.starts_with("portdistrict-invite1:"), "{line}");
        let offline_list = via_daemon(&d, Daemon::Exit, &Request::ExitList).unwrap();
        // A daemon: it runs it, and says the same.
        let ctl = Control::bind(&d, Daemon::Exit, Access::default()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let changes = std::thread::spawn(move || {
            let mut changes = 0;
            while !s.load(Ordering::Relaxed) {
                changes += u32::from(ctl.poll());
                std::thread::sleep(Duration::from_millis(10));
            }
            changes
        });
        assert_eq!(
            via_daemon(&d, Daemon::Exit, &Request::ExitList).unwrap(),
            offline_list
        );
        via_daemon(&d, Daemon::Exit, &invite()).unwrap();
        let e = via_daemon(
            &d,
            Daemon::Exit,
            &Request::ExitRevoke {
                who: "nobody".into(),
            },
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("exit list"), "{e:#}");
        let other = Dirs {
            state: d.state.with_file_name("other"),
            run: d.run.clone(),
        };
        assert!(via_daemon(&other, Daemon::Exit, &invite()).is_ok());
        let mine = via_daemon(&d, Daemon::Exit, &Request::ExitList).unwrap();
        assert!(
            mine.starts_with("invites: 2\n"),
            "another state's invite: {mine}"
        );
        let theirs = via_daemon(&other, Daemon::Exit, &Request::ExitList).unwrap();
        assert!(theirs.starts_with("invites: 1\n"), "{theirs}");
        let e = via_daemon(&d, Daemon::Control, &Request::ExitList);
        assert!(e.is_err(), "portdistrictd does not serve exit commands");
        stop.store(true, Ordering::Relaxed);
        assert_eq!(
            changes.join().unwrap(),
            1,
            "only the invite changed the store"
        );
        let list = via_daemon(&d, Daemon::Exit, &Request::ExitList).unwrap();
        assert!(list.starts_with("invites: 2\n"), "{list}");
        let _ = std::fs::remove_dir_all(d.state.parent().unwrap());
    }
}
