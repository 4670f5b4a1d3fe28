//! Client bytes after a CONNECT: framing and the fixed-header checks must
//! never panic, and a length they report must lie within the input and the cap.
#![no_main]

use edgeplane::mqtt::frame::{check_client_packet, packet_len};
use libfuzzer_sys::fuzz_target;

const MAX: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    let v5 = data.first().is_some_and(|b| b & 1 == 1);
    let mut rest = data.get(1..).unwrap_or_default();
    while let Ok(Some(len)) = packet_len(rest, MAX) {
        assert!(len >= 2 && len as u64 <= u64::from(MAX));
        if rest.len() < len {
            break;
        }
        if check_client_packet(&rest[..len], v5).is_err() {
            break;
        }
        rest = &rest[len..];
    }
});
