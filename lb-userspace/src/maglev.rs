//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016), with weights.
//!
//! # The algorithm
//!
//! A pool's ring (the paper's "lookup table") has `M` slots, `M` prime. The
//! XDP program sends a flow to `ring[flow_hash % M]`. Each backend has a
//! preference list over the slots, a permutation of `0..M` derived only from
//! the backend's identity bytes:
//!
//! ```text
//! offset = bytes_hash(key, seed)              % M
//! skip   = bytes_hash(key, seed ^ 0x9e3779b9) % (M - 1) + 1
//! permutation[j] = (offset + j * skip) % M
//! ```
//!
//! Because `M` is prime and `1 <= skip < M`, every permutation visits every
//! slot exactly once. Backends then take turns: each claims its most
//! preferred slot not yet taken, until the ring is full. Every backend ends up
//! with (almost exactly) its share of slots, and because each backend's
//! preferences do not depend on the others, adding or removing one backend
//! moves little more than that backend's own share of slots.
//!
//! Weights use the usual credit scheme: every round each backend gains
//! `weight` credit and, whenever its credit reaches the largest weight in the
//! pool, spends that much to claim one slot. The heaviest backend claims once
//! per round, a backend of half that weight every other round, and so on, so
//! shares are proportional to weights. Iterating rounds literally costs
//! `rounds * N`, which explodes for skewed weights (one backend of weight
//! 1000 among 999 of weight 1 takes ~M/2 rounds of 1000 steps). Instead the
//! builder computes when each backend's next claim falls (its `k`-th claim
//! happens in round `ceil(k * max_weight / weight)`) and keeps the backends
//! in a min-heap on `(round, position)`. Popping the heap yields exactly the
//! order of the round-by-round loop, in `O(M log N)` plus the paper's
//! `O(M log M)` expected probes. A test checks the heap against a literal
//! implementation of the credit loop.
//!
//! # Why it is written by hand
//!
//! This is the product's core: which backend every flow of every tenant goes
//! to. Its output must be bit-for-bit identical on every node behind ECMP
//! (a flow may arrive at any node), and stay identical across releases
//! during a rolling upgrade. Owning the ~100 lines keeps the hash, the
//! tie-breaking and the weighting under our control and pinned by tests
//! rather than by a dependency's version.
//!
//! # Why the backends are sorted by key
//!
//! The population loop visits backends in order, and on a tie the earlier
//! one wins the slot, so the order matters. Callers hand backends over in
//! configuration order, map-iteration order or id order, none of which is
//! guaranteed to be the same on every node or across a reload. [`build`]
//! therefore sorts by the backends' identity bytes (then by id) before doing
//! anything, so the ring depends only on the set of backends, their weights,
//! the ring size and the seed. Nothing in here uses a randomly seeded hasher.
//!
//! Duplicate keys are an error ([`MaglevError::DuplicateBackend`]), not
//! silently merged: two backends with the same address and port are a
//! configuration mistake the caller should report.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use lb_common::RING_EMPTY;
use lb_common::hash::bytes_hash;

/// Mixed (XOR) into the seed for the `skip` hash, so `offset` and `skip` are
/// independent hashes of the same key (the golden-ratio constant).
const SKIP_SEED_XOR: u32 = 0x9e37_79b9;

/// One backend as the ring builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingBackend<'a> {
    /// Backend id written into the ring slots (an index into the BPF backend array).
    pub id: u32,
    /// Stable identity bytes of the backend (its address bytes + port); the
    /// permutation derives from these, never from `id` or config order.
    pub key: &'a [u8],
    /// Relative weight; 0 = not in the ring (draining).
    pub weight: u32,
}

/// Why a ring could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    /// The ring size is not prime (the permutations need a prime modulus).
    #[error("Maglev ring size {0} is not prime")]
    NotPrime(u32),
    /// More backends with weight > 0 than ring slots.
    #[error("{backends} backends with weight > 0 do not fit in a Maglev ring of {ring_size} slots")]
    TooManyBackends {
        /// Number of backends with weight > 0.
        backends: usize,
        /// The requested ring size.
        ring_size: u32,
    },
    /// Two backends share the same key (address and port).
    #[error("backends {first_id} and {second_id} have the same key")]
    DuplicateBackend {
        /// Id of one of the two backends (the smaller id).
        first_id: u32,
        /// Id of the other.
        second_id: u32,
    },
    /// A backend with weight > 0 has the id reserved for empty slots
    /// ([`RING_EMPTY`]).
    #[error("backend id {0} is reserved for empty ring slots")]
    ReservedId(u32),
}

