//! Whole handshakes between an [`Initiator`] and a [`Responder`] in memory.

use super::session::Keys;
use super::*;
use crate::store::Refusal;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

pub(crate) fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const TOKEN: [u8; 16] = [0x70; 16];
const NOW: Duration = Duration::from_secs(1_796_000_000);

struct World {
    consumer: NoiseSecretKey,
    provider: NoiseSecretKey,
    responder: Responder,
}

impl World {
    fn new() -> World {
        let provider = NoiseSecretKey::from_bytes([0x02; 32]);
        World {
            consumer: NoiseSecretKey::from_bytes([0x01; 32]),
            responder: Responder::new(provider.clone(), 16),
            provider,
        }
    }

    fn provider_ref(&self) -> ProviderRef {
        ProviderRef {
            key: self.provider.public(),
            token: TOKEN,
        }
    }

    /// Only the consumer's key with the token's id is known.
    fn consumers(&self) -> impl Fn(&NoisePublicKey, &TokenId) -> Option<[u8; 16]> {
        let me = self.consumer.public();
        move |k: &NoisePublicKey, id: &TokenId| {
            (*k == me && *id == TokenId::of(&TOKEN)).then_some(TOKEN)
        }
    }
}

fn request() -> Request {
    Request {
        wg_key: [0x22; 32],
        proof: [0x33; 32],
    }
}

fn ack() -> Reply {
    Reply {
        answer: Answer::Ack {
            inner_v4: Ipv4Addr::new(100, 64, 0, 2),
            inner_v6: None,
            resolver: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)),
        },
        attestation: Some(Attestation {
            report: vec![0xaa; 1184],
            vcek: vec![0xbb; 1360],
            chain: vec![0xcc; 4602],
        }),
    }
}

/// The one frame in `bytes`.
fn one_frame(bytes: &[u8]) -> (FrameKind, Vec<u8>) {
    let mut d = FrameDecoder::new();
    let mut input = bytes;
    let f = d.decode(&mut input).unwrap().unwrap();
    assert!(input.is_empty());
    (f.kind, f.body.to_vec())
}

fn with_header(kind: FrameKind, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode(kind, body, &mut out).unwrap();
    out
}

fn frame(kind: FrameKind, body: &[u8]) -> Frame<'_> {
    Frame { kind, body }
}

/// A whole handshake; the consumer's view of the reply and both sessions.
fn handshake(w: &mut World, now: Duration) -> (Reply, ConsumerSession, ProviderSession) {
    let mut m1 = Vec::new();
    let init = Initiator::start(&w.consumer, &w.provider_ref(), request(), now, &mut m1).unwrap();
    let (kind, body) = one_frame(&m1);
    let pending = w
        .responder
        .read_hello(frame(kind, &body), &w.consumers())
        .unwrap();
    assert_eq!(pending.consumer(), &w.consumer.public());
    assert_eq!(pending.hello().wg_key, [0x22; 32]);
    assert_eq!(
        pending.wire_request(),
        crate::wire::Message::Request {
            token: TOKEN,
            wg_key: [0x22; 32],
            proof: [0x33; 32]
        }
    );
    let mut m2 = Vec::new();
    let provider = pending.answer(&ack(), &mut m2).unwrap();
    let (kind, body) = one_frame(&m2);
    let (reply, consumer) = init.read_reply(frame(kind, &body)).unwrap();
    (reply, consumer, provider)
}

fn open_c(s: &mut ConsumerSession, wire: &[u8]) -> Result<Vec<u8>, SessionError> {
    let (kind, body) = one_frame(wire);
    let mut out = Vec::new();
    s.open(frame(kind, &body), &mut out).map(|()| out)
}

fn open_p(s: &mut ProviderSession, wire: &[u8]) -> Result<Vec<u8>, SessionError> {
    let (kind, body) = one_frame(wire);
    let mut out = Vec::new();
    s.open(frame(kind, &body), &mut out).map(|()| out)
}

