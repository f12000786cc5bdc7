//! `lb::fuzzing::config` (what `lbd --check` does) on any UTF-8 text; the
//! invariants and why are documented there, so that `cargo test` runs the
//! committed corpus and reproducers through the same function.
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| lb::fuzzing::config(text));