/// Per-backend population state.
struct Filler {
    id: u32,
    weight: u32,
    /// Next slot of this backend's permutation to try.
    pos: u32,
    skip: u32,
    /// Slots claimed so far.
    claims: u64,
}

/// Round (1-based) in which a backend of `weight` makes its `k`-th claim
/// under the credit scheme: the first round `r` with `r * weight >= k * max_weight`.
/// No overflow: `k <= 2^32` and `max_weight < 2^32`, so `k * max_weight + weight < 2^64`.
fn claim_round(k: u64, max_weight: u32, weight: u32) -> u64 {
    (k * u64::from(max_weight)).div_ceil(u64::from(weight))
}

/// `(pos + skip) % m` for `pos, skip < m`, without overflowing `u32`.
fn advance(pos: u32, skip: u32, m: u32) -> u32 {
    if pos >= m - skip {
        pos - (m - skip)
    } else {
        pos + skip
    }
}

/// Builds a ring of `ring_size` slots holding backend ids.
///
/// The result depends only on the set of `(key, id, weight)` triples, the
/// ring size and `seed` (which must be the same on every node), never on the
/// order of `backends`. Backends of weight 0 get no slots. With no backend of
/// weight > 0 every slot is [`RING_EMPTY`]; otherwise every slot holds the id
/// of a backend of weight > 0. A backend whose weight is tiny next to the
/// others may end up with no slot at all.
///
/// # Errors
///
/// - [`MaglevError::NotPrime`] if `ring_size` is not prime;
/// - [`MaglevError::DuplicateBackend`] if two backends (of any weight) have the same key;
/// - [`MaglevError::ReservedId`] if a backend of weight > 0 has id [`RING_EMPTY`];
/// - [`MaglevError::TooManyBackends`] if more backends have weight > 0 than
///   the ring has slots.
pub fn build(
    backends: &[RingBackend<'_>],
    ring_size: u32,
    seed: u32,
) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(ring_size) {
        return Err(MaglevError::NotPrime(ring_size));
    }

    let mut sorted: Vec<&RingBackend<'_>> = backends.iter().collect();
    sorted.sort_unstable_by(|a, b| a.key.cmp(b.key).then(a.id.cmp(&b.id)));
    if let Some(pair) = sorted.windows(2).find(|pair| pair[0].key == pair[1].key) {
        return Err(MaglevError::DuplicateBackend {
            first_id: pair[0].id,
            second_id: pair[1].id,
        });
    }
    sorted.retain(|b| b.weight > 0);
    if let Some(b) = sorted.iter().find(|b| b.id == RING_EMPTY) {
        return Err(MaglevError::ReservedId(b.id));
    }
    if u64::try_from(sorted.len()).unwrap_or(u64::MAX) > u64::from(ring_size) {
        return Err(MaglevError::TooManyBackends {
            backends: sorted.len(),
            ring_size,
        });
    }

    let slots = ring_size as usize;
    let mut ring = vec![RING_EMPTY; slots];
    let Some(max_weight) = sorted.iter().map(|b| b.weight).max() else {
        return Ok(ring);
    };

    let mut fillers: Vec<Filler> = sorted
        .iter()
        .map(|b| Filler {
            id: b.id,
            weight: b.weight,
            pos: bytes_hash(b.key, seed) % ring_size,
            skip: bytes_hash(b.key, seed ^ SKIP_SEED_XOR) % (ring_size - 1) + 1,
            claims: 0,
        })
        .collect();

    // Min-heap of (round of the backend's next claim, its position in key
    // order): popping it replays the round-by-round credit loop exactly.
    let mut turns: BinaryHeap<Reverse<(u64, usize)>> = fillers
        .iter()
        .enumerate()
        .map(|(i, f)| Reverse((claim_round(1, max_weight, f.weight), i)))
        .collect();

    let mut filled = 0usize;
    while filled < slots {
        // Never `None`: there is at least one backend and each one is pushed
        // back with its next round.
        let Some(mut turn) = turns.peek_mut() else {
            break;
        };
        let Reverse((_, i)) = *turn;
        let f = &mut fillers[i];
        // Terminates: the permutation visits every slot and one is still free.
        loop {
            let slot = f.pos as usize;
            f.pos = advance(f.pos, f.skip, ring_size);
            if ring[slot] == RING_EMPTY {
                ring[slot] = f.id;
                break;
            }
        }
        f.claims += 1;
        *turn = Reverse((claim_round(f.claims + 1, max_weight, f.weight), i));
        filled += 1;
    }
    Ok(ring)
}

