//! Fuzzes the exit-invite decoder: arbitrary text must never panic, and every error
//! must say something (the user sees it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portdistrict_exitnode::invite::{Invite, PREFIX};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for candidate in [text.to_owned(), format!("{PREFIX}{text}")] {
        match Invite::decode(&candidate) {
            Ok(inv) => {
                assert!(!inv.endpoints.is_empty() && inv.endpoints.len() <= 8);
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});
