//! Fuzz target: one frame through the protocol decoder.
//!
//! Whatever the bytes, `Message::decode` returns (never panics); an error says what is wrong;
//! a message it accepts survives our own encoding unchanged (the relay forwards what it
//! decoded, so an asymmetry would change a peer's message in transit). The `data` of a
//! `sync`/`request`, and the raw bytes themselves, also go through automerge's sync message
//! decoder, which the relay runs on every such frame.

#![no_main]

use coalition_core::sync::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = automerge::sync::Message::decode(data);
    match Message::decode(data) {
        Ok(message) => {
            let again = Message::decode(&message.encode())
                .unwrap_or_else(|e| panic!("our encoding of {message:?} does not decode: {e}"));
            assert_eq!(again, message, "a decoded message changed through encoding");
            if let Message::Sync(m) | Message::Request(m) = &message {
                let _ = automerge::sync::Message::decode(&m.data);
            }
        }
        Err(error) => assert!(!error.to_string().is_empty(), "an error without a message"),
    }
});
