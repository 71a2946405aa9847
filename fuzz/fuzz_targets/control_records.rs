//! Fuzzes what the control plane reads from others: identity bundles, TXT chunks,
//! record envelopes and signed records. Nothing may panic; every error says something.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portdistrict_control::identity::{Bundle, Seed, BUNDLE_PREFIX};
use portdistrict_control::records::{
    from_txt, open, DeviceKeys, Delegation, DeviceRecord, MasterRecord,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for candidate in [text.to_owned(), format!("{BUNDLE_PREFIX}{text}")] {
            if let Err(e) = Bundle::decode(&candidate) {
                assert!(!e.to_string().is_empty());
            }
        }
        let records: Vec<Vec<String>> = text
            .split('\n')
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect();
        if let Err(e) = from_txt(&records) {
            assert!(!e.to_string().is_empty());
        }
    }
    let reader = Seed::from_bytes([2; 32]).ecdh();
    if let Err(e) = open(data, "_portdistrict.alice.pd.test", &reader) {
        assert!(!e.to_string().is_empty());
    }
    let alice = Seed::from_bytes([1; 32]);
    let master = alice.public("alice.pd.test").expect("valid").master;
    let laptop = DeviceKeys::from_seed([11; 32]);
    let roster = MasterRecord {
        namespace: "alice.pd.test".into(),
        issued: 0,
        expires: u64::MAX,
        devices: vec![Delegation::sign(&alice.master(), "alice.pd.test", laptop.public("laptop"))],
    };
    let _ = MasterRecord::verify(data, "_portdistrict.alice.pd.test", &master, 1);
    let _ = DeviceRecord::verify(data, "_portdistrict.laptop.alice.pd.test", &roster, 1);
});
