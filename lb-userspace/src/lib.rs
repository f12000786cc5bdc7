//! lb's userspace: configuration, the data plane (the one writer of the BPF
//! maps), Maglev, and what `lbd` and `lbctl` share.

// Whatever is `pub` is reachable from the crate's root: a module's
// private helpers say `pub(crate)`, so the public surface is what `lib.rs`
// and the `pub use` lines of its modules show.
#![warn(unreachable_pub)]

pub mod admin;
pub mod api;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod decap;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod inspect;
pub mod l7;
pub mod maglev;
pub mod metrics;
pub mod neighbours;
pub mod objects;
pub mod overrides;
pub mod reconcile;
