//! `lbd`'s Prometheus endpoint, read from inside the LB namespace.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The body of `GET /metrics` at `addr`.
pub async fn scrape(addr: SocketAddr) -> String {
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connecting to /metrics");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("HTTP to /metrics");
    tokio::spawn(conn);
    let req = http::Request::get("/metrics")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("GET /metrics");
    assert_eq!(resp.status(), http::StatusCode::OK, "GET /metrics");
    let body = resp.into_body().collect().await.expect("metrics body");
    String::from_utf8(body.to_bytes().to_vec()).expect("UTF-8 metrics")
}

/// The value of one series, written as in the exposition format:
/// `name{label="value",...}` (labels in the order `lbd` writes them).
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}
