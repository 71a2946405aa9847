//! What a request does: the same library call the CLI makes offline, so that its
//! output is the same whether the daemon or the CLI ran it.

use super::protocol::{Answer, CtlError, Request};
use super::Daemon;
use crate::node::{Secret, SecretOptions};
use crate::{device, exit, node, tunnels, Dirs};
use std::time::Duration;

/// Runs `request` against the stores under `dirs` as `daemon` serves it (the daemon
/// in its loop, or the CLI when no daemon runs); returns the command's output.
/// `secret` is where `device roster add` gets the identity's seed: the daemon's
/// ([`Secret::Held`]) or the CLI's options ([`Secret::Unlock`]).
pub fn run(
    dirs: &Dirs,
    daemon: Daemon,
    secret: Secret<'_>,
    request: &Request,
) -> anyhow::Result<String> {
    match (daemon, request) {
        (
            Daemon::Exit,
            Request::ExitInvite {
                endpoints,
                expires_secs,
                uses,
                pin,
                format,
                qr,
            },
        ) => exit::invite(
            dirs,
            &exit::InviteOptions {
                endpoints: endpoints.clone(),
                expires: Duration::from_secs(*expires_secs),
                uses: *uses,
                pin: exit::InviteOptions::pin_of(pin.as_ref())?,
                format: format
                    .as_deref()
                    .map_or(Ok(exit::InviteFormat::Line), exit::InviteFormat::parse)?,
                qr: *qr,
            },
        ),
        (Daemon::Exit, Request::ExitList { json }) => exit::list(dirs, *json),
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
        (Daemon::Control, Request::RosterAdd { line }) => device::roster_add(dirs, line, secret),
        _ => Err(CtlError::Unsupported {
            daemon: daemon.name().to_owned(),
        }
        .into()),
    }
}

