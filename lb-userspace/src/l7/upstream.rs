//! Which backend of a pool serves an L7 request, and passive outlier
//! detection.
//!
//! # Snapshots and live state
//!
//! The proxy publishes its routing state as immutable snapshots (arc-swap),
//! rebuilt on every reload and every health change. A [`PoolBalancer`] is
//! one pool's part of such a snapshot: the backends that take new requests,
//! their weights, a Maglev ring and a round-robin schedule, all fixed at
//! build time. What changes per request lives in [`BackendState`] (in-flight
//! count, consecutive failures, ejection), one per backend address behind an
//! `Arc`, and the round-robin cursor, one per pool behind an `Arc`.
//! [`PoolBalancer::build`] takes the previous snapshot's balancer and hands
//! those same `Arc`s to the backends that stay, so a rebuild neither forgets
//! an ejection nor loses count of requests in flight, and a request picked
//! from an old snapshot still updates the state the new one reads.
//!
//! A backend that leaves the pool (down, draining, removed) keeps its state
//! in the new balancer as long as it matters: while requests are still in
//! flight on it or its ejection runs. It takes no requests there, shows up
//! in [`PoolBalancer::backends`] with weight 0 (so status shows a draining
//! backend emptying), and gets its state back if it returns meanwhile, so
//! flapping health does not clear an ejection.
//!
//! # Balancing
//!
//! * [`Balance::RoundRobin`]: nginx's smooth weighted round robin. Its
//!   sequence depends only on the weights, so it is computed once per build
//!   into a schedule of backend indices; a pick is one `fetch_add` on the
//!   shared cursor and an index. That keeps the pick path lock-free, where
//!   nginx's live algorithm would need a lock around its per-backend
//!   counters. Backends that cannot take the request (excluded, ejected) are
//!   skipped by drawing the next ticket, which is the schedule with their
//!   entries removed: the others keep their relative weights. After a few
//!   draws in vain a pick scans the pool and chooses by weight.
//! * [`Balance::LeastRequest`]: power of two random choices. Two distinct
//!   candidates are drawn with probability proportional to weight; the one
//!   with fewer in-flight requests per unit of weight wins, a tie is broken
//!   by a coin weighted by the two weights. When the pool is idle (every tie)
//!   traffic is therefore split by weight, and under load in-flight counts
//!   settle proportional to weight.
//! * [`Balance::Maglev`]: the request key (client address, a header's or a
//!   cookie's value: the caller computes the bytes) is hashed with the
//!   node's seed onto a Maglev ring built by [`crate::maglev::build`]. The
//!   hash and the ring depend only on the key, the backend set and the seed,
//!   so every L7 node sends a key to the same backend. A backend that cannot
//!   take the request is skipped by walking the following ring slots, so its
//!   keys spread over the others (deterministically) while every other key
//!   stays put. Removing a backend rebuilds the ring: its keys move, and
//!   about 1% of the others (Maglev's disruption is small, not zero).
//!   Without a key the pool falls back to round robin.
//!
//! The Maglev ring has the smallest size of [`RING_SIZES`] holding at least
//! 100 slots per backend: Maglev's imbalance is about `backends / size`, so
//! 100 slots keep every share within about 1% of its weight, while a
//! 10-backend pool's ring stays at 4 KiB (the L4 ring sizes, up to 655,373
//! slots, would cost 2.5 MiB per pool). The size is a pure function of the
//! backend count so that every node agrees; when the count crosses a
//! boundary the ring is rebuilt at another size and most keys move. Pass
//! the configured number of backends as [`BuildParams::ring_backends`] so
//! that health changes, which only remove backends from `healthy`, never
//! cross one.
//!
//! # Outlier detection
//!
//! Each answer is reported on the [`Picked`] guard. After
//! [`OutlierConfig::consecutive_failures`] failures in a row a backend is
//! ejected for `base_ejection × 2^(earlier ejections)`, at most
//! `max_ejection`; one success resets the run. A backend that stayed in
//! service for `max_ejection` after its last ejection starts again from
//! `base_ejection`. At most `max_ejected_percent` of a pool's backends
//! (rounded down) are ejected at once, so a pool of one backend is never
//! ejected and a pool of two loses at most one at 50%. The limit is checked
//! when ejecting: a rebuild that leaves fewer backends keeps the running
//! ejections even past it.
//!
//! When every backend a request may use is ejected (at a percentage of 100,
//! after such a rebuild, or when retries exclude the rest), ejection is
//! ignored: trying a suspect backend beats answering 503 for sure.
//!
//! Counters use relaxed atomics: they are heuristics, and a pick that reads
//! a count one request old is as good as any. Deciding an ejection reads
//! every backend of the pool (for the percentage) and must not race with
//! another decision, so it takes a per-pool mutex shared by all snapshots;
//! that happens only on a failure that completes a run, never on a pick.
//! Time comes from a [`Clock`], injectable for tests.

use std::cell::Cell;
use std::cmp::Ordering as CmpOrdering;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use lb_common::hash::bytes_hash;
use serde::Serialize;
use tracing::warn;

use crate::maglev::{self, RingBackend};

/// Maglev ring sizes for L7 pools (all prime, each about four times the
/// previous); a pool uses the smallest with 100 slots per backend, or the
/// largest.
pub(crate) const RING_SIZES: [u32; 6] = [1021, 4099, 16_381, 65_537, 262_139, 1_048_573];

/// Ring slots per backend the ring size aims for.
const SLOTS_PER_BACKEND: u64 = 100;

/// Backends a pool takes at most (the largest ring); more are ignored.
/// Keeps every backend index within `u32` and every backend in the ring.
const MAX_BACKENDS: usize = 1_048_573;

/// Longest round-robin schedule. Weights (after dividing by their greatest
/// common divisor) summing to more are scaled down to fit, each keeping at
/// least one entry. Building costs `entries × backends` steps.
const MAX_SCHEDULE: i64 = 16_384;

/// Random or next-ticket draws before a pick falls back to scanning every
/// backend (when most of the pool cannot take the request).
const DRAWS: usize = 8;

/// Mixed into the seed for request keys, so a key and a backend identity
/// with the same bytes hash independently.
const KEY_SEED_XOR: u32 = 0x85eb_ca77;

/// How a pool spreads requests over its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Balance {
    /// Maglev ring keyed by a hash of the request key (client IP, a header's
    /// value or a cookie's value: the caller computes the key bytes); sticky
    /// across requests and across other backends' removal.
    Maglev,
    /// Power of two random choices on in-flight requests (weighted: compares
    /// in-flight requests per unit of weight).
    LeastRequest,
    /// Smooth weighted round robin (nginx's algorithm).
    RoundRobin,
}

/// Passive outlier detection of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OutlierConfig {
    /// Failures in a row that eject a backend; 0 disables ejection.
    pub consecutive_failures: u32,
    /// First ejection's length; each further one doubles it.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Most of a pool's backends ejected at once, in percent (rounded down
    /// to whole backends; above 100 counts as 100).
    pub max_ejected_percent: u8,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_mins(5),
            max_ejected_percent: 50,
        }
    }
}

