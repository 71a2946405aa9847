//! Sealing and opening many transport data messages under one key, as the dataplane's
//! batches hold them (a GSO send, a GRO receive: usually dozens of equal-sized
//! messages of one session).
//!
//! Each run of consecutive messages of equal length, [`MIN_GROUP`] or more, goes to
//! the AVX-512 group code of `portdistrict-aead` in groups of up to
//! [`portdistrict_aead::GROUP`]; everything else — shorter runs, the odd last message
//! of a batch, CPUs without AVX-512 IFMA — is sealed or opened one message at a time
//! (ring). Both give the same bytes: the group code is tested against ring.

use crate::crypto::AeadKey;
use crate::session::{open_with, seal_prepared, SessionError};
use crate::wire::{Data, DATA_HEADER_LEN, DATA_MIN_LEN};
use portdistrict_aead::{Message, GROUP};

/// Shortest run worth the group code: below it, ring's one-message code is faster
/// (measured at 1420 bytes: groups of 2 seal at 1.6 GB/s, ring 2.0, groups of 4 2.3).
pub const MIN_GROUP: usize = 3;

/// Whether `msg` can be a member of a group: a data header with room for the tag.
fn groupable(msg: &[u8]) -> bool {
    msg.len() >= DATA_MIN_LEN && Data::new_checked(msg).is_ok()
}

/// Length of the run of groupable messages of `msgs[0]`'s length at the start of
/// `msgs`, at most `GROUP`.
fn run_len(msgs: &[&mut [u8]]) -> usize {
    let Some(first) = msgs.first() else {
        return 0;
    };
    if !groupable(first) {
        return 1;
    }
    let len = first.len();
    1 + msgs[1..]
        .iter()
        .take(GROUP - 1)
        .take_while(|m| m.len() == len && groupable(m))
        .count()
}

/// The group-code view of a run: counters from the headers, buffers after them.
fn members<'a>(run: &'a mut [&mut [u8]], out: &mut [Message<'a>; GROUP]) -> usize {
    let mut n = 0;
    for (slot, msg) in out.iter_mut().zip(run.iter_mut()) {
        let counter = Data::new_checked(&**msg).map(|d| d.counter()).unwrap_or(0);
        *slot = Message {
            counter,
            buf: &mut msg[DATA_HEADER_LEN..],
        };
        n += 1;
    }
    n
}

/// What [`seal_prepared_many`] did with a batch.
#[must_use = "the messages counted in `dropped` must not be sent"]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// Messages the group code sealed.
    pub grouped: usize,
    /// Messages that could not be sealed: each was wiped and its slice in `msgs`
    /// replaced by an empty one (a hard drop; see [`seal_prepared`]).
    pub dropped: usize,
}

/// Seals data messages laid out by [`crate::session::Session::prepare_seal`] in place,
/// all under `key` (as [`seal_prepared`] does one by one). With `group` false, every
/// message goes the one-by-one way.
///
/// A message that cannot be sealed (not a prepared data message) is a hard drop: it
/// is wiped and `msgs[i]` becomes an empty slice, so the caller can find it (a
/// prepared message is never empty) and has nothing left to send; counted in
/// [`Sealed::dropped`].
pub fn seal_prepared_many(key: &AeadKey, msgs: &mut [&mut [u8]], group: bool) -> Sealed {
    let mut out = Sealed::default();
    let mut at = 0;
    while at < msgs.len() {
        let n = run_len(&msgs[at..]);
        let run = &mut msgs[at..at + n];
        let grouped = group && n >= MIN_GROUP && {
            let mut members_of: [Message<'_>; GROUP] = std::array::from_fn(|_| Message {
                counter: 0,
                buf: Default::default(),
            });
            let k = members(run, &mut members_of);
            key.seal_group(&mut members_of[..k])
        };
        if grouped {
            out.grouped += n;
        } else {
            for msg in run.iter_mut() {
                if seal_prepared(key, msg).is_err() {
                    *msg = Default::default();
                    out.dropped += 1;
                }
            }
        }
        at += n;
    }
    out
}

