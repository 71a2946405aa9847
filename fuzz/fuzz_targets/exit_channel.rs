//! Fuzzes the exit control channel: arbitrary bytes go to the frame decoder (in chunks
//! whose size the first byte picks), every frame it yields to a provider (as message 1,
//! twice: the second is a replay) and to a consumer awaiting message 2, and the raw
//! bytes straight in as message 1, message 2 and both payloads. Never a panic; every
//! error says something; what parses is emitted back to the same bytes. The keys and
//! token are the golden vectors' (`docs/protocol.md`), so the corpus's message 1
//! decrypts and reaches the hello, the consumer lookup and the replay window.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portdistrict_exitnode::channel::{
    Frame, FrameDecoder, FrameKind, Hello, Initiator, NoisePublicKey, NoiseSecretKey, ProviderRef,
    Reply, Request, Responder, TokenId,
};
use std::sync::OnceLock;
use std::time::Duration;

const TOKEN: [u8; 16] = [0x70; 16];

fn consumer() -> NoiseSecretKey {
    NoiseSecretKey::from_bytes([0x01; 32])
}

/// The public keys, computed once (X25519 under sanitizer coverage is what limits
/// the executions per second).
fn publics() -> &'static (NoisePublicKey, NoisePublicKey) {
    static KEYS: OnceLock<(NoisePublicKey, NoisePublicKey)> = OnceLock::new();
    KEYS.get_or_init(|| (consumer().public(), provider().public()))
}

fn provider() -> NoiseSecretKey {
    NoiseSecretKey::from_bytes([0x02; 32])
}

/// The provider reads `body` as message 1; when it accepts it, it reads it again and
/// refuses it as a replay.
fn provider_reads(body: &[u8]) {
    let me = publics().0;
    let known = move |k: &NoisePublicKey, id: &TokenId| {
        (*k == me && *id == TokenId::of(&TOKEN)).then_some(TOKEN)
    };
    let mut responder = Responder::new(provider(), 4);
    let frame = Frame {
        kind: FrameKind::Handshake1,
        body,
    };
    match responder.read_hello(frame, &known) {
        Ok(pending) => {
            assert!(!format!("{pending:?}").is_empty());
            let e = responder
                .read_hello(frame, &known)
                .expect_err("a second identical message 1 is a replay");
            assert_eq!(e.refusal().map(|r| r.code()), Some(3));
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// A consumer that sent message 1 reads `frame` as the answer.
fn consumer_reads(frame: Frame<'_>) {
    let mut m1 = Vec::new();
    let provider = ProviderRef {
        key: publics().1,
        token: TOKEN,
    };
    let request = Request {
        wg_key: [0x22; 32],
        proof: [0x33; 32],
    };
    let Ok(init) = Initiator::start(
        &consumer(),
        &provider,
        request,
        Duration::from_secs(1),
        &mut m1,
    ) else {
        panic!("message 1 with valid keys");
    };
    if let Err(e) = init.read_reply(frame) {
        assert!(!e.to_string().is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let mut decoder = FrameDecoder::new();
    'stream: for mut piece in stream.chunks(usize::from(chunk).max(1)) {
        loop {
            match decoder.decode(&mut piece) {
                Ok(Some(frame)) => {
                    assert!(frame.body.len() < portdistrict_exitnode::channel::MAX_FRAME);
                    let body = frame.body.to_vec();
                    let kind = frame.kind;
                    provider_reads(&body);
                    consumer_reads(Frame { kind, body: &body });
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    break 'stream;
                }
            }
        }
    }
    provider_reads(data);
    consumer_reads(Frame {
        kind: FrameKind::Handshake2,
        body: data,
    });
    if let Ok(h) = Hello::parse(data) {
        assert_eq!(h.emit(), data);
    }
    if let Ok(r) = Reply::parse(data) {
        let again = r.emit().expect("a parsed reply is within its bounds");
        assert_eq!(Reply::parse(&again).as_ref(), Ok(&r));
    }
});