#[test]
fn full_handshake_then_transport_both_ways() {
    let mut w = World::new();
    let (reply, mut consumer, mut provider) = handshake(&mut w, NOW);
    assert_eq!(reply, ack());
    for i in 0..3u8 {
        let mut up = Vec::new();
        consumer.seal(&[i; 40], &mut up).unwrap();
        assert_eq!(open_p(&mut provider, &up).unwrap(), [i; 40]);
        let mut down = Vec::new();
        provider.seal(&[i + 100; 7], &mut down).unwrap();
        assert_eq!(open_c(&mut consumer, &down).unwrap(), [i + 100; 7]);
    }
    // A replayed transport message no longer opens (the nonce moved on).
    let mut up = Vec::new();
    consumer.seal(b"once", &mut up).unwrap();
    assert_eq!(open_p(&mut provider, &up).unwrap(), b"once");
    assert_eq!(open_p(&mut provider, &up), Err(SessionError::Decrypt));
    let mut too_long = Vec::new();
    assert_eq!(
        consumer.seal(&vec![0; MAX_PLAINTEXT + 1], &mut too_long),
        Err(SessionError::TooLong(MAX_PLAINTEXT + 1))
    );
}

#[test]
fn swapped_cipher_states_fail() {
    // The split keys of one handshake, named right and swapped.
    let right = Keys::from_split(([1; 32], [2; 32]));
    let swapped = Keys::from_split(([2; 32], [1; 32]));
    let mut consumer = ConsumerSession::new(&right);
    let mut provider = ProviderSession::new(&swapped);
    let mut up = Vec::new();
    consumer.seal(b"to the provider", &mut up).unwrap();
    assert_eq!(open_p(&mut provider, &up), Err(SessionError::Decrypt));
    let mut down = Vec::new();
    provider.seal(b"to the consumer", &mut down).unwrap();
    assert_eq!(open_c(&mut consumer, &down), Err(SessionError::Decrypt));
    // Each side's own messages do not open on its own receiving side either.
    let mut own = Vec::new();
    consumer.seal(b"loop", &mut own).unwrap();
    assert_eq!(open_c(&mut consumer, &own), Err(SessionError::Decrypt));
}

/// Our named keys agree with snow's own transport state: the first split key is the
/// consumer's sending key.
#[test]
fn named_keys_agree_with_snow() {
    let c = NoiseSecretKey::from_bytes([1; 32]);
    let p = NoiseSecretKey::from_bytes([2; 32]);
    let psk = Psk::of(&TOKEN);
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().unwrap();
    let (cb, pb, ppub) = (c.to_bytes(), p.to_bytes(), p.public().0);
    let mut i = snow::Builder::new(params.clone())
        .prologue(PROLOGUE)
        .unwrap()
        .local_private_key(&cb)
        .unwrap()
        .remote_public_key(&ppub)
        .unwrap()
        .psk(2, &psk.0)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut r = snow::Builder::new(params)
        .prologue(PROLOGUE)
        .unwrap()
        .local_private_key(&pb)
        .unwrap()
        .psk(2, &psk.0)
        .unwrap()
        .build_responder()
        .unwrap();
    let (mut a, mut b) = (vec![0; 1024], vec![0; 1024]);
    let n = i.write_message(b"", &mut a).unwrap();
    r.read_message(&a[..n], &mut b).unwrap();
    let n = r.write_message(b"", &mut a).unwrap();
    i.read_message(&a[..n], &mut b).unwrap();
    let mut consumer = ConsumerSession::new(&Keys::from_split(i.dangerously_get_raw_split()));
    let mut snow_provider = r.into_transport_mode().unwrap();
    let mut up = Vec::new();
    consumer.seal(b"hello snow", &mut up).unwrap();
    let (_, body) = one_frame(&up);
    let n = snow_provider.read_message(&body, &mut b).unwrap();
    assert_eq!(&b[..n], b"hello snow");
    let n = snow_provider.write_message(b"hello us", &mut a).unwrap();
    let mut plain = Vec::new();
    consumer
        .open(frame(FrameKind::Transport, &a[..n]), &mut plain)
        .unwrap();
    assert_eq!(plain, b"hello us");
}

