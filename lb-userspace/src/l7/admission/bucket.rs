//! Token buckets for request rates, lock-free, whose rate and burst change
//! in place.
//!
//! Each bucket is a GCRA (generic cell rate algorithm): instead of a token
//! count and a refill time it keeps one number, the *theoretical arrival
//! time* (TAT), the instant at which the bucket will be full again. With
//! `interval = 1 s / rate` and `tau = burst * interval`, the bucket's debt
//! at `now` is `max(TAT - now, 0)`; a request is admitted when
//! `debt + interval <= tau`, which moves the TAT to `now + debt +
//! interval`. One `u64` is the whole state, so taking a token is one
//! compare-and-swap, and the tokens left are `(tau - debt) / interval`.
//!
//! Why not `governor`: its quota is fixed when a limiter is built, so a
//! reload that changes a rate would need a new limiter (losing the tokens
//! already spent), and its keyed limiter grows a map entry per key until
//! `retain_recent` runs, which a flood of distinct keys outruns. Here a
//! reload converts the debt so that the tokens left stay the same under the
//! new rate ([`TokenBucket::rescale`]), and keyed state is a fixed table
//! ([`KeyedBuckets`]).

use std::{
    hash::BuildHasher as _,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

const NANOS: u64 = 1_000_000_000;

/// A rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    per_second: u64,
    burst: u64,
    /// Nanoseconds between two tokens.
    interval: u64,
    /// `burst * interval`: how far the TAT may run ahead of now.
    tau: u64,
}

impl Rate {
    /// `per_second` tokens per second, at most `burst` at once (both at
    /// least 1).
    #[must_use]
    pub(crate) fn new(per_second: u64, burst: u64) -> Self {
        let per_second = per_second.max(1);
        let burst = burst.max(1);
        let interval = (NANOS / per_second).max(1);
        Self {
            per_second,
            burst,
            interval,
            tau: interval.saturating_mul(burst),
        }
    }

    /// The quota a client is told about after a request left `debt`.
    fn quota(&self, debt: u64, unit: u64) -> Quota {
        let (interval, tau) = self.scaled(unit);
        Quota {
            limit: self.burst,
            remaining: tau.saturating_sub(debt) / interval,
            reset: Duration::from_nanos(debt.saturating_mul(unit)),
            window: Duration::from_nanos(self.tau),
        }
    }

    /// `(interval, tau)` in units of `unit` nanoseconds (at least 1).
    fn scaled(&self, unit: u64) -> (u64, u64) {
        let interval = (self.interval / unit).max(1);
        (interval, interval.saturating_mul(self.burst))
    }
}

/// What a client is told in the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Quota {
    /// The bucket's size.
    pub limit: u64,
    /// Requests that may follow at once.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// How long the bucket takes to fill from empty (`burst / rate`).
    pub window: Duration,
}

/// The outcome of taking one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    Allowed(Quota),
    /// Over the rate: one token is available after `retry_in`.
    Refused {
        quota: Quota,
        retry_in: Duration,
    },
}

/// One GCRA step on a debt: the new debt, or how long until it would fit.
fn step(debt: u64, interval: u64, tau: u64) -> Result<u64, u64> {
    let next = debt.saturating_add(interval);
    if next > tau {
        Err(next - tau)
    } else {
        Ok(next)
    }
}

/// `debt` under `from` re-expressed under `to` so that the tokens left
/// stay the same (clamped to the new burst). Units of `unit` ns.
fn convert(debt: u64, from: &Rate, to: &Rate, unit: u64) -> u64 {
    let (fi, ft) = from.scaled(unit);
    let (ti, tt) = to.scaled(unit);
    // Tokens left (scaled by `fi`): ft - debt; under the new rate they are
    // worth (ft - debt) * ti / fi of debt-space.
    let left = u128::from(ft.saturating_sub(debt)) * u128::from(ti) / u128::from(fi);
    let left = u64::try_from(left).unwrap_or(u64::MAX);
    tt.saturating_sub(left)
}

/// One bucket (a tenant's). Time is in nanoseconds of the policy's clock.
#[derive(Debug, Default)]
pub(crate) struct TokenBucket {
    /// TAT in ns; 0 (or anything in the past) = full.
    tat: AtomicU64,
}

