//! Restarts without refused connections: the running `lbd` hands its
//! listening sockets to the next one, and stops serving only once the next
//! one has started.
//!
//! A listening socket is a kernel object with a queue of connections that
//! completed their handshake; closing it resets everything in the queue,
//! and between one process closing it and the next binding it, new
//! connections are refused. So `lbd` never closes it across a restart: the
//! new process connects to the old one's hand-off socket
//! (`state_dir/lbd.handoff.sock`, mode 0600) and receives duplicates of the
//! listening descriptors (`SCM_RIGHTS`). Both processes then hold the same
//! sockets; the old one keeps serving while the new one starts, and only
//! when the new one confirms its start does the old one stop accepting,
//! stop its control plane (admin API, metrics, health checks, map writes)
//! and let its in-flight requests finish within `node.drain_timeout`.
//!
//! The exchange, over a Unix stream socket (protocol 2):
//!
//! 1. new -> old: `TAKEOVER 2\n`, within [`REQUEST_TIMEOUT`] of connecting.
//! 2. old -> new: one message whose bytes are the JSON list of listen
//!    addresses and whose `SCM_RIGHTS` carry one descriptor per address, in
//!    the same order. The old process keeps serving everything.
//! 3. new: starts fully (maps, XDP program, L7 listeners, certificates)
//!    without accepting on the sockets yet, then new -> old: `READY\n`,
//!    within [`START_TIMEOUT`] of step 2.
//! 4. old: releases the admin socket, the metrics port and the hand-off
//!    socket, then old -> new: `RELEASED\n`, and drains.
//! 5. new: starts accepting, binds the admin API, the metrics port and its
//!    own hand-off socket.
//!
//! If the new process fails or disconnects before step 3, or does not get
//! there in time, the old one logs why and keeps serving as if nothing had
//! happened (the new process never accepted a connection). Without step 4
//! the new process exits without accepting.
//!
//! The old process runs the hand-off socket in its own task
//! ([`Server::serve`]): a client that connects and sends nothing never
//! delays the daemon's control loop, and only one hand-off runs at a time.

use std::{
    collections::HashMap,
    io::{self, IoSlice, IoSliceMut, Read as _, Write as _},
    net::SocketAddr,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, Interest},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    task::JoinSet,
};
use tracing::{info, warn};

/// The hand-off socket's file name under `node.state_dir`.
pub const SOCKET: &str = "lbd.handoff.sock";
/// The first line of a request.
const REQUEST: &[u8] = b"TAKEOVER 2\n";
/// The successor's confirmation that it has started.
const READY: &[u8] = b"READY\n";
/// The old process's answer once its control plane has stopped.
const RELEASED: &[u8] = b"RELEASED\n";
/// How long a client of the hand-off socket gets to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the other side to send or take the sockets.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the successor gets to start (load and program the maps, start
/// the listeners, load the certificates) and confirm.
pub const START_TIMEOUT: Duration = Duration::from_mins(2);
/// How long the successor waits for the old process to release its
/// control plane (its admin API lets open requests finish for up to 5 s).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(30);
/// The kernel's limit of descriptors per message (`SCM_MAX_FD`).
pub const MAX_SOCKETS: usize = 253;
/// Largest address list accepted.
const MAX_LIST: usize = 64 * 1024;
/// Backlog of the hand-off socket.
const BACKLOG: u32 = 16;

/// The hand-off socket path of a state directory.
#[must_use]
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

// ---- The new process's side ----

/// The running `lbd`, while this one starts with its sockets: dropping it
/// without [`Predecessor::confirm`] tells it to keep serving.
#[derive(Debug)]
pub struct Predecessor {
    stream: UnixStream,
}