#[test]
fn wrong_server_key_is_refused_and_the_consumer_reads_why() {
    let mut w = World::new();
    let mut m1 = Vec::new();
    let wrong = ProviderRef {
        key: NoiseSecretKey::from_bytes([9; 32]).public(),
        token: TOKEN,
    };
    let init = Initiator::start(&w.consumer, &wrong, request(), NOW, &mut m1).unwrap();
    let (kind, body) = one_frame(&m1);
    let err = w
        .responder
        .read_hello(frame(kind, &body), &w.consumers())
        .unwrap_err();
    assert_eq!(err, ResponderError::Undecryptable);
    let mut refusal = Vec::new();
    err.refusal().unwrap().encode(&mut refusal);
    assert_eq!(refusal, [0, 2, 4, 1]);
    let (kind, body) = one_frame(&refusal);
    assert_eq!(
        init.read_reply(frame(kind, &body)).unwrap_err(),
        InitiatorError::Refused(RefusalCode::WrongServerKey)
    );
}

fn refused(w: &mut World, m1: &[u8]) -> ResponderError {
    let (kind, body) = one_frame(m1);
    w.responder
        .read_hello(frame(kind, &body), &w.consumers())
        .unwrap_err()
}

#[test]
fn unknown_consumer_and_unknown_invite_are_refused() {
    let mut w = World::new();
    let stranger = NoiseSecretKey::from_bytes([7; 32]);
    let mut m1 = Vec::new();
    let init = Initiator::start(&stranger, &w.provider_ref(), request(), NOW, &mut m1).unwrap();
    let err = refused(&mut w, &m1);
    assert_eq!(err, ResponderError::UnknownConsumer);
    let mut r = Vec::new();
    err.refusal().unwrap().encode(&mut r);
    let (kind, body) = one_frame(&r);
    assert_eq!(
        init.read_reply(frame(kind, &body)).unwrap_err(),
        InitiatorError::Refused(RefusalCode::UnknownConsumer)
    );
    let other_invite = ProviderRef {
        key: w.provider.public(),
        token: [0x71; 16],
    };
    let mut m1 = Vec::new();
    Initiator::start(&w.consumer, &other_invite, request(), NOW, &mut m1).unwrap();
    assert_eq!(refused(&mut w, &m1), ResponderError::UnknownConsumer);
}

#[test]
fn replayed_or_older_message_1_is_refused() {
    let mut w = World::new();
    let mut m1 = Vec::new();
    Initiator::start(&w.consumer, &w.provider_ref(), request(), NOW, &mut m1).unwrap();
    let (kind, body) = one_frame(&m1);
    w.responder
        .read_hello(frame(kind, &body), &w.consumers())
        .unwrap();
    assert_eq!(refused(&mut w, &m1), ResponderError::Replayed);
    let mut older = Vec::new();
    Initiator::start(
        &w.consumer,
        &w.provider_ref(),
        request(),
        NOW - Duration::from_nanos(1),
        &mut older,
    )
    .unwrap();
    let err = refused(&mut w, &older);
    assert_eq!(err.refusal(), Some(RefusalCode::Replayed));
    // A newer one goes through.
    let (reply, _, _) = handshake(&mut w, NOW + Duration::from_nanos(1));
    assert_eq!(reply, ack());
}

#[test]
fn wrong_psk_fails_at_the_consumer() {
    let mut w = World::new();
    let mut m1 = Vec::new();
    let init = Initiator::start(&w.consumer, &w.provider_ref(), request(), NOW, &mut m1).unwrap();
    let (kind, body) = one_frame(&m1);
    // The provider holds another token for this invite id.
    let pending = w
        .responder
        .read_hello(frame(kind, &body), &|_: &NoisePublicKey, _: &TokenId| {
            Some([0x71; 16])
        })
        .unwrap();
    let mut m2 = Vec::new();
    pending.answer(&ack(), &mut m2).unwrap();
    let (kind, body) = one_frame(&m2);
    assert_eq!(
        init.read_reply(frame(kind, &body)).unwrap_err(),
        InitiatorError::Reply
    );
}

