//! Open-loop paced load: tokens at a fixed rate, taken by a fixed set of
//! workers (connections, or exchange slots), each timing what it does with
//! its token. Tenant B's steady load and tenant A's L7 flood both run on
//! it; only what a worker does differs ([`Exchange`]).
//!
//! A ticker adds the tokens due every millisecond (the rate is exact over
//! the run, whatever the timer's resolution). A token nobody takes within
//! the tick (all workers busy) is counted as late: a client with too few
//! workers would otherwise hide the server's slowness by sending less
//! (coordinated omission). Only exchanges that start after `measure_from`
//! are counted, so the first part of a run is a warm-up.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use tokio::{sync::Semaphore, task::JoinSet};

/// How often the ticker hands out the tokens that are due.
const TICK: Duration = Duration::from_millis(1);

/// One worker: does one exchange per token.
pub trait Exchange: Send + 'static {
    /// One exchange; `Ok(200)` (or any 2xx) is a success whose latency
    /// counts, another status an answered refusal, `Err` a failure.
    fn once(&mut self) -> impl std::future::Future<Output = Result<u16>> + Send;
}

/// When and how fast.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Tokens per second.
    pub rate: f64,
    /// The whole run.
    pub duration: Duration,
    /// Exchanges that start before this offset are not counted.
    pub measure_from: Duration,
}

/// What one run's measured part saw.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Latency of every successful exchange, in microseconds.
    pub ok_us: Vec<u32>,
    /// Answers that were not successes, by status.
    pub refused: BTreeMap<u16, u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Tokens due while every worker was busy (taken later, or never).
    pub late: u64,
    /// Tokens never taken before the run ended.
    pub missed: u64,
    /// Length of the measured part, in seconds.
    pub seconds: f64,
}

impl Tally {
    pub fn ok(&self) -> u64 {
        u64::try_from(self.ok_us.len()).unwrap_or(u64::MAX)
    }

    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    /// Every exchange that started in the measured part.
    pub fn attempts(&self) -> u64 {
        self.ok() + self.refused_total() + self.errors
    }

    /// Adds another run's measured part (rounds pooled into one figure).
    pub fn merge(&mut self, other: &Tally) {
        self.ok_us.extend_from_slice(&other.ok_us);
        for (status, n) in &other.refused {
            *self.refused.entry(*status).or_default() += n;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.late += other.late;
        self.missed += other.missed;
        self.seconds += other.seconds;
    }
}

/// Runs `workers` under `pace` on the current runtime and returns the
/// measured part's tally.
pub async fn run<W: Exchange>(workers: Vec<W>, pace: Pace) -> Tally {
    let tokens = Arc::new(Semaphore::new(0));
    let late = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_at = start + pace.measure_from;
    let mut set = JoinSet::new();
    for mut w in workers {
        let tokens = tokens.clone();
        set.spawn(async move {
            let mut t = Tally::default();
            while let Ok(permit) = tokens.acquire().await {
                permit.forget();
                let t0 = Instant::now();
                let r = w.once().await;
                if t0 < measure_at {
                    continue;
                }
                match r {
                    Ok(status) if (200..300).contains(&status) => t
                        .ok_us
                        .push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX)),
                    Ok(status) => *t.refused.entry(status).or_default() += 1,
                    Err(e) => {
                        t.errors += 1;
                        t.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            t
        });
    }
    let ticker = {
        let (tokens, late) = (tokens.clone(), late.clone());
        async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut issued = 0u64;
            // Tokens are taken in order: those below this index were
            // already counted late.
            let mut late_upto = 0u64;
            loop {
                tick.tick().await;
                let elapsed = start.elapsed();
                let waiting = u64::try_from(tokens.available_permits()).unwrap_or(0);
                let first_waiting = (issued - waiting.min(issued)).max(late_upto);
                if issued > first_waiting && start + elapsed >= measure_at {
                    late.fetch_add(issued - first_waiting, Ordering::Relaxed);
                    late_upto = issued;
                }
                if elapsed >= pace.duration {
                    tokens.close();
                    return waiting;
                }
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "a positive token count far below 2^53"
                )]
                let due = (elapsed.as_secs_f64() * pace.rate) as u64;
                if due > issued {
                    tokens.add_permits(usize::try_from(due - issued).unwrap_or(usize::MAX));
                    issued = due;
                }
            }
        }
    };
    let missed = ticker.await;
    let mut total = Tally::default();
    while let Some(done) = set.join_next().await {
        if let Ok(t) = done {
            total.merge(&t);
        }
    }
    total.late = late.load(Ordering::Relaxed);
    total.missed = missed;
    total.seconds = pace
        .duration
        .saturating_sub(pace.measure_from)
        .as_secs_f64();
    total
}

/// The `q` quantile of a tally's latencies, in milliseconds.
pub fn quantile_ms(t: &Tally, q: f64) -> f64 {
    let mut us = t.ok_us.clone();
    us.sort_unstable();
    crate::load::percentile(&us, q) / 1000.0
}
