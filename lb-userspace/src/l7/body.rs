//! The body type of every request and response the proxy handles, in both
//! directions, and the two bodies it writes itself. Its own module so that
//! the backend client and the proxy both depend on it, not on each other.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full, combinators::BoxBody};

/// Any error a body in flight can end with.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bodies in both directions: a client's or a backend's, streamed, or one
/// the proxy wrote.
pub(crate) type ProxyBody = BoxBody<Bytes, BoxError>;

/// A body of `text`.
#[must_use]
pub(crate) fn full(text: String) -> ProxyBody {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
#[must_use]
pub(crate) fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}
