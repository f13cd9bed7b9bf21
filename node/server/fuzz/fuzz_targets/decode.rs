//! The wire decoder on arbitrary bytes: it may refuse them, it must never panic.
//! Run: `cd node/server/fuzz && cargo +nightly fuzz run decode corpus/decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = allot::wire::decode(data) {
        // Whatever decodes must encode again to something that decodes the same.
        let again = allot::wire::encode(&frame).expect("a decoded frame encodes");
        assert_eq!(allot::wire::decode(&again).expect("re-decodes"), frame);
    }
});
