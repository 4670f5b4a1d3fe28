//! CONNECT decoding (edgeplane's level peek, then rmqtt-codec) must never
//! panic, whatever the bytes.
#![no_main]

use edgeplane::mqtt::connect::{decode, protocol_level};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = protocol_level(data);
    let _ = decode(data, 64 * 1024);
});