/// One backend offered to [`PoolBalancer::build`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpstreamSpec {
    /// Where requests go; identifies the backend across rebuilds.
    pub addr: SocketAddr,
    /// Relative weight; 0 = draining: no new requests.
    pub weight: u32,
}

/// Source of time for ejections.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since a fixed point of this process's past; never
    /// decreases.
    fn now_ms(&self) -> u64;
}

/// [`Instant`]-based [`Clock`]: milliseconds since its first use in the
/// process.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let epoch = *EPOCH.get_or_init(Instant::now);
        u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Live per-backend state, shared across snapshots (`Arc`), keyed by
/// address.
#[derive(Debug, Default)]
pub struct BackendState {
    /// Requests picked and not yet finished ([`Picked`] guards alive).
    inflight: AtomicU32,
    /// Failures since the last success or ejection.
    consecutive_failures: AtomicU32,
    /// Ejected while the clock reads less than this (ms of the pool's
    /// [`Clock`]); 0 = never ejected.
    ejected_until_ms: AtomicU64,
    /// Ejections so far (reset after a long enough time in service).
    ejections: AtomicU32,
}

impl BackendState {
    /// Requests in flight.
    #[must_use]
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Failures since the last success or ejection.
    #[must_use]
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Times ejected (the exponent of the next ejection's length).
    #[must_use]
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Milliseconds of ejection left at `now_ms`; 0 when not ejected.
    fn ejection_left(&self, now_ms: u64) -> u64 {
        self.ejected_until_ms
            .load(Ordering::Relaxed)
            .saturating_sub(now_ms)
    }

    /// Whether ejected, reading the clock only if the backend ever was.
    fn is_ejected(&self, now: &LazyNow<'_>) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && until > now.get()
    }

    /// Whether a balancer that no longer lists this backend must still
    /// carry its state.
    fn worth_keeping(&self, now_ms: u64) -> bool {
        self.inflight() > 0 || self.ejection_left(now_ms) > 0
    }
}

/// Everything [`PoolBalancer::build_with`] needs besides the backends.
#[derive(Debug, Clone)]
pub struct BuildParams {
    /// How the pool balances.
    pub balance: Balance,
    /// Its outlier detection.
    pub outlier: OutlierConfig,
    /// Maglev seed (the node's `hash_seed`, the same on every node).
    pub seed: u32,
    /// Backends the Maglev ring is sized for: the pool's configured
    /// backends, down and draining ones included, so health changes do not
    /// resize the ring. Fewer than the healthy backends (such as 0) means
    /// the healthy ones.
    pub ring_backends: usize,
    /// Time for ejections: the same clock for every snapshot of a pool
    /// (ejection deadlines carry over as readings of it).
    pub clock: Arc<dyn Clock>,
}

impl BuildParams {
    /// Parameters with the ring sized for the healthy backends and a
    /// [`MonotonicClock`].
    #[must_use]
    pub fn new(balance: Balance, outlier: OutlierConfig, seed: u32) -> Self {
        Self {
            balance,
            outlier,
            seed,
            ring_backends: 0,
            clock: Arc::new(MonotonicClock),
        }
    }
}

/// A backend that takes new requests.
#[derive(Debug, Clone, Copy)]
struct Member {
    addr: SocketAddr,
    weight: u32,
}

/// What a [`Picked`] needs to record an outcome: one per snapshot, shared
/// by its guards.
#[derive(Debug)]
struct Outlier {
    config: OutlierConfig,
    clock: Arc<dyn Clock>,
    /// The snapshot's members' states, in member order (for the ejected
    /// share).
    states: Box<[Arc<BackendState>]>,
    /// Serialises ejection decisions of the pool across snapshots.
    gate: Arc<Mutex<()>>,
}

impl Outlier {
    /// Most members ejected at once.
    fn max_ejected(&self) -> usize {
        self.states.len() * usize::from(self.config.max_ejected_percent.min(100)) / 100
    }

    fn record_failure(&self, state: &BackendState) {
        let threshold = self.config.consecutive_failures;
        let failures = state
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if threshold == 0 || failures < threshold {
            return;
        }
        let now = self.clock.now_ms();
        if state.ejection_left(now) > 0 {
            // Requests picked before the ejection still fail: not a new run.
            return;
        }
        let _gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        let until = state.ejected_until_ms.load(Ordering::Relaxed);
        if until > now {
            // Another failure of the same run got here first.
            return;
        }
        let ejected = self
            .states
            .iter()
            .filter(|s| s.ejection_left(now) > 0)
            .count();
        if ejected >= self.max_ejected() {
            // The run stays complete: the next failure tries again, and
            // succeeds once another backend's ejection has ended.
            return;
        }
        let max_ms = millis(self.config.max_ejection);
        let mut ejections = state.ejections.load(Ordering::Relaxed);
        if until != 0 && now - until >= max_ms {
            ejections = 0;
        }
        let factor = 1u64.checked_shl(ejections).unwrap_or(u64::MAX);
        let length = millis(self.config.base_ejection)
            .saturating_mul(factor)
            .min(max_ms);
        state
            .ejections
            .store(ejections.saturating_add(1), Ordering::Relaxed);
        state.consecutive_failures.store(0, Ordering::Relaxed);
        state
            .ejected_until_ms
            .store(now.saturating_add(length), Ordering::Relaxed);
    }
}

/// Milliseconds of `d`, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The clock read at most once per pick, and only if some candidate was
/// ever ejected.
struct LazyNow<'a> {
    clock: &'a dyn Clock,
    ms: Cell<Option<u64>>,
}

impl LazyNow<'_> {
    fn get(&self) -> u64 {
        if let Some(ms) = self.ms.get() {
            return ms;
        }
        let ms = self.clock.now_ms();
        self.ms.set(Some(ms));
        ms
    }
}

/// One pool's backends as of one snapshot: immutable after build except the
/// shared atomics.
pub struct PoolBalancer {
    balance: Balance,
    seed: u32,
    /// Backends with weight > 0, sorted by address, without duplicates.
    members: Box<[Member]>,
    /// Smooth weighted round-robin sequence of member indices, one period.
    schedule: Box<[u32]>,
    /// Maglev ring of member indices; empty unless [`Balance::Maglev`].
    ring: Box<[u32]>,
    /// Round-robin position, shared with the pool's other snapshots.
    cursor: Arc<AtomicU64>,
    /// Members' states (in member order) and ejection settings.
    outlier: Arc<Outlier>,
    /// Backends no longer members whose state still matters (in flight or
    /// ejected), sorted by address.
    retired: Box<[(SocketAddr, Arc<BackendState>)]>,
}

impl fmt::Debug for PoolBalancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBalancer")
            .field("balance", &self.balance)
            .field("backends", &self.members)
            .field("ring_size", &self.ring.len())
            .field("retired", &self.retired.len())
            .finish_non_exhaustive()
    }
}