/// Asks a running `lbd` for its listening sockets. `Ok(None)` when no
/// `lbd` answers at `path` (a first start, or a stale socket file).
///
/// # Errors
/// When an `lbd` answers but the exchange fails; starting anyway would
/// fight it for the data plane, so the caller should stop.
pub fn take_over(path: &Path) -> io::Result<Option<(Predecessor, HashMap<SocketAddr, OwnedFd>)>> {
    let mut stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    stream.set_write_timeout(Some(STEP_TIMEOUT))?;
    stream.write_all(REQUEST)?;
    let (addrs, fds) = receive(&stream)?;
    if addrs.len() != fds.len() {
        return Err(io::Error::other(format!(
            "the running lbd sent {} addresses but {} sockets",
            addrs.len(),
            fds.len()
        )));
    }
    Ok(Some((
        Predecessor { stream },
        addrs.into_iter().zip(fds).collect(),
    )))
}

impl Predecessor {
    /// Tells the running `lbd` that this one has fully started, and waits
    /// until it has stopped its control plane (it then drains). Only after
    /// this may the caller accept on the sockets and bind the admin API.
    ///
    /// # Errors
    /// When the running `lbd` does not answer (it gave up waiting, or
    /// died): the caller must exit without serving.
    pub fn confirm(mut self) -> io::Result<()> {
        self.stream.write_all(READY)?;
        self.stream.set_read_timeout(Some(RELEASE_TIMEOUT))?;
        let mut answer = [0u8; RELEASED.len()];
        match self.stream.read_exact(&mut answer) {
            Ok(()) if answer == RELEASED => Ok(()),
            Ok(()) => Err(io::Error::other(
                "the running lbd answered the confirmation with something else than RELEASED",
            )),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(io::Error::other(
                "the running lbd closed the hand-off without releasing (it gave up waiting for \
                 this start, or it died)",
            )),
            Err(e) => Err(e),
        }
    }
}

fn receive(stream: &UnixStream) -> io::Result<(Vec<SocketAddr>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_LIST];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_SOCKETS]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(received) = c {
                // SAFETY: the kernel just installed these descriptors in this
                // process for us; nothing else owns them.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(io::Error::other("the socket list was truncated"));
        }
        let len = msg.bytes;
        (len, fds)
    };
    if len == 0 {
        return Err(io::Error::other(
            "the running lbd closed the hand-off without sending its sockets (another hand-off \
             is in progress, or it speaks an older hand-off protocol: then stop it first)",
        ));
    }
    let addrs: Vec<SocketAddr> = serde_json::from_slice(&buf[..len])
        .map_err(|e| io::Error::other(format!("the running lbd sent a bad socket list: {e}")))?;
    Ok((addrs, fds))
}

// ---- The running process's side ----

/// What the hand-off task needs from the daemon's control loop.
#[derive(Debug)]
pub enum Event {
    /// A successor asked: duplicates of the listening sockets, by address.
    Sockets(oneshot::Sender<io::Result<Vec<(SocketAddr, OwnedFd)>>>),
    /// A successor has started and confirmed: stop the control plane, then
    /// [`Successor::release`], then drain.
    Confirmed(Successor),
}

