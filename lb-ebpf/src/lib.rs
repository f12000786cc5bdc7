//! Code shared by lb's eBPF objects: packet parsing and checksums. The
//! programs themselves (and their maps) live in the binaries: `lb` (the
//! balancer) and `lb-decap` (the backends' decapsulation), so loading one
//! does not create the other's maps.

#![no_std]
#![allow(
    clippy::inline_always,
    reason = "BPF code: helpers must be inlined into the program (the verifier limits calls and stack)"
)]
#![allow(
    clippy::must_use_candidate,
    clippy::missing_errors_doc,
    reason = "internal helpers of the eBPF programs, not a public API"
)]

pub mod csum;
pub mod l2;
pub mod parse;
