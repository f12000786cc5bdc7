//! The answer of the checks that run as BPF functions of their own
//! (`policy::check`, the next-hop refresh): go on, or drop for a reason.
//! A BPF function returns one scalar, so the answer is one `u32`
//! (`#[repr(transparent)]`), not a `Result`.

use lb_common::DropReason;

/// Go on ([`Verdict::PASS`]), or drop for a [`DropReason`].
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Verdict(u32);

impl Verdict {
    /// The packet may go on.
    pub const PASS: Self = Self(u32::MAX);

    /// The packet is dropped for `reason`.
    #[inline(always)]
    pub const fn drop(reason: DropReason) -> Self {
        Self(reason.code())
    }

    /// The reason to drop, or `None` to go on.
    #[inline(always)]
    pub const fn dropped(self) -> Option<DropReason> {
        DropReason::from_code(self.0)
    }
}