/// Opens data messages in place, all under `key`: `results[i]` is what
/// [`open_with`] would return for `msgs[i]` (the plaintext length, or
/// [`SessionError::Decrypt`]). `results` must be as long as `msgs`. With `group`
/// false, every message goes the one-by-one way. Returns how many the group code
/// opened (or found forged).
pub fn open_many(
    key: &AeadKey,
    msgs: &mut [&mut [u8]],
    results: &mut [Result<usize, SessionError>],
    group: bool,
) -> usize {
    assert_eq!(msgs.len(), results.len(), "one result per message");
    let mut grouped_total = 0;
    let mut at = 0;
    while at < msgs.len() {
        let n = run_len(&msgs[at..]);
        let run = &mut msgs[at..at + n];
        let mut ok = [false; GROUP];
        let grouped = group && n >= MIN_GROUP && {
            let mut members_of: [Message<'_>; GROUP] = std::array::from_fn(|_| Message {
                counter: 0,
                buf: Default::default(),
            });
            let k = members(run, &mut members_of);
            key.open_group(&mut members_of[..k], &mut ok)
        };
        if grouped {
            grouped_total += n;
        }
        for (i, msg) in run.iter_mut().enumerate() {
            results[at + i] = if grouped {
                if ok[i] {
                    Ok(msg.len() - DATA_MIN_LEN)
                } else {
                    Err(SessionError::Decrypt)
                }
            } else {
                open_with(key, msg)
            };
        }
        at += n;
    }
    grouped_total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count` data messages of `len` plaintext bytes with counters from `first`.
    fn messages(count: usize, len: usize, first: u64) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| {
                let mut m = vec![0u8; DATA_MIN_LEN + len];
                m[0] = 4;
                m[4..8].copy_from_slice(&7u32.to_le_bytes());
                m[8..16].copy_from_slice(&(first + i as u64).to_le_bytes());
                for (j, b) in m[DATA_HEADER_LEN..DATA_HEADER_LEN + len]
                    .iter_mut()
                    .enumerate()
                {
                    *b = (i * 31 + j) as u8;
                }
                m
            })
            .collect()
    }

    fn one_by_one_seal(key: &AeadKey, msgs: &mut [Vec<u8>]) {
        for m in msgs {
            seal_prepared(key, m).unwrap();
        }
    }

    #[test]
    fn many_equals_one_by_one_for_mixed_batches() {
        let key = AeadKey::new(&[3u8; 32]);
        // Runs of every shape: long equal runs, a short last one, single odd lengths,
        // a keepalive, a run longer than a group.
        let shape: &[(usize, usize)] =
            &[(40, 1424), (1, 700), (2, 64), (1, 0), (5, 1424), (17, 96)];
        let mut plain = Vec::new();
        let mut counter = 0;
        for &(count, len) in shape {
            plain.extend(messages(count, len, counter));
            counter += count as u64;
        }
        let mut expected = plain.clone();
        one_by_one_seal(&key, &mut expected);
        let mut got = plain.clone();
        let mut refs: Vec<&mut [u8]> = got.iter_mut().map(|m| m.as_mut_slice()).collect();
        let sealed = seal_prepared_many(&key, &mut refs, true);
        assert_eq!(sealed.dropped, 0);
        let grouped = sealed.grouped;
        assert_eq!(got, expected);
        if portdistrict_aead::available() {
            assert_eq!(
                grouped,
                40 + 5 + 16,
                "runs of 3 or more; the 17th of 17 is alone"
            );
        }

        // Open them back, with a few tampered.
        let mut sealed = expected.clone();
        for i in [3, 41, 50, 60] {
            let last = sealed[i].len() - 1;
            sealed[i][last] ^= 1;
        }
        let mut refs: Vec<&mut [u8]> = sealed.iter_mut().map(|m| m.as_mut_slice()).collect();
        let mut results = vec![Err(SessionError::Expired); refs.len()];
        open_many(&key, &mut refs, &mut results, true);
        for (i, r) in results.iter().enumerate() {
            if [3, 41, 50, 60].contains(&i) {
                assert_eq!(*r, Err(SessionError::Decrypt), "message {i}");
            } else {
                let len = plain[i].len() - DATA_MIN_LEN;
                assert_eq!(*r, Ok(len), "message {i}");
                assert_eq!(
                    sealed[i][DATA_HEADER_LEN..DATA_HEADER_LEN + len],
                    plain[i][DATA_HEADER_LEN..DATA_HEADER_LEN + len],
                    "message {i}"
                );
            }
        }
    }

    #[test]
    fn malformed_members_fail_alone() {
        let key = AeadKey::new(&[4u8; 32]);
        let mut msgs = messages(6, 128, 0);
        let mut refs: Vec<&mut [u8]> = msgs.iter_mut().map(|m| m.as_mut_slice()).collect();
        assert_eq!(seal_prepared_many(&key, &mut refs, true).dropped, 0);
        msgs[2][0] = 9; // not a data message any more
        msgs.push(vec![4u8; 10]); // too short for a header and a tag
        let mut refs: Vec<&mut [u8]> = msgs.iter_mut().map(|m| m.as_mut_slice()).collect();
        let mut results = vec![Ok(0); refs.len()];
        open_many(&key, &mut refs, &mut results, true);
        let failed: Vec<usize> = (0..results.len())
            .filter(|&i| results[i].is_err())
            .collect();
        assert_eq!(failed, vec![2, 6]);
    }

    /// A batch member that is not a prepared data message is dropped, never sent in
    /// plaintext: wiped, its slice emptied, counted; its neighbours (in a group run
    /// and alone) are sealed as usual. Before, it was left as it was and sent.
    #[test]
    fn unsealable_members_are_dropped_not_sent() {
        let key = AeadKey::new(&[6u8; 32]);
        for group in [true, false] {
            // Positions: inside what would be a run of equal lengths, the first, the
            // last; and a too-short message of its own.
            let mut msgs = messages(9, 128, 0);
            let mut expected = msgs.clone();
            for bad in [0, 4, 8] {
                msgs[bad][0] = 1; // a handshake type: no data header
            }
            msgs.push(vec![
                4, 0, 0, 0, 9, 9, 9, 9, 0, 0, 0, 0, 0, 0, 0, 0, b's', b'e',
            ]);
            one_by_one_seal(&key, &mut expected);
            let mut refs: Vec<&mut [u8]> = msgs.iter_mut().map(|m| m.as_mut_slice()).collect();
            let sealed = seal_prepared_many(&key, &mut refs, group);
            assert_eq!(sealed.dropped, 4, "group {group}");
            let empty: Vec<usize> = (0..refs.len()).filter(|&i| refs[i].is_empty()).collect();
            assert_eq!(empty, vec![0, 4, 8, 9], "group {group}");
            for i in [0, 4, 8, 9] {
                assert!(
                    msgs[i].iter().all(|&b| b == 0),
                    "group {group}: {i} not wiped"
                );
            }
            for i in [1, 2, 3, 5, 6, 7] {
                assert_eq!(msgs[i], expected[i], "group {group}: message {i}");
            }
        }
    }
}
