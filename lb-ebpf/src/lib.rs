//! Code shared by lb's eBPF objects: packet parsing and checksums. The
//! programs themselves (and their maps) live in the binaries: `lb` (the
//! balancer) and `lb-decap` (the backends' decapsulation), so loading one
//! does not create the other's maps.

#![no_std]

pub mod csum;
pub mod parse;
