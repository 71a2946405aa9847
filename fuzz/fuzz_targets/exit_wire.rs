//! Fuzzes the exit negotiation parser: arbitrary datagrams never panic, and whatever
//! parses is emitted back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portdistrict_exitnode::wire::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let again = m.emit();
        assert_eq!(Message::parse(&again), Ok(m.clone()));
        // Acks without IPv6 carry zeros there; everything else is byte-exact.
        if !matches!(m, Message::Ack { inner_v6: None, .. }) {
            assert_eq!(again, data);
        }
    }
});