impl PoolBalancer {
    /// Builds a pool's balancer for a new snapshot, with the Maglev ring
    /// sized for `healthy` and a [`MonotonicClock`]; see
    /// [`build_with`](Self::build_with), which the proxy should prefer so
    /// that the ring size does not follow health.
    ///
    /// `previous`: the pool's balancer in the last snapshot (its
    /// [`BackendState`]s are reused for addresses that stay). `healthy`: the
    /// backends the health checker and configuration consider up with
    /// weight > 0 (draining and down backends are not passed). `seed`:
    /// Maglev seed (the node's `hash_seed`).
    #[must_use]
    pub fn build(
        previous: Option<&PoolBalancer>,
        healthy: &[UpstreamSpec],
        balance: Balance,
        outlier: OutlierConfig,
        seed: u32,
    ) -> PoolBalancer {
        Self::build_with(previous, healthy, &BuildParams::new(balance, outlier, seed))
    }

    /// Builds a pool's balancer for a new snapshot.
    ///
    /// `previous` and `healthy` as for [`build`](Self::build). Backends of
    /// weight 0 in `healthy` are left out; of several with the same address
    /// the first counts. The result depends on the set of backends, not
    /// their order.
    #[must_use]
    pub fn build_with(
        previous: Option<&PoolBalancer>,
        healthy: &[UpstreamSpec],
        params: &BuildParams,
    ) -> PoolBalancer {
        let mut specs: Vec<UpstreamSpec> =
            healthy.iter().copied().filter(|s| s.weight > 0).collect();
        // Stable: among equal addresses the first given stays first.
        specs.sort_by_key(|s| s.addr);
        specs.dedup_by_key(|s| s.addr);
        if specs.len() > MAX_BACKENDS {
            warn!(
                backends = specs.len(),
                kept = MAX_BACKENDS,
                "L7 pool has more backends than the balancer takes; ignoring the rest"
            );
            specs.truncate(MAX_BACKENDS);
        }
        let members: Box<[Member]> = specs
            .iter()
            .map(|s| Member {
                addr: s.addr,
                weight: s.weight,
            })
            .collect();

        let states: Box<[Arc<BackendState>]> = members
            .iter()
            .map(|m| {
                previous
                    .and_then(|p| p.state_of(m.addr))
                    .map_or_else(Arc::default, Arc::clone)
            })
            .collect();
        let now = params.clock.now_ms();
        let mut retired: Vec<(SocketAddr, Arc<BackendState>)> = previous
            .into_iter()
            .flat_map(PoolBalancer::states)
            .filter(|(addr, state)| {
                state.worth_keeping(now) && members.binary_search_by_key(addr, |m| m.addr).is_err()
            })
            .map(|(addr, state)| (addr, Arc::clone(state)))
            .collect();
        retired.sort_by_key(|(addr, _)| *addr);

        let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
        let schedule = smooth_schedule(&weights);
        let ring = if params.balance == Balance::Maglev && !members.is_empty() {
            let size = ring_size(members.len().max(params.ring_backends));
            maglev_ring(&members, size, params.seed)
        } else {
            Box::default()
        };

        PoolBalancer {
            balance: params.balance,
            seed: params.seed,
            schedule,
            ring,
            cursor: previous.map_or_else(Arc::default, |p| Arc::clone(&p.cursor)),
            outlier: Arc::new(Outlier {
                config: params.outlier,
                clock: Arc::clone(&params.clock),
                states,
                gate: previous.map_or_else(Arc::default, |p| Arc::clone(&p.outlier.gate)),
            }),
            members,
            retired: retired.into_boxed_slice(),
        }
    }

    /// Picks a backend not in `exclude` (addresses this request already
    /// tried) and not ejected.
    ///
    /// `key`: the request's hash key for [`Balance::Maglev`] (ignored
    /// otherwise; without one a Maglev pool uses round robin). When every
    /// backend outside `exclude` is ejected, ejection is ignored: trying a
    /// suspect backend beats answering 503 for sure. Returns `None` only
    /// when every backend is in `exclude` (or the pool has none). The
    /// returned guard counts the request as in flight until dropped.
    #[must_use]
    pub fn pick(&self, key: Option<&[u8]>, exclude: &[SocketAddr]) -> Option<Picked> {
        if self.members.is_empty() {
            return None;
        }
        let now = LazyNow {
            clock: &*self.outlier.clock,
            ms: Cell::new(None),
        };
        let usable = |i: usize| !exclude.contains(&self.members[i].addr);
        let serving = |i: usize| usable(i) && !self.outlier.states[i].is_ejected(&now);
        let i = self
            .choose(key, &serving)
            .or_else(|| self.choose(key, &usable))?;
        let state = &self.outlier.states[i];
        state.inflight.fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            addr: self.members[i].addr,
            state: Arc::clone(state),
            outlier: Arc::clone(&self.outlier),
        })
    }

    /// The state of every backend, members first (in address order), then
    /// those that left the pool but still have requests in flight or an
    /// ejection running (weight 0): for status and metrics.
    #[must_use]
    pub fn backends(&self) -> Vec<BackendView> {
        let now = self.outlier.clock.now_ms();
        let view = |addr: SocketAddr, weight: u32, state: &BackendState| {
            let left = state.ejection_left(now);
            BackendView {
                addr,
                weight,
                inflight: state.inflight(),
                consecutive_failures: state.consecutive_failures(),
                ejections: state.ejections(),
                ejected: left > 0,
                ejected_remaining_ms: left,
            }
        };
        self.members
            .iter()
            .zip(&self.outlier.states)
            .map(|(m, state)| view(m.addr, m.weight, state))
            .chain(
                self.retired
                    .iter()
                    .map(|(addr, state)| view(*addr, 0, state)),
            )
            .collect()
    }

    /// How the pool balances.
    #[must_use]
    pub fn balance(&self) -> Balance {
        self.balance
    }

    /// Backends that take new requests.
    #[must_use]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no backend takes new requests.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Slots of the Maglev ring (0 unless [`Balance::Maglev`] with
    /// backends).
    #[must_use]
    pub fn ring_size(&self) -> usize {
        self.ring.len()
    }

    /// Every state this balancer carries, members then retired ones.
    fn states(&self) -> impl Iterator<Item = (SocketAddr, &Arc<BackendState>)> {
        self.members
            .iter()
            .map(|m| m.addr)
            .zip(self.outlier.states.iter())
            .chain(self.retired.iter().map(|(addr, state)| (*addr, state)))
    }

    fn state_of(&self, addr: SocketAddr) -> Option<&Arc<BackendState>> {
        if let Ok(i) = self.members.binary_search_by_key(&addr, |m| m.addr) {
            return Some(&self.outlier.states[i]);
        }
        self.retired
            .binary_search_by_key(&addr, |(a, _)| *a)
            .ok()
            .map(|i| &self.retired[i].1)
    }

    /// A member index for which `ok` holds, by the pool's algorithm.
    fn choose(&self, key: Option<&[u8]>, ok: &impl Fn(usize) -> bool) -> Option<usize> {
        match (self.balance, key) {
            (Balance::Maglev, Some(key)) if !self.ring.is_empty() => self.choose_maglev(key, ok),
            (Balance::LeastRequest, _) => self.choose_least(ok),
            _ => self.choose_round_robin(ok),
        }
    }

    fn choose_round_robin(&self, ok: &impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len() as u64;
        let mut ticket = 0;
        for _ in 0..DRAWS {
            ticket = self.cursor.fetch_add(1, Ordering::Relaxed);
            let i = self.schedule[index(ticket % len)] as usize;
            if ok(i) {
                return Some(i);
            }
        }
        self.weighted(ok, ticket)
    }

    fn choose_least(&self, ok: &impl Fn(usize) -> bool) -> Option<usize> {
        let a = self.draw(ok)?;
        let Some(b) = self.draw(&|i| i != a && ok(i)) else {
            return Some(a);
        };
        let (wa, wb) = (
            u64::from(self.members[a].weight),
            u64::from(self.members[b].weight),
        );
        let (la, lb) = (
            u64::from(self.outlier.states[a].inflight()),
            u64::from(self.outlier.states[b].inflight()),
        );
        // la / wa against lb / wb, without division.
        Some(match (la * wb).cmp(&(lb * wa)) {
            CmpOrdering::Less => a,
            CmpOrdering::Greater => b,
            CmpOrdering::Equal => {
                if random() % (wa + wb) < wa {
                    a
                } else {
                    b
                }
            }
        })
    }

    /// A random member for which `ok` holds, with probability proportional
    /// to weight.
    fn draw(&self, ok: &impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len() as u64;
        for _ in 0..DRAWS {
            let i = self.schedule[index(random() % len)] as usize;
            if ok(i) {
                return Some(i);
            }
        }
        self.weighted(ok, random())
    }

    fn choose_maglev(&self, key: &[u8], ok: &impl Fn(usize) -> bool) -> Option<usize> {
        let hash = bytes_hash(key, self.seed ^ KEY_SEED_XOR);
        let size = self.ring.len();
        let start = index(u64::from(hash)) % size;
        let n = self.members.len();
        let ok = |i: usize| i < n && ok(i);
        let i = self.ring[start] as usize;
        if ok(i) {
            return Some(i);
        }
        // Walking a whole ring for nothing would cost ~size steps.
        if !(0..n).any(ok) {
            return None;
        }
        for step in 1..size {
            let i = self.ring[(start + step) % size] as usize;
            if ok(i) {
                return Some(i);
            }
        }
        // The usable backends own no slot (weights tiny next to the others').
        self.weighted(&ok, u64::from(hash))
    }

    /// Weighted choice among the members for which `ok` holds, driven by
    /// `r`: the fallback when draws keep hitting members that cannot take
    /// the request. `O(backends)`.
    fn weighted(&self, ok: &impl Fn(usize) -> bool, r: u64) -> Option<usize> {
        let total: u64 = (0..self.members.len())
            .filter(|&i| ok(i))
            .map(|i| u64::from(self.members[i].weight))
            .sum();
        if total == 0 {
            return None;
        }
        let mut x = mix64(r) % total;
        for i in 0..self.members.len() {
            if !ok(i) {
                continue;
            }
            let w = u64::from(self.members[i].weight);
            if x < w {
                return Some(i);
            }
            x -= w;
        }
        None
    }
}

