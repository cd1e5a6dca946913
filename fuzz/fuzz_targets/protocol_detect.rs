//! Protocol detection (`ward_proxy::detect::classify`) on a connection's
//! first bytes, as the inbound and outbound listeners call it on every peek.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ward_proxy::detect::{H2_PREFACE, MAX_DETECT_BYTES, Protocol, classify};

fuzz_target!(|data: &[u8]| {
    let whole = classify(data);
    // Enough bytes always decide: the listeners stop peeking at MAX_DETECT_BYTES.
    if data.len() >= MAX_DETECT_BYTES {
        assert!(whole.is_some(), "{data:?} undecided");
    }
    // A decision never changes when more bytes arrive: every prefix either
    // waits for more or already says what the whole says.
    for end in 0..data.len().min(MAX_DETECT_BYTES + 1) {
        if let Some(p) = classify(&data[..end]) {
            assert_eq!(Some(p), whole, "{:?} then {data:?}", &data[..end]);
        }
    }
    // What each answer means.
    match whole {
        Some(Protocol::Tls) => assert!(data[0] == 0x16 && data[1] == 0x03),
        Some(Protocol::Http2) => assert!(data.starts_with(H2_PREFACE)),
        Some(Protocol::Http1) => {
            // An upper-case method token, then a space.
            let sp = data.iter().position(|&b| b == b' ').expect("a space");
            assert!(sp > 0 && data[..sp].iter().all(u8::is_ascii_uppercase));
        }
        Some(Protocol::Opaque) => {
            assert!(!data.starts_with(H2_PREFACE));
            assert!(!(data.len() >= 2 && data[0] == 0x16 && data[1] == 0x03));
        }
        None => assert!(data.len() < MAX_DETECT_BYTES),
    }
});
