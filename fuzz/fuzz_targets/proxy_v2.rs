//! `lb::fuzzing::proxy_v2`: the parser, its invariants and why are documented
//! there, so that `cargo test` runs the committed corpus and reproducers
//! through the same function.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lb::fuzzing::proxy_v2(data));