impl TokenBucket {
    /// A full bucket.
    #[must_use]
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Takes one token at `now`.
    #[must_use]
    pub(crate) fn take(&self, rate: &Rate, now: u64) -> Take {
        let mut tat = self.tat.load(Relaxed);
        loop {
            let debt = tat.saturating_sub(now);
            match step(debt, rate.interval, rate.tau) {
                Ok(next) => match self.tat.compare_exchange_weak(
                    tat,
                    now.saturating_add(next),
                    Relaxed,
                    Relaxed,
                ) {
                    Ok(_) => return Take::Allowed(rate.quota(next, 1)),
                    Err(current) => tat = current,
                },
                Err(wait) => {
                    return Take::Refused {
                        quota: rate.quota(debt, 1),
                        retry_in: Duration::from_nanos(wait),
                    };
                }
            }
        }
    }

    /// Converts the bucket from `from` to `to` at `now`, keeping the tokens
    /// it has (up to the new burst).
    pub(crate) fn rescale(&self, from: &Rate, to: &Rate, now: u64) {
        let _ = self.tat.fetch_update(Relaxed, Relaxed, |tat| {
            let debt = tat.saturating_sub(now);
            Some(now.saturating_add(convert(debt, from, to, 1)))
        });
    }

    #[cfg(test)]
    /// Tokens available at `now`.
    #[must_use]
    pub(crate) fn available(&self, rate: &Rate, now: u64) -> u64 {
        let debt = self.tat.load(Relaxed).saturating_sub(now);
        rate.tau.saturating_sub(debt) / rate.interval
    }
}

/// Ways (slots) per set of [`KeyedBuckets`]: one 32-byte group.
const WAYS: usize = 4;
/// Sets of [`KeyedBuckets`]: 16384 slots, 128 KiB per keyed limit.
pub(crate) const SETS: usize = 4096;
/// Bits of a slot's TAT (microseconds, wrapping every 12.7 days).
const TAT_BITS: u32 = 40;
const TAT_MASK: u64 = (1 << TAT_BITS) - 1;
/// A wrapped difference above this is a TAT in the past.
const HALF: u64 = 1 << (TAT_BITS - 1);
/// Keyed buckets count in microseconds.
const MICROS: u64 = 1_000;

/// Buckets for an unbounded set of keys (client addresses, API keys) in a
/// fixed table: 4-way sets of 64-bit slots, each holding a 24-bit key
/// fingerprint and a 40-bit TAT in microseconds, indexed by a hash keyed
/// with a random seed (so nobody can aim keys at one set).
///
/// A key uses the slot with its fingerprint; a new key takes an empty
/// slot or an *idle* one (a full bucket holds no information, so taking it
/// over is exact). Only when all four slots of its set are busy with other
/// keys does a key share the one with the least debt, charging it too:
/// collisions make limits stricter, never looser. Memory never grows,
/// whatever the number of keys: the table (128 KiB) is allocated by the
/// first key, so a limit nobody uses costs nothing.
pub(crate) struct KeyedBuckets {
    slots: std::sync::OnceLock<Box<[AtomicU64]>>,
    hasher: std::hash::RandomState,
}

impl std::fmt::Debug for KeyedBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedBuckets")
            .field("slots", &self.slots.get().map_or(0, |s| s.len()))
            .finish_non_exhaustive()
    }
}

impl Default for KeyedBuckets {
    fn default() -> Self {
        Self::new()
    }
}

/// The debt (µs) of a slot at `now_us` (both wrapped to 40 bits).
fn slot_debt(slot: u64, now_us: u64) -> u64 {
    let d = (slot.wrapping_sub(now_us)) & TAT_MASK;
    if d >= HALF { 0 } else { d }
}

fn fingerprint(slot: u64) -> u64 {
    slot >> TAT_BITS
}

