//! An upgraded connection (a WebSocket): bytes copied both ways between the
//! client and the backend until either side closes or nothing moves for the
//! site's idle timeout.
//!
//! A tunnel is still the tenant's connection: whoever runs it keeps the
//! connection's place in the tenant's `max_connections` and in the drain's
//! count for as long as it lives (see `ConnInfo`), and its bytes are added
//! to the tenant's counters when it ends.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// What a tunnel carried, and how it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Carried {
    pub client_to_backend: u64,
    pub backend_to_client: u64,
    /// Closed by the idle timeout rather than by either side.
    pub idled_out: bool,
}

/// Copies bytes between `client` and `backend` until one side closes, an
/// error, or `idle` passes with no byte in either direction.
pub(crate) async fn run<C, B>(client: C, mut backend: B, idle: Duration) -> Carried
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let meter = Arc::new(Meter {
        started: Instant::now(),
        ..Meter::default()
    });
    let mut client = Metered {
        inner: client,
        meter: Arc::clone(&meter),
    };
    let mut idled_out = false;
    {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut backend);
        tokio::pin!(copy);
        let deadline =
            |m: &Meter| m.started + Duration::from_millis(m.last_ms.load(Relaxed)) + idle;
        let timer = tokio::time::sleep_until(deadline(&meter));
        tokio::pin!(timer);
        loop {
            tokio::select! {
                _ = &mut copy => break,
                () = &mut timer => {
                    let due = deadline(&meter);
                    if due <= Instant::now() {
                        idled_out = true;
                        break;
                    }
                    timer.as_mut().reset(due);
                }
            }
        }
    }
    Carried {
        client_to_backend: meter.read.load(Relaxed),
        backend_to_client: meter.written.load(Relaxed),
        idled_out,
    }
}

/// Bytes through the client's side, and when they last moved.
#[derive(Debug)]
struct Meter {
    started: Instant,
    /// Milliseconds after `started`.
    last_ms: AtomicU64,
    read: AtomicU64,
    written: AtomicU64,
}

impl Default for Meter {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
        }
    }
}

impl Meter {
    fn moved(&self, counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Relaxed);
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Relaxed);
    }
}

/// The client's side of a tunnel, metered.
struct Metered<S> {
    inner: S,
    meter: Arc<Meter>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.meter.moved(&self.meter.read, n);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.meter.moved(&self.meter.written, n);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn a_quiet_tunnel_idles_out_and_counts_what_it_carried() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (backend, mut backend_peer) = tokio::io::duplex(1024);
        let started = Instant::now();
        let tunnel = tokio::spawn(run(client, backend, Duration::from_millis(300)));
        client_peer.write_all(b"hello").await.expect("write");
        let mut got = [0; 5];
        backend_peer.read_exact(&mut got).await.expect("read");
        backend_peer.write_all(b"hi").await.expect("write");
        let mut got = [0; 2];
        client_peer.read_exact(&mut got).await.expect("read");
        // Nothing moves from here on, and both peers stay open.
        let carried = tokio::time::timeout(Duration::from_secs(5), tunnel)
            .await
            .expect("the tunnel idles out")
            .expect("tunnel");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            carried,
            Carried {
                client_to_backend: 5,
                backend_to_client: 2,
                idled_out: true
            }
        );
    }

    #[tokio::test]
    async fn traffic_keeps_a_tunnel_open_and_a_close_ends_it() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (backend, mut backend_peer) = tokio::io::duplex(1024);
        let tunnel = tokio::spawn(run(client, backend, Duration::from_millis(500)));
        for _ in 0..5 {
            // Pacing: a byte every 200 ms, under the 500 ms idle timeout.
            tokio::time::sleep(Duration::from_millis(200)).await;
            client_peer.write_all(b"x").await.expect("write");
            let mut got = [0; 1];
            backend_peer.read_exact(&mut got).await.expect("read");
        }
        assert!(!tunnel.is_finished(), "1 s of steady traffic idled out");
        drop(client_peer);
        drop(backend_peer);
        let carried = tunnel.await.expect("tunnel");
        assert_eq!(carried.client_to_backend, 5);
        assert!(!carried.idled_out);
    }
}