/// A backend's state as of a [`PoolBalancer::backends`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BackendView {
    /// The backend.
    pub addr: SocketAddr,
    /// Its weight; 0 = no longer in the pool (down, draining or removed)
    /// but requests are still in flight or an ejection runs.
    pub weight: u32,
    /// Requests in flight.
    pub inflight: u32,
    /// Failures since the last success or ejection.
    pub consecutive_failures: u32,
    /// Times ejected.
    pub ejections: u32,
    /// Whether ejected now.
    pub ejected: bool,
    /// Milliseconds of ejection left (0 when not ejected).
    pub ejected_remaining_ms: u64,
}

/// A backend picked for one request: counts the request as in flight until
/// dropped, and takes the request's outcome for outlier detection.
pub struct Picked {
    /// Where to send the request.
    pub addr: SocketAddr,
    state: Arc<BackendState>,
    outlier: Arc<Outlier>,
}

impl fmt::Debug for Picked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Picked")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Picked {
    /// Records a success (anything but a failure): ends the backend's run
    /// of failures.
    pub fn success(&self) {
        // A load first: most successes change nothing, and a store would
        // take the cache line from every other core picking this backend.
        if self.state.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.state.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failure: a connect failure, a timeout, or a 5xx answer when
    /// the pool counts those. Completing a run of
    /// [`OutlierConfig::consecutive_failures`] ejects the backend unless the
    /// pool already has its most ejected backends.
    pub fn failure(&self) {
        self.outlier.record_failure(&self.state);
    }

    /// The backend's live state.
    #[must_use]
    pub fn state(&self) -> &BackendState {
        &self.state
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.state.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The smallest of [`RING_SIZES`] with [`SLOTS_PER_BACKEND`] slots per
/// backend, or the largest.
fn ring_size(backends: usize) -> u32 {
    let wanted = u64::try_from(backends)
        .unwrap_or(u64::MAX)
        .saturating_mul(SLOTS_PER_BACKEND);
    RING_SIZES
        .iter()
        .copied()
        .find(|&m| u64::from(m) >= wanted)
        .unwrap_or(RING_SIZES[RING_SIZES.len() - 1])
}

/// Maglev ring of member indices; empty (round robin) if it cannot be built.
fn maglev_ring(members: &[Member], size: u32, seed: u32) -> Box<[u32]> {
    let keys: Vec<Vec<u8>> = members.iter().map(|m| identity(m.addr)).collect();
    let backends: Vec<RingBackend<'_>> = members
        .iter()
        .zip(&keys)
        .enumerate()
        .map(|(i, (m, key))| RingBackend {
            id: member_id(i),
            key,
            weight: m.weight,
        })
        .collect();
    match maglev::build(&backends, size, seed) {
        Ok(ring) => ring.into_boxed_slice(),
        Err(e) => {
            // Unreachable with the sizes and limits above; degrade, do not fail.
            warn!(error = %e, "L7 Maglev ring not built; the pool uses round robin");
            Box::default()
        }
    }
}

/// A backend's identity bytes for its ring permutation: address octets then
/// port, network order (6 bytes for IPv4, 18 for IPv6).
fn identity(addr: SocketAddr) -> Vec<u8> {
    let mut key = match addr.ip() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    key.extend_from_slice(&addr.port().to_be_bytes());
    key
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "member indices are below MAX_BACKENDS < 2^32"
)]
fn member_id(i: usize) -> u32 {
    i as u32
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "callers reduce modulo a slice length first, which fits usize"
)]
fn index(x: u64) -> usize {
    x as usize
}