/// Whether `n` is prime (deterministic trial division; at most ~22,000
/// divisions for any `u32`).
#[must_use]
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d = 5u64;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const M: u32 = 65_537;
    const SMALL_M: u32 = 16_381;
    const SEED: u32 = 0x1b_5eed;

    /// Identity bytes like the daemon's: IPv4 address then port, both network order.
    fn key(i: u32) -> [u8; 6] {
        let [_, a, b, c] = i.to_be_bytes();
        let port = 8000u16.wrapping_add(u16::from(c)).to_be_bytes();
        [10, a, b, c, port[0], port[1]]
    }

    fn keys(n: u32) -> Vec<[u8; 6]> {
        (0..n).map(key).collect()
    }

    /// Backend `i` has id `i`.
    fn backends<'a>(keys: &'a [[u8; 6]], weights: &[u32]) -> Vec<RingBackend<'a>> {
        keys.iter()
            .zip(weights)
            .enumerate()
            .map(|(i, (k, &weight))| RingBackend {
                id: u32::try_from(i).expect("test sizes fit u32"),
                key: k,
                weight,
            })
            .collect()
    }

    fn counts(ring: &[u32], n: usize) -> Vec<usize> {
        let mut counts = vec![0usize; n];
        for &id in ring {
            assert_ne!(id, RING_EMPTY, "a slot stayed empty");
            counts[id as usize] += 1;
        }
        counts
    }

    #[expect(
        clippy::cast_precision_loss,
        reason = "test statistics, counts far below 2^52"
    )]
    fn assert_shares(ring: &[u32], weights: &[u32]) {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let counts = counts(ring, weights.len());
        for (i, (&c, &w)) in counts.iter().zip(weights).enumerate() {
            let expected = ring.len() as f64 * f64::from(w) / total as f64;
            let rel = (c as f64 - expected).abs() / expected;
            assert!(
                rel <= 0.01,
                "backend {i} (weight {w}) got {c} slots, expected {expected:.1} \
                 (off by {:.3}%)",
                rel * 100.0
            );
        }
    }

    /// The credit loop exactly as written in the paper (with weights), with
    /// materialised permutations and next-indexes: the reference the heap
    /// version must match.
    fn reference(backends: &[RingBackend<'_>], m: u32, seed: u32) -> Vec<u32> {
        let mut sorted: Vec<&RingBackend<'_>> = backends.iter().filter(|b| b.weight > 0).collect();
        sorted.sort_by(|a, b| a.key.cmp(b.key).then(a.id.cmp(&b.id)));
        let mut entry = vec![RING_EMPTY; m as usize];
        let Some(max) = sorted.iter().map(|b| b.weight).max() else {
            return entry;
        };
        let perm: Vec<Vec<u32>> = sorted
            .iter()
            .map(|b| {
                let offset = u64::from(bytes_hash(b.key, seed) % m);
                let skip = u64::from(bytes_hash(b.key, seed ^ SKIP_SEED_XOR) % (m - 1) + 1);
                (0..u64::from(m))
                    .map(|j| u32::try_from((offset + j * skip) % u64::from(m)).expect("< m"))
                    .collect()
            })
            .collect();
        let mut next = vec![0usize; sorted.len()];
        let mut credit = vec![0u64; sorted.len()];
        let mut filled = 0;
        loop {
            for (i, b) in sorted.iter().enumerate() {
                credit[i] += u64::from(b.weight);
                if credit[i] < u64::from(max) {
                    continue;
                }
                credit[i] -= u64::from(max);
                let mut c = perm[i][next[i]];
                while entry[c as usize] != RING_EMPTY {
                    next[i] += 1;
                    c = perm[i][next[i]];
                }
                entry[c as usize] = b.id;
                next[i] += 1;
                filled += 1;
                if filled == m as usize {
                    return entry;
                }
            }
        }
    }

    #[test]
    fn equal_weights_get_equal_shares() {
        for n in [3u32, 10, 100] {
            let keys = keys(n);
            let weights = vec![1; n as usize];
            let ring = build(&backends(&keys, &weights), M, SEED).expect("build");
            assert_eq!(ring.len(), M as usize, "ring has M slots");
            assert_shares(&ring, &weights);
        }
    }

    #[test]
    fn weighted_shares_are_proportional() {
        let keys = keys(10);
        let weights: Vec<u32> = (1..=10).collect();
        let ring = build(&backends(&keys, &weights), M, SEED).expect("build");
        assert_shares(&ring, &weights);

        // Skewed weights, and a weight not dividing the others.
        let weights = [100, 1, 1, 7, 50, 3, 3, 3, 20, 12];
        let ring = build(&backends(&keys, &weights), M, SEED).expect("build");
        assert_shares(&ring, &weights);
    }

    #[test]
    fn matches_the_literal_credit_loop() {
        let keys = keys(40);
        let weight_sets: [Vec<u32>; 4] = [
            vec![1; 40],
            (1..=40).collect(),
            (0..40).map(|i| [0, 1, 5, 2, 9][i % 5]).collect(),
            (0..40).map(|i| if i == 7 { 1000 } else { 3 }).collect(),
        ];
        for weights in &weight_sets {
            for m in [41u32, 1021, SMALL_M] {
                let b = backends(&keys, weights);
                assert_eq!(
                    build(&b, m, SEED).expect("build"),
                    reference(&b, m, SEED),
                    "heap and credit loop differ for M={m}, weights {weights:?}"
                );
            }
        }
    }

    #[expect(
        clippy::cast_precision_loss,
        reason = "test statistics, counts far below 2^52"
    )]
    #[test]
    fn removing_a_backend_moves_little_more_than_its_share() {
        for n in [3u32, 10, 100] {
            let keys = keys(n);
            let weights = vec![1; n as usize];
            let all = backends(&keys, &weights);
            let before = build(&all, M, SEED).expect("build");
            for removed in [0, n / 2, n - 1] {
                let mut rest = all.clone();
                rest.remove(removed as usize);
                let after = build(&rest, M, SEED).expect("build");
                assert!(
                    !after.contains(&removed),
                    "removed backend {removed} still in the ring"
                );
                let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
                let frac = changed as f64 / f64::from(M);
                let bound = 1.0 / f64::from(n) + 0.01;
                assert!(
                    frac <= bound,
                    "N={n}, removing {removed}: {changed} slots ({frac:.4}) changed, bound {bound:.4}"
                );
                // Every slot of the removed backend had to move; the others mostly stay.
                let owned = before.iter().filter(|&&id| id == removed).count();
                assert!(changed >= owned, "slots of the removed backend must change");
            }
        }
    }

    #[test]
    fn independent_of_input_order_and_deterministic() {
        let keys = keys(50);
        let weights: Vec<u32> = (0..50).map(|i| i % 4 + 1).collect();
        let forward = backends(&keys, &weights);
        let first = build(&forward, SMALL_M, SEED).expect("build");
        assert_eq!(
            first,
            build(&forward, SMALL_M, SEED).expect("build"),
            "two runs differ"
        );
        let mut reversed = forward.clone();
        reversed.reverse();
        assert_eq!(
            first,
            build(&reversed, SMALL_M, SEED).expect("build"),
            "reversed input differs"
        );
        for k in [1, 17, 49] {
            let mut rotated = forward.clone();
            rotated.rotate_left(k);
            assert_eq!(
                first,
                build(&rotated, SMALL_M, SEED).expect("build"),
                "input rotated by {k} differs"
            );
        }
        // The seed does matter.
        assert_ne!(
            first,
            build(&forward, SMALL_M, SEED ^ 1).expect("build"),
            "seed ignored"
        );
    }

    #[test]
    fn permutation_follows_key_not_id() {
        // Same keys, ids assigned in another order: each key keeps its slots.
        let keys = keys(10);
        let weights = vec![1; 10];
        let a = backends(&keys, &weights);
        let b: Vec<RingBackend<'_>> = a
            .iter()
            .map(|r| RingBackend {
                id: 100 + 9 - r.id,
                ..*r
            })
            .collect();
        let ra = build(&a, SMALL_M, SEED).expect("build");
        let rb = build(&b, SMALL_M, SEED).expect("build");
        for (slot, (&x, &y)) in ra.iter().zip(&rb).enumerate() {
            assert_eq!(
                y,
                100 + 9 - x,
                "slot {slot}: key's slots moved when ids changed"
            );
        }
    }

    #[test]
    fn weight_zero_backends_get_nothing() {
        let keys = keys(6);
        let weights = [1, 0, 3, 0, 2, 0];
        let ring = build(&backends(&keys, &weights), SMALL_M, SEED).expect("build");
        let counts = counts(&ring, 6);
        for (i, (&c, &w)) in counts.iter().zip(&weights).enumerate() {
            assert_eq!(c == 0, w == 0, "backend {i} weight {w} got {c} slots");
        }
        // Draining a backend gives the same ring as dropping it.
        let dropped: Vec<RingBackend<'_>> = backends(&keys, &weights)
            .into_iter()
            .filter(|b| b.weight > 0)
            .collect();
        assert_eq!(
            ring,
            build(&dropped, SMALL_M, SEED).expect("build"),
            "weight 0 is not the same as absent"
        );
    }

    #[test]
    fn no_live_backend_gives_an_empty_ring() {
        let keys = keys(4);
        let ring = build(&backends(&keys, &[0; 4]), SMALL_M, SEED).expect("build");
        assert_eq!(ring.len(), SMALL_M as usize, "ring has M slots");
        assert!(
            ring.iter().all(|&id| id == RING_EMPTY),
            "all-zero weights must give an empty ring"
        );
        let ring = build(&[], 7, SEED).expect("build");
        assert_eq!(
            ring,
            vec![RING_EMPTY; 7],
            "no backends must give an empty ring"
        );
    }

    #[test]
    fn single_backend_fills_the_ring() {
        let keys = keys(1);
        let ring = build(&backends(&keys, &[5]), 2, SEED).expect("build");
        assert_eq!(ring, vec![0, 0], "M=2 with one backend");
        let ring = build(&backends(&keys, &[1]), SMALL_M, SEED).expect("build");
        assert!(
            ring.iter().all(|&id| id == 0),
            "one backend must own every slot"
        );
    }

    #[test]
    fn errors() {
        let keys = keys(5);
        let b = backends(&keys, &[1; 5]);
        assert_eq!(
            build(&b, 65_535, SEED),
            Err(MaglevError::NotPrime(65_535)),
            "non-prime"
        );
        assert_eq!(build(&b, 0, SEED), Err(MaglevError::NotPrime(0)), "zero");
        assert_eq!(build(&b, 1, SEED), Err(MaglevError::NotPrime(1)), "one");
        assert_eq!(
            build(&b, 3, SEED),
            Err(MaglevError::TooManyBackends {
                backends: 5,
                ring_size: 3
            }),
            "5 backends in 3 slots"
        );
        // Weight-0 backends do not count against the ring size.
        let b = backends(&keys, &[1, 0, 1, 0, 1]);
        assert!(build(&b, 3, SEED).is_ok(), "3 live backends fit 3 slots");

        let dup = [
            RingBackend {
                id: 4,
                key: &keys[0],
                weight: 1,
            },
            RingBackend {
                id: 9,
                key: &keys[1],
                weight: 1,
            },
            RingBackend {
                id: 2,
                key: &keys[0],
                weight: 0,
            },
        ];
        assert_eq!(
            build(&dup, SMALL_M, SEED),
            Err(MaglevError::DuplicateBackend {
                first_id: 2,
                second_id: 4
            }),
            "duplicate keys"
        );

        let reserved = [RingBackend {
            id: RING_EMPTY,
            key: &keys[0],
            weight: 1,
        }];
        assert_eq!(
            build(&reserved, SMALL_M, SEED),
            Err(MaglevError::ReservedId(RING_EMPTY)),
            "reserved id"
        );
    }

    #[test]
    fn primes() {
        for p in [2, 3, 5, 7, 251, 16_381, 65_537, 655_373, 4_294_967_291] {
            assert!(is_prime(p), "{p} is prime");
        }
        for c in [
            0,
            1,
            4,
            9,
            25,
            49,
            65_535,
            16_383,
            1_000_000,
            4_294_967_295,
            65_521 * 65_519,
        ] {
            assert!(!is_prime(c), "{c} is not prime");
        }
        // Against a sieve for small n.
        let mut sieve = vec![true; 2000];
        sieve[0] = false;
        sieve[1] = false;
        for i in 2..2000 {
            if sieve[i] {
                for j in (i * i..2000).step_by(i) {
                    sieve[j] = false;
                }
            }
        }
        for (n, &p) in sieve.iter().enumerate() {
            let n32 = u32::try_from(n).expect("small");
            assert_eq!(is_prime(n32), p, "is_prime({n})");
        }
    }

    /// `(key, weight)` pairs.
    type BackendSet = Vec<([u8; 6], u32)>;

    /// Unique random keys of 1..50 backends, weights 0..=5, and the same set shuffled.
    fn backend_sets() -> impl Strategy<Value = (BackendSet, BackendSet)> {
        prop::collection::btree_set(any::<[u8; 6]>(), 1..50)
            .prop_flat_map(|keys| {
                let n = keys.len();
                (Just(keys), prop::collection::vec(0u32..=5, n))
            })
            .prop_flat_map(|(keys, weights)| {
                let set: Vec<([u8; 6], u32)> = keys.into_iter().zip(weights).collect();
                (Just(set.clone()), Just(set).prop_shuffle())
            })
    }

    fn as_backends<'a>(set: &'a [([u8; 6], u32)], ids: &[([u8; 6], u32)]) -> Vec<RingBackend<'a>> {
        // Ids follow the key: the position of the key in `ids`.
        set.iter()
            .map(|(k, w)| RingBackend {
                id: u32::try_from(ids.iter().position(|(k2, _)| k2 == k).expect("same set"))
                    .expect("small"),
                key: k,
                weight: *w,
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn every_slot_is_live_and_order_does_not_matter((set, shuffled) in backend_sets(), seed in any::<u32>()) {
            let a = as_backends(&set, &set);
            let b = as_backends(&shuffled, &set);
            let ring = build(&a, SMALL_M, seed).expect("build");
            let any_live = set.iter().any(|&(_, w)| w > 0);
            for (slot, &id) in ring.iter().enumerate() {
                if any_live {
                    let w = set.get(id as usize).map(|&(_, w)| w);
                    prop_assert!(
                        matches!(w, Some(w) if w > 0),
                        "slot {} holds {} which is not a live backend", slot, id
                    );
                } else {
                    prop_assert_eq!(id, RING_EMPTY, "slot {} not empty with no live backend", slot);
                }
            }
            prop_assert_eq!(ring, build(&b, SMALL_M, seed).expect("build"), "shuffled input differs");
        }
    }

    /// Timing, release only:
    /// `cargo test --release -p lb-userspace --lib maglev::tests::timing -- --ignored --nocapture`
    #[test]
    #[ignore = "timing; run in release with --nocapture"]
    fn timing() {
        let keys = keys(1000);
        let equal = vec![1; 1000];
        let skewed: Vec<u32> = (0..1000).map(|i| if i == 0 { 1000 } else { 1 }).collect();
        let ranged: Vec<u32> = (1..=1000).collect();
        for (name, weights) in [
            ("equal", &equal),
            ("one heavy", &skewed),
            ("1..=1000", &ranged),
        ] {
            let b = backends(&keys, weights);
            for m in [65_537u32, 655_373] {
                let start = std::time::Instant::now();
                let ring = build(&b, m, SEED).expect("build");
                let took = start.elapsed();
                assert_eq!(ring.len(), m as usize, "ring has M slots");
                println!("M={m} N=1000 weights {name}: {took:?}");
            }
        }
    }
}
