//! Connection caps that hold before a connection's tenant is known.
//!
//! A TLS handshake costs the node far more than it costs a client, and
//! until the SNI is read nobody knows whose connection it is, so no
//! tenant's `max_connections` can stop a flood of them. Two caps are
//! counted from `accept` instead: `node.max_connections` (every L7
//! connection of the node, in the server's open-connection count) and a
//! listener's `max_connections_per_source` ([`Sources`]), which keeps one
//! client from taking all of them. A connection over either cap is closed
//! at once and counted.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
};

/// Who a connection is from, for `max_connections_per_source`: an IPv4
/// address, or the /64 of an IPv6 address (one host usually has a whole
/// /64 to pick addresses from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Source([u8; 16]);

impl Source {
    #[must_use]
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source(v4.to_ipv6_mapped().octets()),
            IpAddr::V6(v6) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return Source(v4.to_ipv6_mapped().octets());
                }
                let mut key = v6.octets();
                key[8..].fill(0);
                Source(key)
            }
        }
    }
}

/// Open connections per source on one listener. Only sources with open
/// connections have an entry, so the table is never larger than the
/// listener's open connections.
#[derive(Debug, Default)]
pub(crate) struct Sources {
    open: Mutex<HashMap<Source, u32>>,
}

/// One connection's place in [`Sources`], given back when dropped.
#[derive(Debug)]
pub(crate) struct SourceGuard {
    sources: Arc<Sources>,
    source: Source,
}

impl Sources {
    /// Counts a connection from `ip`, unless `limit` are already open.
    #[must_use]
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr, limit: u32) -> Option<SourceGuard> {
        let source = Source::of(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(source).or_insert(0);
        if *n >= limit {
            if *n == 0 {
                open.remove(&source);
            }
            return None;
        }
        *n += 1;
        Some(SourceGuard {
            sources: Arc::clone(self),
            source,
        })
    }

    #[cfg(test)]
    /// Connections open from `ip`'s source.
    #[must_use]
    pub(crate) fn open(&self, ip: IpAddr) -> u32 {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&Source::of(ip))
            .copied()
            .unwrap_or(0)
    }

    #[cfg(test)]
    /// Sources with open connections.
    #[must_use]
    pub(crate) fn len(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    #[cfg(test)]
    /// Whether no source has a connection open.
    #[must_use]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut open = self
            .sources
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_source_gets_at_most_its_limit_and_places_come_back() {
        let s = Arc::new(Sources::default());
        let a: Vec<_> = (0..3).map(|_| s.take(ip("192.0.2.1"), 3)).collect();
        assert!(a.iter().all(Option::is_some));
        assert!(s.take(ip("192.0.2.1"), 3).is_none());
        // Another source is not affected.
        let b = s.take(ip("192.0.2.2"), 3);
        assert!(b.is_some());
        drop(a);
        assert_eq!(s.open(ip("192.0.2.1")), 0);
        drop(b);
        assert!(s.is_empty(), "no entry outlives its connections");
    }

    #[test]
    fn ipv6_sources_are_their_slash_64_and_mapped_v4_is_v4() {
        assert_eq!(
            Source::of(ip("2001:db8:1:2:aaaa::1")),
            Source::of(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Source::of(ip("::ffff:192.0.2.1")),
            Source::of(ip("192.0.2.1"))
        );
        let s = Arc::new(Sources::default());
        let _one = s.take(ip("2001:db8::1"), 1);
        assert!(s.take(ip("2001:db8::2"), 1).is_none());
    }
}
