//! `uniffi-bindgen`: generates the Kotlin, Swift and Python bindings of `coalition-mobile`.
//!
//! A binary of its own (as matrix-rust-sdk does) so that the generator is always the exact
//! `uniffi` version the library was built with: the workspace pins it once for both. Run in
//! library mode on the built library, e.g.
//! `cargo run -p uniffi-bindgen -- generate --library target/debug/libcoalition_mobile.so
//! --language kotlin --out-dir target/bindings/kotlin` (or use `mobile/generate.sh`).

fn main() {
    uniffi::uniffi_bindgen_main()
}
