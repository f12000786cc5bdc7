//! The JSON access log: one line per request (or refused connection),
//! written by a dedicated thread so that a slow disk never stalls the
//! request path. Lines go through a bounded channel; when it is full the
//! line is dropped and counted (`lost`), rather than blocking requests.

use std::{
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc,
    },
    time::SystemTime,
};

use serde::Serialize;

use crate::config::AccessLog;

/// Lines buffered between the request path and the writer thread.
const QUEUE: usize = 65_536;

/// One request, as logged.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Entry {
    /// RFC 3339, milliseconds, UTC.
    pub time: String,
    pub tenant: Option<String>,
    pub request_id: Option<String>,
    pub client: Option<SocketAddr>,
    pub listener: Option<SocketAddr>,
    pub sni: Option<String>,
    pub host: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    /// `HTTP/1.1`, `HTTP/2` or `tls` (passthrough).
    pub protocol: Option<&'static str>,
    pub status: u16,
    pub pool: Option<String>,
    pub upstream: Option<SocketAddr>,
    pub attempts: u32,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upstream_ms: Option<f64>,
    pub total_ms: f64,
    /// What decided the outcome: `route`, `misdirected`, `tenant_mismatch`,
    /// `unknown_host`, `no_route`, `no_backend`, `upstream_error`,
    /// `upstream_timeout`, `body_too_large`, `redirect_https`,
    /// `passthrough`, `bad_client_hello`, or a request-policy refusal
    /// ([`super::admission::Reason::code`]: `rate_limit`, `jwt_expired`, ...).
    pub decision: &'static str,
    /// The rule that applied, e.g. `routes[1]`, `limits.requests_per_second`.
    pub rule: Option<String>,
    /// Who the request authenticated as: `api_key:NAME` or `jwt[:SUB]`
    /// (never a key or a token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
}

/// Where entries go. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct AccessLogger {
    tx: Option<mpsc::SyncSender<String>>,
    lost: Arc<AtomicU64>,
}

impl AccessLogger {
    /// Starts the writer thread for `target` (nothing for `off`).
    ///
    /// # Errors
    /// When the log file cannot be opened.
    pub(crate) fn start(target: &AccessLog) -> std::io::Result<Self> {
        let lost = Arc::new(AtomicU64::new(0));
        let sink: Box<dyn Write + Send> = match target {
            AccessLog::Off => return Ok(Self { tx: None, lost }),
            AccessLog::Stdout => Box::new(std::io::stdout()),
            AccessLog::Stderr => Box::new(std::io::stderr()),
            AccessLog::File(path) => Box::new(open(path)?),
        };
        let (tx, rx) = mpsc::sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&rx, sink))?;
        Ok(Self { tx: Some(tx), lost })
    }

    /// Whether entries are written at all (callers skip building them).
    #[must_use]
    pub(crate) fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues one entry.
    pub(crate) fn log(&self, entry: &Entry) {
        let Some(tx) = &self.tx else { return };
        let Ok(line) = serde_json::to_string(entry) else {
            return;
        };
        if tx.try_send(line).is_err() {
            self.lost.fetch_add(1, Relaxed);
        }
    }

    /// Lines dropped because the writer fell behind.
    #[must_use]
    pub(crate) fn lost(&self) -> u64 {
        self.lost.load(Relaxed)
    }
}

/// The current time as the log writes it.
#[must_use]
pub(crate) fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn open(path: &PathBuf) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("access log {}: {e}", path.display())))
}

/// Writes lines as they come, flushing whenever the queue is empty.
fn write_lines(rx: &mpsc::Receiver<String>, sink: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(sink);
    while let Ok(line) = rx.recv() {
        let mut ok = writeln!(out, "{line}").is_ok();
        while let Ok(more) = rx.try_recv() {
            ok &= writeln!(out, "{more}").is_ok();
        }
        if !(ok && out.flush().is_ok()) {
            tracing::warn!("writing the access log failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_reach_the_file_as_json_lines() {
        let dir = std::env::temp_dir().join(format!("lb-access-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("access.log");
        let log = AccessLogger::start(&AccessLog::File(path.clone())).expect("start");
        log.log(&Entry {
            time: now(),
            tenant: Some("acme".into()),
            status: 200,
            decision: "route",
            ..Entry::default()
        });
        drop(log);
        // The writer thread ends when the last sender is gone; wait for it
        // by reading until the line is there (bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.ends_with('\n') || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::yield_now();
        };
        let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(v["tenant"], "acme");
        assert_eq!(v["status"], 200);
        assert!(v["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