#[test]
fn tampered_and_unexpected_frames_are_named() {
    let mut w = World::new();
    let mut m1 = Vec::new();
    let init = Initiator::start(&w.consumer, &w.provider_ref(), request(), NOW, &mut m1).unwrap();
    let (kind, body) = one_frame(&m1);
    for i in (0..body.len()).step_by(7) {
        let mut bad = body.clone();
        bad[i] ^= 1;
        let err = w
            .responder
            .read_hello(frame(kind, &bad), &w.consumers())
            .unwrap_err();
        assert_eq!(err, ResponderError::Undecryptable, "byte {i}");
    }
    assert_eq!(
        w.responder
            .read_hello(frame(FrameKind::Transport, &body), &w.consumers())
            .unwrap_err()
            .refusal(),
        Some(RefusalCode::Malformed)
    );
    assert_eq!(
        refused(&mut w, &[0, 1, 1]),
        ResponderError::Undecryptable,
        "an empty message 1"
    );
    let pending = w
        .responder
        .read_hello(frame(kind, &body), &w.consumers())
        .unwrap();
    let mut m2 = Vec::new();
    pending.answer(&ack(), &mut m2).unwrap();
    let (kind2, mut body2) = one_frame(&m2);
    body2[40] ^= 0x80;
    assert_eq!(
        init.read_reply(frame(kind2, &body2)).unwrap_err(),
        InitiatorError::Reply
    );
    // Truncated message 1 and message 2 are named, not a panic.
    for n in [0, 1, 31, 32, 79, 80, body.len() - 1] {
        assert_eq!(
            refused(&mut w, &with_header(FrameKind::Handshake1, &body[..n])),
            ResponderError::Undecryptable,
            "message 1 cut at {n}"
        );
    }
    for n in [0, 1, 31, 32, 47, 48, body2.len() - 1] {
        let mut m1 = Vec::new();
        let init =
            Initiator::start(&w.consumer, &w.provider_ref(), request(), NOW, &mut m1).unwrap();
        assert_eq!(
            init.read_reply(frame(FrameKind::Handshake2, &body2[..n]))
                .unwrap_err(),
            InitiatorError::Reply,
            "message 2 cut at {n}"
        );
    }
    let mut m1 = Vec::new();
    let init = Initiator::start(&w.consumer, &w.provider_ref(), request(), NOW, &mut m1).unwrap();
    assert_eq!(
        init.read_reply(frame(FrameKind::Refusal, &[200]))
            .unwrap_err(),
        InitiatorError::UnknownRefusal(200)
    );
}

#[test]
fn a_nak_reaches_the_consumer_authenticated() {
    let mut w = World::new();
    let mut m1 = Vec::new();
    let init = Initiator::start(&w.consumer, &w.provider_ref(), request(), NOW, &mut m1).unwrap();
    let (kind, body) = one_frame(&m1);
    let pending = w
        .responder
        .read_hello(frame(kind, &body), &w.consumers())
        .unwrap();
    let nak = Reply {
        answer: Answer::Nak(Refusal::UsedUp),
        attestation: None,
    };
    let mut m2 = Vec::new();
    pending.answer(&nak, &mut m2).unwrap();
    let (kind, body) = one_frame(&m2);
    assert_eq!(init.read_reply(frame(kind, &body)).unwrap().0, nak);
}

/// Fixed keys, ephemerals, token and time: the exact bytes of both messages
/// (`docs/protocol.md`, "Exit control channel"; the fuzz corpus holds them too).
#[test]
fn golden_handshake() {
    let mut w = World::new();
    w.responder.fix_ephemeral([0x04; 32]);
    let mut m1 = Vec::new();
    let init = Initiator::start_with(
        &w.consumer,
        &w.provider_ref(),
        request(),
        NOW,
        Some(&[0x03; 32]),
        &mut m1,
    )
    .unwrap();
    let (kind, body) = one_frame(&m1);
    let pending = w
        .responder
        .read_hello(frame(kind, &body), &w.consumers())
        .unwrap();
    let reply = Reply {
        answer: Answer::Ack {
            inner_v4: Ipv4Addr::new(100, 64, 0, 2),
            inner_v6: None,
            resolver: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)),
        },
        attestation: Some(Attestation {
            report: vec![0xaa; 4],
            vcek: vec![0xbb; 2],
            chain: vec![0xcc; 1],
        }),
    };
    let mut m2 = Vec::new();
    let mut provider = pending.answer(&reply, &mut m2).unwrap();
    if std::env::var_os("PD_PRINT_GOLDEN").is_some() {
        println!("m1 {}\nm2 {}", hex(&m1), hex(&m2));
    }
    assert_eq!(hex(&m1), GOLDEN_M1.split_whitespace().collect::<String>());
    assert_eq!(hex(&m2), GOLDEN_M2.split_whitespace().collect::<String>());
    let (kind, body) = one_frame(&m2);
    let (got, mut consumer) = init.read_reply(frame(kind, &body)).unwrap();
    assert_eq!(got, reply);
    let mut t = Vec::new();
    consumer.seal(b"ping", &mut t).unwrap();
    assert_eq!(open_p(&mut provider, &t).unwrap(), b"ping");
}