/// Greatest common divisor.
fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One period of nginx's smooth weighted round robin over `weights` (all >
/// 0), as indices: every round each backend gains its weight, the one with
/// the most (the first on a tie) is picked and loses the total. Weights are
/// divided by their greatest common divisor first, and scaled down when
/// they still sum to more than [`MAX_SCHEDULE`].
fn smooth_schedule(weights: &[u32]) -> Box<[u32]> {
    let divisor = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    let mut w: Vec<i64> = weights.iter().map(|&x| i64::from(x / divisor)).collect();
    let total: i64 = w.iter().sum();
    if total > MAX_SCHEDULE {
        for x in &mut w {
            *x = (*x * MAX_SCHEDULE / total).max(1);
        }
    }
    if w.iter().all(|&x| x == 1) {
        // Equal weights: the algorithm's order is plain rotation.
        return (0..weights.len()).map(member_id).collect();
    }
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, &x) in current.iter_mut().zip(&w) {
            *c += x;
        }
        let best = (1..current.len()).fold(
            0,
            |best, i| {
                if current[i] > current[best] { i } else { best }
            },
        );
        current[best] -= total;
        schedule.push(member_id(best));
    }
    schedule.into_boxed_slice()
}

/// splitmix64's finaliser: spreads nearby values (consecutive tickets)
/// over the whole range.
fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A per-thread xorshift64* generator, seeded from the OS-random
/// [`RandomState`]: no shared state between cores on the pick path.
fn random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> =
            Cell::new(RandomState::new().hash_one(std::thread::current().id()) | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const SEED: u32 = 0x1b_5eed;

    /// A clock the test moves by hand.
    #[derive(Debug)]
    struct ManualClock(AtomicU64);

    impl ManualClock {
        fn new() -> Arc<Self> {
            Arc::new(Self(AtomicU64::new(1_000)))
        }

        fn advance(&self, ms: u64) {
            self.0.fetch_add(ms, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 8080))
    }

    fn specs(weights: &[u32]) -> Vec<UpstreamSpec> {
        (1u8..)
            .zip(weights)
            .map(|(i, &weight)| UpstreamSpec {
                addr: addr(i),
                weight,
            })
            .collect()
    }

    fn params(balance: Balance, outlier: OutlierConfig, clock: &Arc<ManualClock>) -> BuildParams {
        BuildParams {
            balance,
            outlier,
            seed: SEED,
            ring_backends: 0,
            clock: Arc::clone(clock) as Arc<dyn Clock>,
        }
    }

    fn pool(balance: Balance, weights: &[u32]) -> PoolBalancer {
        PoolBalancer::build(
            None,
            &specs(weights),
            balance,
            OutlierConfig::default(),
            SEED,
        )
    }

    fn pick(pool: &PoolBalancer, key: Option<&[u8]>, exclude: &[SocketAddr]) -> SocketAddr {
        pool.pick(key, exclude)
            .expect("a backend outside exclude")
            .addr
    }

    fn counts(picks: impl IntoIterator<Item = SocketAddr>) -> HashMap<SocketAddr, usize> {
        let mut counts = HashMap::new();
        for a in picks {
            *counts.entry(a).or_default() += 1;
        }
        counts
    }

    fn view(pool: &PoolBalancer, a: SocketAddr) -> BackendView {
        pool.backends()
            .into_iter()
            .find(|v| v.addr == a)
            .unwrap_or_else(|| panic!("{a} not in the pool's view"))
    }

    /// Fails `n` requests on backend `a` (forced there by excluding the others).
    fn fail(pool: &PoolBalancer, a: SocketAddr, n: u32) {
        let others: Vec<SocketAddr> = pool
            .backends()
            .iter()
            .map(|v| v.addr)
            .filter(|&x| x != a)
            .collect();
        for _ in 0..n {
            let p = pool.pick(None, &others).expect("a pick");
            assert_eq!(p.addr, a, "forced pick lands on {a}");
            p.failure();
        }
    }

    fn max_run(picks: &[SocketAddr]) -> usize {
        picks
            .chunk_by(|a, b| a == b)
            .map(<[SocketAddr]>::len)
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn ring_sizes_are_prime_and_sized_per_backend() {
        for m in RING_SIZES {
            assert!(maglev::is_prime(m), "{m} is prime");
        }
        assert_eq!(ring_size(1), 1021, "1 backend");
        assert_eq!(ring_size(10), 1021, "10 backends");
        assert_eq!(ring_size(11), 4099, "11 backends");
        assert_eq!(ring_size(655), 65_537, "655 backends");
        assert_eq!(
            ring_size(100_000),
            1_048_573,
            "beyond the list: the largest"
        );
    }

    #[test]
    fn round_robin_is_exact_and_smooth() {
        let p = pool(Balance::RoundRobin, &[1, 2, 3]);
        let picks: Vec<SocketAddr> = (0..600).map(|_| pick(&p, None, &[])).collect();
        let c = counts(picks.iter().copied());
        assert_eq!(c[&addr(1)], 100, "weight 1");
        assert_eq!(c[&addr(2)], 200, "weight 2");
        assert_eq!(c[&addr(3)], 300, "weight 3");
        assert!(
            max_run(&picks) <= 2,
            "1,2,3 interleaves: {:?}",
            &picks[..12]
        );

        let p = pool(Balance::RoundRobin, &[1, 1, 1]);
        let picks: Vec<SocketAddr> = (0..300).map(|_| pick(&p, None, &[])).collect();
        assert_eq!(max_run(&picks), 1, "1,1,1 rotates");

        // nginx's documented sequence for weights 5,1,1: a a b a c a a.
        let p = pool(Balance::RoundRobin, &[5, 1, 1]);
        let picks: Vec<SocketAddr> = (0..7).map(|_| pick(&p, None, &[])).collect();
        let [a, b, c] = [addr(1), addr(2), addr(3)];
        assert_eq!(picks, [a, a, b, a, c, a, a], "nginx's smooth sequence");
    }

    #[test]
    fn round_robin_skips_keep_ratios() {
        // Excluding the heaviest leaves the others at 1:2.
        let p = pool(Balance::RoundRobin, &[1, 2, 3]);
        let c = counts((0..600).map(|_| pick(&p, None, &[addr(3)])));
        assert_eq!(c.get(&addr(3)), None, "excluded never picked");
        assert_eq!(c[&addr(1)] + c[&addr(2)], 600, "all picks elsewhere");
        assert!(
            (190..=210).contains(&c[&addr(1)]),
            "weight 1 keeps a third: {c:?}"
        );
    }

    #[test]
    fn large_weights_are_scaled_into_the_schedule() {
        let weights: Vec<u32> = (1..=300).map(|i| i * 997).collect();
        let schedule = smooth_schedule(&weights);
        assert!(
            schedule.len() <= 16_384 + 300,
            "schedule of {} entries",
            schedule.len()
        );
        let mut per = vec![0usize; 300];
        for &i in &schedule {
            per[i as usize] += 1;
        }
        assert!(per.iter().all(|&c| c >= 1), "every backend has an entry");
        assert!(per[299] > 100 * per[0], "weights still count: {per:?}");
        assert_eq!(smooth_schedule(&[6, 4]).len(), 5, "gcd divides weights");
    }

    #[test]
    fn least_request_avoids_loaded_backends() {
        let p = pool(Balance::LeastRequest, &[1, 1, 1]);
        let held: Vec<Picked> = (0..5)
            .map(|_| p.pick(None, &[addr(2), addr(3)]).expect("forced pick"))
            .collect();
        assert_eq!(view(&p, addr(1)).inflight, 5, "guards count in flight");
        let c = counts((0..1000).map(|_| pick(&p, None, &[])));
        assert_eq!(c.get(&addr(1)), None, "loaded backend loses every pair");
        drop(held);
        assert_eq!(view(&p, addr(1)).inflight, 0, "drop ends the request");

        // One request on each of the others: the idle one wins every pair
        // it is in (two of three), the others split the third.
        let _b = p.pick(None, &[addr(1), addr(3)]).expect("forced pick");
        let _c = p.pick(None, &[addr(1), addr(2)]).expect("forced pick");
        let c = counts((0..3000).map(|_| pick(&p, None, &[])));
        assert!(
            (1800..=2200).contains(&c[&addr(1)]),
            "idle backend wins its pairs: {c:?}"
        );
    }

    #[test]
    fn least_request_spreads_equal_load() {
        let p = pool(Balance::LeastRequest, &[1, 1, 1]);
        let c = counts((0..10_000).map(|_| pick(&p, None, &[])));
        for i in 1..=3 {
            let n = c[&addr(i)];
            assert!((3000..=3667).contains(&n), "backend {i}: {n} of 10000");
        }
        // Idle pool, weights 1:3: split by weight.
        let p = pool(Balance::LeastRequest, &[1, 3]);
        let c = counts((0..10_000).map(|_| pick(&p, None, &[])));
        let light = c[&addr(1)];
        assert!((2250..=2750).contains(&light), "weight 1 of 4: {light}");
    }

    #[test]
    fn maglev_is_sticky_and_spreads() {
        let p = pool(Balance::Maglev, &[1, 1, 1]);
        assert_eq!(p.ring_size(), 1021, "3 backends: 1021 slots");
        let keys: Vec<Vec<u8>> = (0..1000)
            .map(|i| format!("client-{i}").into_bytes())
            .collect();
        let first: Vec<SocketAddr> = keys.iter().map(|k| pick(&p, Some(k), &[])).collect();
        let again: Vec<SocketAddr> = keys.iter().map(|k| pick(&p, Some(k), &[])).collect();
        assert_eq!(first, again, "same key, same backend");
        let c = counts(first.iter().copied());
        for i in 1..=3 {
            let n = c[&addr(i)];
            assert!((267..=400).contains(&n), "backend {i}: {n} of 1000 keys");
        }
        // Another node (same config, same seed) agrees.
        let other = pool(Balance::Maglev, &[1, 1, 1]);
        let there: Vec<SocketAddr> = keys.iter().map(|k| pick(&other, Some(k), &[])).collect();
        assert_eq!(first, there, "independent builds agree");
        // No key: round robin.
        let picks: Vec<SocketAddr> = (0..6).map(|_| pick(&p, None, &[])).collect();
        assert_eq!(max_run(&picks), 1, "keyless Maglev rotates");
    }

    #[test]
    fn maglev_removal_moves_only_the_removed_backends_keys() {
        let clock = ManualClock::new();
        let par = params(Balance::Maglev, OutlierConfig::default(), &clock);
        let all = specs(&[1, 1, 1, 1, 1]);
        let before = PoolBalancer::build_with(None, &all, &par);
        let after =
            PoolBalancer::build_with(Some(&before), &[all[0], all[1], all[3], all[4]], &par);
        assert_eq!(before.ring_size(), after.ring_size(), "same ring size");
        let mut stayed = 0;
        let mut others = 0;
        for i in 0..2000 {
            let key = format!("user-{i}").into_bytes();
            let was = pick(&before, Some(&key), &[]);
            let now = pick(&after, Some(&key), &[]);
            assert_ne!(now, addr(3), "removed backend never picked");
            if was != addr(3) {
                others += 1;
                stayed += usize::from(was == now);
            }
        }
        // Maglev's rebuild may shift a few slots between survivors (the
        // paper's "minimal disruption" is not zero): about 1% here.
        assert!(
            stayed * 100 >= others * 97,
            "{stayed} of {others} keys stayed"
        );
    }

    #[test]
    fn maglev_exclusion_is_deterministic() {
        let p = pool(Balance::Maglev, &[1, 1, 1]);
        let other = pool(Balance::Maglev, &[1, 1, 1]);
        let mut moved = Vec::new();
        for i in 0..300 {
            let key = format!("k{i}").into_bytes();
            let home = pick(&p, Some(&key), &[]);
            let alt = pick(&p, Some(&key), &[home]);
            assert_ne!(alt, home, "alternative differs from the excluded");
            assert_eq!(alt, pick(&p, Some(&key), &[home]), "same alternative again");
            assert_eq!(
                alt,
                pick(&other, Some(&key), &[home]),
                "and on another node"
            );
            let last = pick(&p, Some(&key), &[home, alt]);
            assert!(
                last != home && last != alt,
                "third choice is the third backend"
            );
            if home == addr(1) {
                moved.push(alt);
            }
        }
        // The excluded backend's keys spread over both others.
        let c = counts(moved);
        assert_eq!(c.len(), 2, "alternatives use both others: {c:?}");
    }

    #[test]
    fn exclude_all_and_draining() {
        for balance in [Balance::RoundRobin, Balance::LeastRequest, Balance::Maglev] {
            let p = pool(balance, &[1, 2, 3]);
            let all = [addr(1), addr(2), addr(3)];
            assert!(
                p.pick(Some(b"k"), &all).is_none(),
                "{balance:?}: all excluded"
            );
            assert!(
                p.pick(None, &all).is_none(),
                "{balance:?}: all excluded, no key"
            );

            // Backend 2 drains: left out by the caller, or passed with weight 0.
            let s = specs(&[1, 2, 3]);
            let left_out =
                PoolBalancer::build(None, &[s[0], s[2]], balance, OutlierConfig::default(), SEED);
            let zero = PoolBalancer::build(
                None,
                &specs(&[1, 0, 3]),
                balance,
                OutlierConfig::default(),
                SEED,
            );
            for q in [&left_out, &zero] {
                assert_eq!(q.len(), 2, "{balance:?}: two backends take requests");
                for i in 0..300 {
                    let key = format!("k{i}").into_bytes();
                    assert_ne!(
                        pick(q, Some(&key), &[]),
                        addr(2),
                        "{balance:?}: draining picked"
                    );
                    assert_ne!(pick(q, None, &[]), addr(2), "{balance:?}: draining picked");
                }
            }
        }
        let empty = pool(Balance::RoundRobin, &[]);
        assert!(empty.pick(None, &[]).is_none(), "empty pool");
        assert!(empty.is_empty(), "empty pool is empty");
    }

    #[test]
    fn failures_eject_with_backoff() {
        let clock = ManualClock::new();
        let par = params(Balance::RoundRobin, OutlierConfig::default(), &clock);
        let p = PoolBalancer::build_with(None, &specs(&[1, 1, 1]), &par);
        let a = addr(1);

        fail(&p, a, 4);
        assert!(!view(&p, a).ejected, "4 failures do not eject");
        assert_eq!(view(&p, a).consecutive_failures, 4, "4 counted");
        fail(&p, a, 1);
        let v = view(&p, a);
        assert!(v.ejected, "5th failure ejects");
        assert_eq!(v.ejected_remaining_ms, 10_000, "first ejection: base");
        assert_eq!(v.consecutive_failures, 0, "ejection restarts the count");
        assert!(
            (0..300).all(|_| pick(&p, None, &[]) != a),
            "ejected backend is skipped"
        );

        clock.advance(9_999);
        assert!(
            (0..30).all(|_| pick(&p, None, &[]) != a),
            "still ejected at 9.999s"
        );
        clock.advance(1);
        assert!((0..30).any(|_| pick(&p, None, &[]) == a), "back after 10s");

        fail(&p, a, 5);
        assert_eq!(
            view(&p, a).ejected_remaining_ms,
            20_000,
            "second ejection: twice"
        );
        clock.advance(20_000);
        fail(&p, a, 5);
        assert_eq!(
            view(&p, a).ejected_remaining_ms,
            40_000,
            "third: four times"
        );
        assert_eq!(view(&p, a).ejections, 3, "three ejections");

        // Ejections cap at max_ejection.
        for _ in 0..6 {
            clock.advance(view(&p, a).ejected_remaining_ms);
            fail(&p, a, 5);
        }
        assert_eq!(view(&p, a).ejected_remaining_ms, 300_000, "capped at 300s");

        // In service for max_ejection after the last one: back to base.
        clock.advance(300_000 + 300_000);
        fail(&p, a, 5);
        assert_eq!(
            view(&p, a).ejected_remaining_ms,
            10_000,
            "forgiven: base again"
        );
    }

    #[test]
    fn success_ends_a_run_and_zero_disables() {
        let clock = ManualClock::new();
        let par = params(Balance::RoundRobin, OutlierConfig::default(), &clock);
        let p = PoolBalancer::build_with(None, &specs(&[1, 1, 1]), &par);
        fail(&p, addr(1), 4);
        p.pick(None, &[addr(2), addr(3)])
            .expect("forced pick")
            .success();
        fail(&p, addr(1), 4);
        assert!(!view(&p, addr(1)).ejected, "success resets the run");

        let off = OutlierConfig {
            consecutive_failures: 0,
            ..OutlierConfig::default()
        };
        let p = PoolBalancer::build_with(
            None,
            &specs(&[1, 1, 1]),
            &params(Balance::RoundRobin, off, &clock),
        );
        fail(&p, addr(1), 100);
        assert!(!view(&p, addr(1)).ejected, "0 disables ejection");
    }

    #[test]
    fn max_ejected_percent_is_respected() {
        let clock = ManualClock::new();
        let par = params(Balance::RoundRobin, OutlierConfig::default(), &clock);
        let p = PoolBalancer::build_with(None, &specs(&[1, 1]), &par);
        fail(&p, addr(1), 5);
        fail(&p, addr(2), 5);
        assert!(view(&p, addr(1)).ejected, "first ejected");
        assert!(!view(&p, addr(2)).ejected, "2 backends at 50%: one at most");
        assert_eq!(
            p.backends().iter().filter(|v| v.ejected).count(),
            1,
            "one ejected"
        );
        // Once the first is back, the second's next failure ejects it.
        clock.advance(10_000);
        fail(&p, addr(2), 1);
        assert!(view(&p, addr(2)).ejected, "run still complete: ejected");

        // One backend at 50%: never ejected.
        let solo = PoolBalancer::build_with(None, &specs(&[1]), &par);
        fail(&solo, addr(1), 50);
        assert!(!view(&solo, addr(1)).ejected, "a lone backend stays");
    }

    #[test]
    fn all_ejected_still_picks() {
        let clock = ManualClock::new();
        let all_may_go = OutlierConfig {
            max_ejected_percent: 100,
            ..OutlierConfig::default()
        };
        for balance in [Balance::RoundRobin, Balance::LeastRequest, Balance::Maglev] {
            let p = PoolBalancer::build_with(
                None,
                &specs(&[1, 1]),
                &params(balance, all_may_go, &clock),
            );
            fail(&p, addr(1), 5);
            fail(&p, addr(2), 5);
            assert!(
                p.backends().iter().all(|v| v.ejected),
                "{balance:?}: both ejected"
            );
            let c = counts((0..200).map(|i| pick(&p, Some(&[i]), &[])));
            assert_eq!(c.len(), 2, "{balance:?}: both still serve: {c:?}");
            // With one of them excluded, the other (ejected) one is tried.
            assert_eq!(
                pick(&p, Some(b"k"), &[addr(1)]),
                addr(2),
                "{balance:?}: retry"
            );
            clock.advance(10_000);
        }
    }

    #[test]
    fn state_survives_rebuild() {
        let clock = ManualClock::new();
        let outlier = OutlierConfig {
            max_ejected_percent: 100,
            ..OutlierConfig::default()
        };
        let par = params(Balance::RoundRobin, outlier, &clock);
        let s = specs(&[1, 1, 1, 1]);
        let old = PoolBalancer::build_with(None, &s[..3], &par);
        let guard = old.pick(None, &[addr(2), addr(3)]).expect("forced pick");
        fail(&old, addr(2), 5);

        let new = PoolBalancer::build_with(Some(&old), &[s[0], s[1], s[3]], &par);
        assert_eq!(view(&new, addr(1)).inflight, 1, "in flight carried over");
        assert!(view(&new, addr(2)).ejected, "ejection carried over");
        assert_eq!(
            view(&new, addr(4)),
            BackendView {
                addr: addr(4),
                weight: 1,
                inflight: 0,
                consecutive_failures: 0,
                ejections: 0,
                ejected: false,
                ejected_remaining_ms: 0,
            },
            "a new backend starts clean"
        );
        assert!(
            (0..30).all(|_| pick(&new, None, &[]) != addr(2)),
            "still ejected"
        );
        drop(guard);
        assert_eq!(
            view(&new, addr(1)).inflight,
            0,
            "old guard updates the new view"
        );

        // Leaving while busy: kept (weight 0) until idle, never picked.
        let busy = new.pick(None, &[addr(2), addr(4)]).expect("forced pick");
        let newer = PoolBalancer::build_with(Some(&new), &[s[1], s[3]], &par);
        let v = view(&newer, addr(1));
        assert_eq!(
            (v.weight, v.inflight),
            (0, 1),
            "draining backend still shown"
        );
        assert!(
            (0..30).all(|_| pick(&newer, None, &[]) != addr(1)),
            "draining never picked"
        );
        // ...and gets its state back if it returns meanwhile.
        let back = PoolBalancer::build_with(Some(&newer), &s, &par);
        assert_eq!(
            view(&back, addr(1)).inflight,
            1,
            "returning backend keeps its count"
        );
        drop(busy);
        let idle = PoolBalancer::build_with(Some(&back), &[s[1], s[3]], &par);
        assert!(
            idle.backends().iter().all(|v| v.addr != addr(1)),
            "idle leaver forgotten"
        );
        // Ejected while down: the ejection holds when it returns.
        let down = PoolBalancer::build_with(Some(&idle), &[s[3]], &par);
        let up = PoolBalancer::build_with(Some(&down), &s, &par);
        assert!(
            view(&up, addr(2)).ejected,
            "ejection survives a health flap"
        );
    }

    #[test]
    fn round_robin_position_survives_rebuild() {
        let p = pool(Balance::RoundRobin, &[1, 1, 1]);
        assert_eq!(pick(&p, None, &[]), addr(1), "first");
        assert_eq!(pick(&p, None, &[]), addr(2), "second");
        let q = PoolBalancer::build(
            Some(&p),
            &specs(&[1, 1, 1]),
            Balance::RoundRobin,
            OutlierConfig::default(),
            SEED,
        );
        assert_eq!(
            pick(&q, None, &[]),
            addr(3),
            "rebuild continues the rotation"
        );
    }

    #[test]
    fn build_ignores_order_and_duplicates() {
        let s = specs(&[1, 2, 3]);
        let reversed: Vec<UpstreamSpec> = s.iter().rev().copied().collect();
        let dup = [
            s[0],
            s[1],
            s[2],
            UpstreamSpec {
                addr: addr(1),
                weight: 9,
            },
        ];
        let a = pool(Balance::Maglev, &[1, 2, 3]);
        let b = PoolBalancer::build(
            None,
            &reversed,
            Balance::Maglev,
            OutlierConfig::default(),
            SEED,
        );
        let c = PoolBalancer::build(None, &dup, Balance::Maglev, OutlierConfig::default(), SEED);
        assert_eq!(c.len(), 3, "duplicate address counted once");
        assert_eq!(view(&c, addr(1)).weight, 1, "first duplicate wins");
        for i in 0..200 {
            let key = [i];
            let want = pick(&a, Some(&key), &[]);
            assert_eq!(pick(&b, Some(&key), &[]), want, "order does not matter");
            assert_eq!(pick(&c, Some(&key), &[]), want, "duplicate ignored");
        }
    }

    #[test]
    fn ring_is_sized_for_configured_backends() {
        let clock = ManualClock::new();
        let mut par = params(Balance::Maglev, OutlierConfig::default(), &clock);
        par.ring_backends = 11;
        let p = PoolBalancer::build_with(None, &specs(&[1; 10]), &par);
        assert_eq!(
            p.ring_size(),
            4099,
            "sized for 11 configured, not 10 healthy"
        );
    }

    /// Timing, release only:
    /// `cargo test --release -p lb-userspace --lib l7::upstream::tests::timing -- --ignored --nocapture`
    #[test]
    #[ignore = "timing; run in release with --nocapture"]
    fn timing() {
        let clock = ManualClock::new();
        let ranged: Vec<u32> = (1..=1000).collect();
        for balance in [Balance::RoundRobin, Balance::LeastRequest, Balance::Maglev] {
            let par = params(balance, OutlierConfig::default(), &clock);
            let start = std::time::Instant::now();
            let p = PoolBalancer::build_with(None, &specs_n(&ranged), &par);
            let built = start.elapsed();
            let start = std::time::Instant::now();
            for i in 0u32..1_000_000 {
                let key = i.to_le_bytes();
                drop(p.pick(Some(&key), &[]));
            }
            let per_pick = start.elapsed() / 1_000_000;
            println!(
                "{balance:?}, 1000 backends of weights 1..=1000: build {built:?}, pick {per_pick:?}"
            );
        }
    }

    /// Backends `10.1.x.y:8080`, as many as `weights`.
    fn specs_n(weights: &[u32]) -> Vec<UpstreamSpec> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                let [_, _, hi, lo] = u32::try_from(i).expect("small").to_be_bytes();
                UpstreamSpec {
                    addr: SocketAddr::from(([10, 1, hi, lo], 8080)),
                    weight,
                }
            })
            .collect()
    }

    fn balances() -> impl Strategy<Value = Balance> {
        prop_oneof![
            Just(Balance::Maglev),
            Just(Balance::LeastRequest),
            Just(Balance::RoundRobin)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn picks_stay_in_the_pool_and_out_of_exclude(
            backends in prop::collection::vec((0u8..16, 0u32..6), 0..12),
            excluded in prop::collection::vec(0u8..16, 0..8),
            next in prop::collection::vec((0u8..16, 0u32..6), 0..12),
            balance in balances(),
            keys in prop::collection::vec(prop::option::of(prop::collection::vec(any::<u8>(), 0..20)), 1..20),
            failures in 0u32..12,
            percent in 0u8..=255,
        ) {
            let to_specs = |v: &[(u8, u32)]| -> Vec<UpstreamSpec> {
                v.iter().map(|&(i, weight)| UpstreamSpec { addr: addr(i), weight }).collect()
            };
            let clock = ManualClock::new();
            let outlier = OutlierConfig { max_ejected_percent: percent, ..OutlierConfig::default() };
            let par = params(balance, outlier, &clock);
            let exclude: Vec<SocketAddr> = excluded.iter().map(|&i| addr(i)).collect();
            let first = PoolBalancer::build_with(None, &to_specs(&backends), &par);
            let second = PoolBalancer::build_with(Some(&first), &to_specs(&next), &par);
            for (p, set) in [(&first, &backends), (&second, &next)] {
                let live: Vec<SocketAddr> = set.iter().filter(|&&(_, w)| w > 0).map(|&(i, _)| addr(i)).collect();
                let reachable = live.iter().any(|a| !exclude.contains(a));
                let mut held = Vec::new();
                for key in &keys {
                    let got = p.pick(key.as_deref(), &exclude);
                    prop_assert_eq!(got.is_some(), reachable, "None only when all excluded");
                    if let Some(got) = got {
                        prop_assert!(live.contains(&got.addr), "{} not in the pool", got.addr);
                        prop_assert!(!exclude.contains(&got.addr), "{} excluded", got.addr);
                        for _ in 0..failures {
                            got.failure();
                        }
                        held.push(got);
                    }
                }
                let ejected = p.backends().iter().filter(|v| v.weight > 0 && v.ejected).count();
                prop_assert!(
                    ejected <= p.len() * usize::from(percent.min(100)) / 100,
                    "{} ejected of {}", ejected, p.len()
                );
                // Let ejections end: the limit holds when ejecting, and a
                // smaller next pool may inherit more than its share.
                clock.advance(300_001);
            }
        }
    }
}
