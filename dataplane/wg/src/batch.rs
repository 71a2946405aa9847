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

/// Seals data messages laid out by [`crate::session::Session::prepare_seal`] in place,
/// all under `key` (as [`seal_prepared`] does one by one). With `group` false, every
/// message goes the one-by-one way. Returns how many the group code sealed.
pub fn seal_prepared_many(key: &AeadKey, msgs: &mut [&mut [u8]], group: bool) -> usize {
    let mut grouped_total = 0;
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
            grouped_total += n;
        } else {
            for msg in run.iter_mut() {
                seal_prepared(key, msg);
            }
        }
        at += n;
    }
    grouped_total
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
            seal_prepared(key, m);
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
        let grouped = seal_prepared_many(&key, &mut refs, true);
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
        seal_prepared_many(&key, &mut refs, true);
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
}