/// Length, kind, e, encrypted s, encrypted hello.
const GOLDEN_M1: &str = "
    00bd01
    5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22
    0a26599fb2188bb723276fc173af67616c817fc32fd04d686d87ec152fac10ee
    fade337ad50c568710f58c88db135612
    57fb46b3a7c453e9bd273ed6e4e4c3cfb2f4056164738cf16abced50308f33ac
    33e704c0b76a78e747e815b6bf61baa1427c4cdcb380c05b595882679502ca20
    e951640b2cac6ecd3311ac91f60e4636adf9a7c970ed8e4978c99d9fa77baa36
    75157d0ece92510f861d9efe";
/// Length, kind, e, encrypted reply.
const GOLDEN_M2: &str = "
    005a02
    ac01b2209e86354fb853237b5de0f4fab13c7fcbf433a61c019369617fecf10b
    2bda6fcda695e418b1e35584c1ba4f31a8c0a498886580912278532a5e68d8de
    c59eddc129e6e3e8e703c7fd79140126705cd14c9d550f06b4";

/// The golden handshake's block in docs/protocol.md.
fn golden_text() -> String {
    let key = |b: u8| NoiseSecretKey::from_bytes([b; 32]).public().0;
    let mut g = format!(
        "consumer Noise public key  {}\nprovider Noise public key  {}\ntoken id                   {}\nPSK                        {}\n",
        hex(&key(1)),
        hex(&key(2)),
        hex(&TokenId::of(&TOKEN).0),
        hex(&Psk::of(&TOKEN).0),
    );
    for (name, text) in [("message 1", GOLDEN_M1), ("message 2", GOLDEN_M2)] {
        g.push_str(name);
        g.push('\n');
        for line in text.split_whitespace() {
            g.push_str("  ");
            g.push_str(line);
            g.push('\n');
        }
    }
    g
}

#[test]
fn docs_protocol_md_has_the_golden_handshake() {
    crate::golden_doc::check("channel-golden", &golden_text());
}

/// Both ends through their own frame decoders, the stream cut into pieces of every
/// size from 1 to 9 bytes: handshake, then transport both ways.
#[test]
fn over_a_byte_stream_in_small_pieces() {
    for piece in 1..10 {
        let mut w = World::new();
        let (mut to_provider, mut to_consumer) = (Vec::new(), Vec::new());
        let init = Initiator::start(
            &w.consumer,
            &w.provider_ref(),
            request(),
            NOW + Duration::from_secs(piece as u64),
            &mut to_provider,
        )
        .unwrap();
        let (mut at_provider, mut at_consumer) = (FrameDecoder::new(), FrameDecoder::new());
        let mut provider = None;
        for mut chunk in to_provider.chunks(piece) {
            while let Some(f) = at_provider.decode(&mut chunk).unwrap() {
                let pending = w.responder.read_hello(f, &w.consumers()).unwrap();
                provider = Some(pending.answer(&ack(), &mut to_consumer).unwrap());
            }
        }
        let mut provider = provider.expect("message 1 arrived");
        provider.seal(b"after the reply", &mut to_consumer).unwrap();
        let (mut init, mut consumer, mut got) = (Some(init), None, Vec::new());
        for mut chunk in to_consumer.chunks(piece) {
            while let Some(f) = at_consumer.decode(&mut chunk).unwrap() {
                match (init.take(), consumer.as_mut()) {
                    (Some(i), _) => {
                        let (reply, s) = i.read_reply(f).unwrap();
                        assert_eq!(reply, ack());
                        consumer = Some(s);
                    }
                    (None, Some(s)) => s.open(f, &mut got).unwrap(),
                    (None, None) => unreachable!(),
                }
            }
        }
        assert_eq!(got, b"after the reply", "pieces of {piece}");
    }
}