/// The running `lbd`'s hand-off socket.
#[derive(Debug)]
pub struct Server {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl Server {
    /// Binds the hand-off socket (replacing a stale file) with mode 0600,
    /// then listens: nobody can connect before `listen`, so there is no
    /// moment at which the socket accepts with a wider mode.
    ///
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// When the socket cannot be created.
    pub fn bind(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let socket = tokio::net::UnixSocket::new_stream()?;
        socket.bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let listener = socket.listen(BACKLOG)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Serves the hand-off socket until dropped (abort the task running it):
    /// each client in its own task, one hand-off at a time. Needs `events`
    /// answered by the daemon's control loop.
    pub async fn serve(self, events: mpsc::Sender<Event>) {
        let busy = Arc::new(Semaphore::new(1));
        let mut clients = JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let (events, busy) = (events.clone(), Arc::clone(&busy));
                        clients.spawn(async move {
                            if let Err(e) = offer(stream, &events, &busy).await {
                                warn!(error = %e, "hand-off abandoned; this lbd keeps serving");
                            }
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "accepting on the hand-off socket");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = clients.join_next(), if !clients.is_empty() => {}
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One client of the hand-off socket, up to its confirmation.
async fn offer(
    mut stream: tokio::net::UnixStream,
    events: &mpsc::Sender<Event>,
    busy: &Arc<Semaphore>,
) -> io::Result<()> {
    let mut line = [0u8; REQUEST.len()];
    match tokio::time::timeout(REQUEST_TIMEOUT, stream.read_exact(&mut line)).await {
        Err(_) => {
            return Err(io::Error::other(format!(
                "a client of the hand-off socket sent no request within {REQUEST_TIMEOUT:?}"
            )));
        }
        Ok(read) => {
            read?;
        }
    }
    if line != REQUEST {
        return Err(io::Error::other(
            "a client of the hand-off socket sent something else than `TAKEOVER 2`",
        ));
    }
    let Ok(permit) = Arc::clone(busy).try_acquire_owned() else {
        return Err(io::Error::other(
            "a second new lbd asked while a hand-off is in progress; refused it",
        ));
    };
    let (reply, sockets) = oneshot::channel();
    events
        .send(Event::Sockets(reply))
        .await
        .map_err(|_| io::Error::other("the control loop has stopped"))?;
    let sockets = sockets
        .await
        .map_err(|_| io::Error::other("the control loop has stopped"))??;
    tokio::time::timeout(STEP_TIMEOUT, send_sockets(&stream, &sockets))
        .await
        .map_err(|_| io::Error::other("the new lbd does not take its sockets"))??;
    drop(sockets);
    info!(
        timeout = ?START_TIMEOUT,
        "sent the listening sockets to a new lbd; serving until it confirms its start"
    );
    let mut ready = [0u8; READY.len()];
    match tokio::time::timeout(START_TIMEOUT, stream.read_exact(&mut ready)).await {
        Err(_) => {
            return Err(io::Error::other(format!(
                "the new lbd did not confirm its start within {START_TIMEOUT:?}"
            )));
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(io::Error::other(
                "the new lbd went away before confirming its start (see its log)",
            ));
        }
        Ok(read) => {
            read?;
        }
    }
    if ready != READY {
        return Err(io::Error::other(
            "the new lbd sent something else than its confirmation",
        ));
    }
    events
        .send(Event::Confirmed(Successor {
            stream,
            _permit: permit,
        }))
        .await
        .map_err(|_| io::Error::other("the control loop has stopped"))
}

async fn send_sockets(
    stream: &tokio::net::UnixStream,
    sockets: &[(SocketAddr, OwnedFd)],
) -> io::Result<()> {
    if sockets.len() > MAX_SOCKETS {
        return Err(io::Error::other(format!(
            "{} listening sockets; a hand-off carries at most {MAX_SOCKETS}",
            sockets.len()
        )));
    }
    let addrs: Vec<SocketAddr> = sockets.iter().map(|(a, _)| *a).collect();
    let list = serde_json::to_vec(&addrs).map_err(io::Error::other)?;
    let fds: Vec<RawFd> = sockets.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    loop {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            let cmsgs = if fds.is_empty() {
                Vec::new()
            } else {
                vec![ControlMessage::ScmRights(&fds)]
            };
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[IoSlice::new(&list)],
                &cmsgs,
                MsgFlags::empty(),
                None,
            )
            .map_err(io::Error::from)
        });
        match sent {
            Ok(n) if n == list.len() => return Ok(()),
            Ok(n) => {
                return Err(io::Error::other(format!(
                    "sent {n} of the {} bytes of the socket list",
                    list.len()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// A successor that has started and confirmed.
#[derive(Debug)]
pub struct Successor {
    stream: tokio::net::UnixStream,
    /// No other hand-off starts while this one finishes.
    _permit: OwnedSemaphorePermit,
}

impl Successor {
    /// Tells the successor that this process's control plane is stopped
    /// (the admin socket, metrics port and hand-off socket are free).
    ///
    /// # Errors
    /// When the successor is gone.
    pub async fn release(mut self) -> io::Result<()> {
        tokio::time::timeout(STEP_TIMEOUT, self.stream.write_all(RELEASED))
            .await
            .map_err(|_| io::Error::other("the new lbd does not read"))?
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A hand-off socket in a fresh directory, served in a task whose
    /// control loop answers with duplicates of `listener` and sends every
    /// confirmed successor to the returned channel (after releasing it).
    struct Old {
        path: PathBuf,
        dir: PathBuf,
        confirmed: mpsc::UnboundedReceiver<()>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Old {
        fn start(name: &str, listener: &std::net::TcpListener) -> Old {
            let dir =
                std::env::temp_dir().join(format!("lb-handoff-{name}-{}", std::process::id()));
            let path = socket_path(&dir);
            let server = Server::bind(&path).expect("hand-off socket");
            let addr = listener.local_addr().expect("addr");
            let listener = listener.try_clone().expect("dup");
            let (events_tx, mut events) = mpsc::channel(4);
            let (confirmed_tx, confirmed) = mpsc::unbounded_channel();
            let serving = tokio::spawn(server.serve(events_tx));
            let task = tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    match event {
                        Event::Sockets(reply) => {
                            let fd = listener.try_clone().map(OwnedFd::from);
                            let _ = reply.send(fd.map(|fd| vec![(addr, fd)]));
                        }
                        Event::Confirmed(successor) => {
                            successor.release().await.expect("release");
                            let _ = confirmed_tx.send(());
                        }
                    }
                }
                drop(serving);
            });
            Old {
                path,
                dir,
                confirmed,
                task,
            }
        }
    }

    impl Drop for Old {
        fn drop(&mut self) {
            self.task.abort();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    async fn take(path: &Path) -> (Predecessor, HashMap<SocketAddr, OwnedFd>) {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || take_over(&path))
            .await
            .expect("join")
            .expect("take over")
            .expect("an lbd answered")
    }

    #[tokio::test]
    async fn sockets_move_to_the_successor_and_keep_their_queue() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        // A connection waiting in the queue before the hand-off.
        let _queued = std::net::TcpStream::connect(addr).expect("connect");
        let mut old = Old::start("move", &listener);
        let (predecessor, taken) = take(&old.path).await;
        tokio::task::spawn_blocking(move || predecessor.confirm())
            .await
            .expect("join")
            .expect("confirmed and released");
        old.confirmed
            .recv()
            .await
            .expect("the old side saw the confirmation");
        drop(listener);

        let fd = taken.into_iter().next().map(|(a, fd)| {
            assert_eq!(a, addr);
            fd
        });
        let adopted = std::net::TcpListener::from(fd.expect("one socket"));
        // The queued connection survived the old process's close.
        let (_, peer) = adopted.accept().expect("the queued connection");
        assert!(peer.ip().is_loopback());
    }

    #[tokio::test]
    async fn a_successor_that_leaves_before_confirming_changes_nothing() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut old = Old::start("leave", &listener);
        let (predecessor, taken) = take(&old.path).await;
        assert_eq!(taken.len(), 1);
        drop((predecessor, taken));
        // The next successor is served, and only it is confirmed.
        let (predecessor, _taken) = take(&old.path).await;
        assert!(old.confirmed.try_recv().is_err(), "nobody confirmed yet");
        tokio::task::spawn_blocking(move || predecessor.confirm())
            .await
            .expect("join")
            .expect("confirmed and released");
        old.confirmed.recv().await.expect("confirmed once");
        assert!(old.confirmed.try_recv().is_err(), "confirmed once only");
    }

    #[tokio::test]
    async fn a_silent_client_does_not_hold_up_a_successor() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let old = Old::start("silent", &listener);
        let mode = std::fs::metadata(&old.path)
            .expect("socket file")
            .permissions();
        assert_eq!(mode.mode() & 0o777, 0o600, "the hand-off socket's mode");
        let _silent = UnixStream::connect(&old.path).expect("connect");
        let started = std::time::Instant::now();
        let (_predecessor, taken) = tokio::time::timeout(Duration::from_secs(2), take(&old.path))
            .await
            .expect("the successor was served while the silent client waits");
        assert_eq!(taken.len(), 1, "after {:?}", started.elapsed());
    }
}