/// [`run`] as the daemon answers it.
pub fn handle(dirs: &Dirs, daemon: Daemon, secret: Secret<'_>, request: &Request) -> Answer {
    match run(dirs, daemon, secret, request) {
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
    via_daemon_unlocking(dirs, daemon, request, &SecretOptions::default())
}

/// [`via_daemon`] for a request that signs with the identity's seed: the running
/// daemon signs with the one it holds (`o` is not used then); offline the seed is
/// unlocked here with `o`.
pub fn via_daemon_unlocking(
    dirs: &Dirs,
    daemon: Daemon,
    request: &Request,
    o: &SecretOptions,
) -> anyhow::Result<String> {
    let envelope = super::Envelope {
        state_dir: super::state_dir(dirs),
        request: request.clone(),
    };
    match super::client::call(&daemon.socket(dirs), &envelope)? {
        super::client::Reached::NoDaemon
        | super::client::Reached::Answer(Answer::Refused {
            error: CtlError::OtherState { .. },
        }) => run(dirs, daemon, Secret::Unlock(o), request),
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
            pin: None,
            format: None,
            qr: false,
        }
    }

    /// Answers `ctl`'s requests from a thread, signing with `seed`, until the
    /// returned flag is set; the thread returns how many changed the store.
    fn serving(
        ctl: Control,
        seed: Option<crate::identity::Seed>,
    ) -> (Arc<AtomicBool>, std::thread::JoinHandle<u32>) {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let t = std::thread::spawn(move || {
            let mut changes = 0;
            while !s.load(Ordering::Relaxed) {
                changes += u32::from(ctl.poll_holding(seed.as_ref()));
                std::thread::sleep(Duration::from_millis(10));
            }
            changes
        });
        (stop, t)
    }

    #[test]
    fn roster_add_is_signed_by_the_daemon_that_holds_the_seed() {
        let d = dirs("roster");
        let key = SecretOptions {
            passphrase_file: None,
            key_file: Some(d.state.join("seed.key")),
        };
        node::init(&d, "alice.example", &key, 1).unwrap();
        device::init(&d, "laptop", &key).unwrap();
        let add = |name: &str| {
            let phone = Dirs {
                state: d.state.with_file_name(format!("{name}-state")),
                run: d.run.with_file_name(format!("{name}-run")),
            };
            let line = device::request(&phone, name, "alice.example").unwrap();
            Request::RosterAdd { line }
        };
        let names = || -> Vec<String> {
            device::roster(&d)
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect()
        };
        // Offline: unlocked with the CLI's key file.
        let offline = via_daemon_unlocking(&d, Daemon::Control, &add("phone"), &key).unwrap();
        assert!(offline.starts_with("portdistrict-id1:"), "{offline}");
        assert_eq!(names(), ["laptop", "phone"]);
        // Through a daemon holding the seed: the CLI's options are not needed, the
        // output is the same, the roster gets the signed delegation.
        let (rec, seed) = node::unlock(&d, &key).unwrap();
        let ctl = Control::bind(&d, Daemon::Control, Access::default()).unwrap();
        let (stop, t) = serving(ctl, Some(seed));
        let none = SecretOptions::default();
        let tablet = add("tablet");
        let through = via_daemon_unlocking(&d, Daemon::Control, &tablet, &none).unwrap();
        assert_eq!(through, offline);
        assert_eq!(names(), ["laptop", "phone", "tablet"]);
        device::roster(&d).unwrap()[2]
            .delegation()
            .unwrap()
            .verify(&rec.identity.master, "alice.example")
            .expect("a delegation signed with the identity's master key");
        // Refusals come back as the offline error, and change nothing.
        let again = via_daemon_unlocking(&d, Daemon::Control, &tablet, &none);
        assert_eq!(
            format!("{:#}", again.unwrap_err()),
            "the roster already has a device \"tablet\""
        );
        stop.store(true, Ordering::Relaxed);
        assert_eq!(
            t.join().unwrap(),
            1,
            "only the first add changed the roster"
        );
        // A daemon without the seed (a device that joined) refuses as the CLI does
        // there, and writes nothing.
        let ctl = Control::bind(&d, Daemon::Control, Access::default()).unwrap();
        let (stop, t) = serving(ctl, None);
        let refused = via_daemon_unlocking(&d, Daemon::Control, &add("watch"), &key);
        let message = format!("{:#}", refused.unwrap_err());
        assert!(
            message.starts_with("this machine holds only a device of alice.example"),
            "{message}"
        );
        stop.store(true, Ordering::Relaxed);
        assert_eq!(t.join().unwrap(), 0);
        assert_eq!(names(), ["laptop", "phone", "tablet"]);
        let _ = std::fs::remove_dir_all(d.state.parent().unwrap());
    }

    #[test]
    fn offline_and_through_the_daemon_print_the_same() {
        let d = dirs("same");
        // No daemon: the CLI runs it here.
        let line = via_daemon(&d, Daemon::Exit, &invite()).unwrap();
        assert!(line.starts_with("portdistrict-invite1:"), "{line}");
        let offline_list =
            via_daemon(&d, Daemon::Exit, &Request::ExitList { json: false }).unwrap();
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
            via_daemon(&d, Daemon::Exit, &Request::ExitList { json: false }).unwrap(),
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
        let mine = via_daemon(&d, Daemon::Exit, &Request::ExitList { json: false }).unwrap();
        assert!(
            mine.starts_with("invites: 2\n"),
            "another state's invite: {mine}"
        );
        let theirs = via_daemon(&other, Daemon::Exit, &Request::ExitList { json: false }).unwrap();
        assert!(theirs.starts_with("invites: 1\n"), "{theirs}");
        let e = via_daemon(&d, Daemon::Control, &Request::ExitList { json: false });
        assert!(e.is_err(), "portdistrictd does not serve exit commands");
        stop.store(true, Ordering::Relaxed);
        assert_eq!(
            changes.join().unwrap(),
            1,
            "only the invite changed the store"
        );
        let list = via_daemon(&d, Daemon::Exit, &Request::ExitList { json: false }).unwrap();
        assert!(list.starts_with("invites: 2\n"), "{list}");
        let _ = std::fs::remove_dir_all(d.state.parent().unwrap());
    }
}
