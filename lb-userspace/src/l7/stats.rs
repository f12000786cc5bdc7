//! Per-tenant L7 counters: plain atomics, updated on the request path and
//! read by `/metrics` and `lbctl stats`. They live in the routing snapshot
//! and are carried from one snapshot to the next, so reloads never reset
//! them.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::admission::Reason;

/// Upper bounds of the latency histogram's buckets, in seconds (the last,
/// `+Inf`, is implicit).
pub(crate) const LATENCY_BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// One tenant's counters.
#[derive(Debug, Default)]
pub struct TenantStats {
    /// Requests by status class: 1xx .. 5xx.
    pub responses: [AtomicU64; 5],
    /// Request body bytes received from clients.
    pub bytes_in: AtomicU64,
    /// Response body bytes sent to clients.
    pub bytes_out: AtomicU64,
    /// Client connections open now whose TLS session (SNI) or first
    /// request belongs to the tenant.
    pub active_connections: AtomicI64,
    /// TLS handshakes that failed after the SNI named this tenant.
    pub tls_handshake_failures: AtomicU64,
    /// Passthrough connections closed because the `ClientHello` was
    /// malformed, and other refused connections.
    pub refused_connections: AtomicU64,
    /// Requests and connections the request policy refused, by
    /// [`Reason`] (in [`Reason::ALL`] order).
    policy_refusals: [AtomicU64; Reason::ALL.len()],
    /// Latency histogram (non-cumulative bucket counts; the last is +Inf).
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of latencies in microseconds.
    latency_sum_us: AtomicU64,
}

/// A copy of the counters, for rendering.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantStatsView {
    pub responses: [u64; 5],
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub active_connections: i64,
    pub tls_handshake_failures: u64,
    pub refused_connections: u64,
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`], then +Inf.
    pub latency_cumulative: Vec<u64>,
    pub latency_sum_seconds: f64,
    /// Policy refusals by reason code (every reason, zeros included).
    #[serde(default)]
    pub policy_refusals: BTreeMap<String, u64>,
}

impl TenantStats {
    /// Counts one refusal of the request policy.
    pub fn refused(&self, reason: Reason) {
        self.policy_refusals[reason.index()].fetch_add(1, Relaxed);
    }

    /// Refusals counted for `reason`.
    #[must_use]
    pub fn refusals(&self, reason: Reason) -> u64 {
        self.policy_refusals[reason.index()].load(Relaxed)
    }

    /// Counts one answered request.
    pub fn record(&self, status: u16, latency: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Relaxed);
        let secs = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[bucket].fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    /// The counters now.
    #[must_use]
    pub fn view(&self) -> TenantStatsView {
        let mut cumulative = Vec::with_capacity(self.latency.len());
        let mut total = 0;
        for b in &self.latency {
            total += b.load(Relaxed);
            cumulative.push(total);
        }
        #[expect(
            clippy::cast_precision_loss,
            reason = "a latency sum in seconds; microsecond precision is not needed past 2^53"
        )]
        let sum = self.latency_sum_us.load(Relaxed) as f64 / 1e6;
        TenantStatsView {
            responses: std::array::from_fn(|i| self.responses[i].load(Relaxed)),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            active_connections: self.active_connections.load(Relaxed),
            tls_handshake_failures: self.tls_handshake_failures.load(Relaxed),
            refused_connections: self.refused_connections.load(Relaxed),
            latency_cumulative: cumulative,
            latency_sum_seconds: sum,
            policy_refusals: Reason::ALL
                .iter()
                .map(|r| (r.code().to_owned(), self.refusals(*r)))
                .collect(),
        }
    }
}

/// Counters of a listener that belong to no tenant yet (before SNI).
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub connections: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    /// Passthrough `ClientHello`s that could not be parsed.
    pub bad_client_hellos: AtomicU64,
    /// Connections from a trusted proxy closed because they did not start
    /// with a valid PROXY protocol v2 header (`proxy_protocol = "v2"`).
    pub bad_proxy_headers: AtomicU64,
    /// Connections closed by a deadline: a request head slower than the
    /// header timeout, a response the client stopped reading.
    pub deadline_closes: AtomicU64,
    /// Connections closed at accept: over `node.max_connections` or the
    /// listener's `max_connections_per_source`.
    pub refused_connections: AtomicU64,
}

/// Keeps a tenant's active-connection gauge up while alive.
#[derive(Debug)]
pub(crate) struct ActiveConnection(std::sync::Arc<TenantStats>);

impl ActiveConnection {
    #[must_use]
    pub(crate) fn new(stats: std::sync::Arc<TenantStats>) -> Self {
        stats.active_connections.fetch_add(1, Relaxed);
        Self(stats)
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.active_connections.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_and_classes() {
        let s = TenantStats::default();
        s.record(200, Duration::from_micros(300));
        s.record(503, Duration::from_millis(30));
        s.record(404, Duration::from_secs(10));
        let v = s.view();
        assert_eq!(v.responses, [0, 1, 0, 1, 1]);
        assert_eq!(v.latency_cumulative[0], 1);
        assert_eq!(v.latency_cumulative[LATENCY_BUCKETS.len() - 1], 2);
        assert_eq!(v.latency_cumulative.last(), Some(&3));
        assert!((v.latency_sum_seconds - 10.0303).abs() < 1e-6);
        assert_eq!(v.policy_refusals.len(), Reason::ALL.len());
        assert!(v.policy_refusals.values().all(|&n| n == 0));
        s.refused(Reason::Shed);
        s.refused(Reason::Shed);
        assert_eq!(s.view().policy_refusals["shed"], 2);
        let g = ActiveConnection::new(std::sync::Arc::new(TenantStats::default()));
        assert_eq!(g.0.active_connections.load(Relaxed), 1);
    }
}
