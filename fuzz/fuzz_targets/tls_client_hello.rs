//! The ClientHello peek (TLS passthrough, TLS detection) must never panic,
//! whatever the bytes, and must keep its promises about what it returns.
#![no_main]

use edgeplane::tls::client_hello::{peek, Peek, MAX_PEEK};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match peek(data) {
        Peek::Hello(hello) => {
            assert!(hello.len <= data.len() && hello.len <= MAX_PEEK);
            if let Some(name) = &hello.server_name {
                assert!(!name.is_empty() && name.len() <= 255 && name.bytes().all(|b| b.is_ascii_graphic()));
            }
            assert!(hello.alpn.iter().all(|name| !name.is_empty()));
            // Complete only with its last byte.
            assert_eq!(peek(&data[..hello.len - 1]), Peek::Incomplete);
        }
        Peek::Incomplete => assert!(data.len() < MAX_PEEK),
        Peek::NotTls(_) => {}
    }
});