impl KeyedBuckets {
    /// An empty table (every bucket full), not allocated yet.
    #[must_use]
    pub(crate) fn new() -> Self {
        Self {
            slots: std::sync::OnceLock::new(),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn slots(&self) -> &[AtomicU64] {
        self.slots
            .get_or_init(|| (0..SETS * WAYS).map(|_| AtomicU64::new(0)).collect())
    }

    #[cfg(test)]
    /// Bytes the table holds: 0 until the first key, then fixed.
    #[must_use]
    pub(crate) fn memory(&self) -> usize {
        self.slots.get().map_or(0, |s| std::mem::size_of_val(&**s))
    }

    /// Takes one token of `key`'s bucket at `now` (ns).
    #[must_use]
    pub(crate) fn take(&self, key: &[u8], rate: &Rate, now: u64) -> Take {
        let hash = self.hasher.hash_one(key);
        let set = usize::try_from(hash % SETS as u64).unwrap_or(0) * WAYS;
        // Never 0: 0 marks an empty slot.
        let fp = ((hash >> TAT_BITS) & 0x00ff_ffff).max(1);
        let now_us = (now / MICROS) & TAT_MASK;
        let (interval, tau) = rate.scaled(MICROS);
        let slots = &self.slots()[set..set + WAYS];
        loop {
            let values: [u64; WAYS] = std::array::from_fn(|i| slots[i].load(Relaxed));
            // Own slot, else an empty or idle one (claimed), else the one
            // with the least debt (shared).
            let (way, claim) = if let Some(w) = values.iter().position(|&v| fingerprint(v) == fp) {
                (w, false)
            } else if let Some(w) = values
                .iter()
                .position(|&v| v == 0 || slot_debt(v, now_us) == 0)
            {
                (w, true)
            } else {
                let w = (0..WAYS)
                    .min_by_key(|&w| slot_debt(values[w], now_us))
                    .unwrap_or(0);
                (w, false)
            };
            let current = values[way];
            let debt = if claim { 0 } else { slot_debt(current, now_us) };
            match step(debt, interval, tau) {
                Ok(next) => {
                    let owner = if claim { fp } else { fingerprint(current) };
                    let value = (owner << TAT_BITS) | ((now_us + next) & TAT_MASK);
                    if slots[way]
                        .compare_exchange(current, value, Relaxed, Relaxed)
                        .is_ok()
                    {
                        return Take::Allowed(rate.quota(next, MICROS));
                    }
                }
                Err(wait) => {
                    return Take::Refused {
                        quota: rate.quota(debt, MICROS),
                        retry_in: Duration::from_micros(wait),
                    };
                }
            }
        }
    }

    /// Converts every bucket from `from` to `to` at `now` (ns), keeping the
    /// tokens each has.
    pub(crate) fn rescale(&self, from: &Rate, to: &Rate, now: u64) {
        let Some(slots) = self.slots.get() else {
            return;
        };
        let now_us = (now / MICROS) & TAT_MASK;
        for slot in &**slots {
            let _ = slot.fetch_update(Relaxed, Relaxed, |v| {
                if v == 0 {
                    return None;
                }
                let debt = convert(slot_debt(v, now_us), from, to, MICROS);
                Some((v & !TAT_MASK) | ((now_us + debt) & TAT_MASK))
            });
        }
    }

    #[cfg(test)]
    /// Slots holding a key whose bucket is not full at `now` (for tests).
    #[must_use]
    pub(crate) fn busy(&self, now: u64) -> usize {
        let now_us = (now / MICROS) & TAT_MASK;
        self.slots()
            .iter()
            .filter(|s| {
                let v = s.load(Relaxed);
                v != 0 && slot_debt(v, now_us) > 0
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn allowed(t: Take) -> bool {
        matches!(t, Take::Allowed(_))
    }

    #[test]
    fn burst_then_rate() {
        let rate = Rate::new(10, 5);
        let b = TokenBucket::new();
        let now = 1_000 * MS;
        let got: Vec<bool> = (0..7).map(|_| allowed(b.take(&rate, now))).collect();
        assert_eq!(got, [true, true, true, true, true, false, false]);
        // One token per 100 ms.
        assert!(!allowed(b.take(&rate, now + 99 * MS)));
        assert!(allowed(b.take(&rate, now + 100 * MS)));
        assert!(!allowed(b.take(&rate, now + 100 * MS)));
        // Over 10 s at a steady 20/s, about 10/s get through.
        let mut ok = 0;
        for i in 0..200 {
            ok += u64::from(allowed(b.take(&rate, now + 200 * MS + i * 50 * MS)));
        }
        assert!((100..=106).contains(&ok), "{ok} of 200");
    }

    #[test]
    fn quotas_and_retry() {
        let rate = Rate::new(2, 4);
        let b = TokenBucket::new();
        let Take::Allowed(q) = b.take(&rate, 0) else {
            panic!("refused")
        };
        assert_eq!((q.limit, q.remaining), (4, 3));
        assert_eq!(q.reset, Duration::from_millis(500));
        assert_eq!(q.window, Duration::from_secs(2));
        for _ in 0..3 {
            assert!(allowed(b.take(&rate, 0)));
        }
        let Take::Refused { quota, retry_in } = b.take(&rate, 0) else {
            panic!("allowed")
        };
        assert_eq!(retry_in, Duration::from_millis(500));
        assert_eq!((quota.remaining, quota.reset), (0, Duration::from_secs(2)));
    }

    #[test]
    fn rescale_keeps_the_tokens_left() {
        let old = Rate::new(10, 10);
        let b = TokenBucket::new();
        for _ in 0..7 {
            assert!(allowed(b.take(&old, 0)));
        }
        assert_eq!(b.available(&old, 0), 3);
        // A higher rate and burst: still 3 now, refilling faster.
        let new = Rate::new(100, 50);
        b.rescale(&old, &new, 0);
        assert_eq!(b.available(&new, 0), 3);
        assert_eq!(b.available(&new, 10 * MS), 4);
        // A smaller burst clamps.
        let small = Rate::new(1, 2);
        b.rescale(&new, &small, 0);
        assert_eq!(b.available(&small, 0), 2);
        // A full bucket keeps its 10 tokens and fills to the new burst at
        // the new rate: a reload neither takes nor gives tokens.
        let full = TokenBucket::new();
        full.rescale(&old, &new, 5 * MS);
        assert_eq!(full.available(&new, 5 * MS), 10);
        assert_eq!(full.available(&new, 405 * MS), 50);
    }

    #[test]
    fn concurrent_takes_never_exceed_the_burst() {
        let rate = Rate::new(1, 1000);
        let b = std::sync::Arc::new(TokenBucket::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = std::sync::Arc::clone(&b);
                std::thread::spawn(move || (0..500).filter(|_| allowed(b.take(&rate, 0))).count())
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        assert_eq!(total, 1000);
    }

    #[test]
    fn keyed_buckets_are_separate_and_exact_below_capacity() {
        // 200 keys in 4096 sets of 4: a set overflowing (which would make
        // two keys share) has a probability of about 1e-5.
        let rate = Rate::new(2, 2);
        let t = KeyedBuckets::new();
        for key in 0..200_u32 {
            let k = key.to_be_bytes();
            assert!(allowed(t.take(&k, &rate, 0)), "key {key}");
            assert!(allowed(t.take(&k, &rate, 0)), "key {key}");
        }
        // Every key has spent its burst, and only its own.
        let refused = (0..200_u32)
            .filter(|k| !allowed(t.take(&k.to_be_bytes(), &rate, 0)))
            .count();
        assert_eq!(refused, 200);
        assert_eq!(t.busy(0), 200);
        // Half a second later each has one token again.
        assert!(allowed(t.take(&7_u32.to_be_bytes(), &rate, 500 * MS)));
        assert!(!allowed(t.take(&7_u32.to_be_bytes(), &rate, 500 * MS)));
    }

    #[test]
    fn a_million_keys_stay_in_the_table_and_only_tighten_limits() {
        let rate = Rate::new(1, 1);
        let t = KeyedBuckets::new();
        assert_eq!(t.memory(), 0, "allocated by the first key");
        assert!(allowed(t.take(b"first", &rate, 0)));
        let memory = t.memory();
        assert_eq!(memory, SETS * WAYS * 8);
        // One key at its limit...
        assert!(allowed(t.take(b"victim", &rate, 0)));
        let mut allowed_flood = 0_u32;
        for i in 0..1_000_000_u32 {
            allowed_flood += u32::from(allowed(t.take(&i.to_le_bytes(), &rate, 0)));
        }
        assert_eq!(t.memory(), memory);
        // ...is never admitted more than its rate allows, and the flood
        // gets at most one request per slot (sharing only refuses more).
        assert!(!allowed(t.take(b"victim", &rate, 0)));
        assert!(allowed_flood as usize <= SETS * WAYS, "{allowed_flood}");
        // Idle slots are taken over exactly: a second later all are full.
        assert_eq!(t.busy(2_000 * MS), 0);
        assert!(allowed(t.take(b"newcomer", &rate, 2_000 * MS)));
    }

    #[test]
    fn keyed_rescale_and_wrapping() {
        let old = Rate::new(10, 10);
        let t = KeyedBuckets::new();
        for _ in 0..8 {
            assert!(allowed(t.take(b"k", &old, 0)));
        }
        let new = Rate::new(20, 20);
        t.rescale(&old, &new, 0);
        let got = (0..5).filter(|_| allowed(t.take(b"k", &new, 0))).count();
        assert_eq!(got, 2, "the 2 tokens left carry over");
        // Time near the 40-bit wrap of the microsecond clock.
        let near_wrap = (TAT_MASK - 10) * MICROS;
        let t = KeyedBuckets::new();
        let r = Rate::new(1, 1);
        assert!(allowed(t.take(b"w", &r, near_wrap)));
        assert!(!allowed(t.take(b"w", &r, near_wrap + 500 * MS)));
        assert!(allowed(t.take(b"w", &r, near_wrap + 1_000 * MS)));
    }
}
