//! Types shared by lb's XDP programs and its userspace.
//!
//! Every map key and value is `#[repr(C)]` with its padding written out as
//! `_pad` fields (so both sides agree byte for byte and the kernel never sees
//! uninitialised bytes in a hash key), holds only integers and byte arrays
//! (no `bool`, no enums: states are `u8` constants), and has its size pinned
//! by a compile-time assertion.
//!
//! Byte order: addresses are stored as they appear on the wire (network
//! order), IPv4 addresses in the first four bytes of a 16-byte array with the
//! rest zero. Ports in keys are network order too (`u16` holding the wire
//! bytes, so the XDP program copies them without swapping). Every other
//! integer (ids, counters, sizes) is host order.
//!
//! The flow hash lives here (module [`hash`]) so that userspace computes
//! exactly the ring slot the kernel will use for a flow.

#![no_std]
#![allow(
    clippy::pub_underscore_fields,
    reason = "padding is spelled out as public `_pad` fields so both sides build values with struct literals"
)]

pub mod hash;
pub mod loadgen;
mod maps;

pub use loadgen::*;
pub use maps::*;
