//! Fuzzes the wire-message views: classification and every `new_checked`
//! must never panic, exactly the view of the classified type must accept the
//! datagram, and every getter of an accepted view must be callable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portdistrict_wg::wire::{message_type, CookieReply, Data, Initiation, MessageType, Response};

fuzz_target!(|data: &[u8]| {
    let kind = message_type(data).ok();
    let accepted = [
        initiation(data).then_some(MessageType::Initiation),
        response(data).then_some(MessageType::Response),
        cookie_reply(data).then_some(MessageType::CookieReply),
        transport(data).then_some(MessageType::Data),
    ];
    let accepted: Vec<MessageType> = accepted.into_iter().flatten().collect();
    assert_eq!(accepted, kind.into_iter().collect::<Vec<_>>(), "{data:?}");
});

fn initiation(data: &[u8]) -> bool {
    let Ok(msg) = Initiation::new_checked(data) else {
        return false;
    };
    let _ = (msg.sender(), msg.ephemeral(), msg.encrypted_static());
    let _ = (msg.encrypted_timestamp(), msg.mac1(), msg.mac2());
    assert_eq!(msg.mac1_covered().len() + 32, data.len());
    assert_eq!(msg.mac2_covered().len() + 16, data.len());
    assert_eq!(msg.as_bytes(), data);
    true
}

fn response(data: &[u8]) -> bool {
    let Ok(msg) = Response::new_checked(data) else {
        return false;
    };
    let _ = (msg.sender(), msg.receiver(), msg.ephemeral());
    let _ = (msg.encrypted_nothing(), msg.mac1(), msg.mac2());
    assert_eq!(msg.mac1_covered().len() + 32, data.len());
    assert_eq!(msg.mac2_covered().len() + 16, data.len());
    true
}

fn cookie_reply(data: &[u8]) -> bool {
    let Ok(msg) = CookieReply::new_checked(data) else {
        return false;
    };
    let _ = (msg.receiver(), msg.nonce(), msg.encrypted_cookie());
    true
}

fn transport(data: &[u8]) -> bool {
    let Ok(msg) = Data::new_checked(data) else {
        return false;
    };
    let _ = (msg.receiver(), msg.counter());
    assert_eq!(msg.payload().len() + 16, data.len());
    // Build the same message in a fresh buffer through the setters.
    let mut copy = Data::new_unchecked(vec![0u8; data.len()]);
    copy.fill_header();
    copy.set_receiver(msg.receiver());
    copy.set_counter(msg.counter());
    copy.payload_mut().copy_from_slice(msg.payload());
    assert_eq!(copy.as_bytes(), data);
    true
}
