//! Restarts without refused connections: the running `lbd` hands its
//! listening sockets to the next one.
//!
//! A listening socket is a kernel object with a queue of connections that
//! completed their handshake; closing it resets everything in the queue,
//! and between one process closing it and the next binding it, new
//! connections are refused. So `lbd` never closes it across a restart: the
//! new process connects to the old one's hand-off socket
//! (`state_dir/lbd.handoff.sock`) and receives duplicates of the listening
//! descriptors (`SCM_RIGHTS`). From then on both processes hold the same
//! sockets; the old one stops accepting, stops its control plane (admin
//! API, metrics, health checks, map writes) and lets its in-flight requests
//! finish within `node.drain_timeout`, while the new one accepts from the
//! same queues.
//!
//! The exchange, over a Unix stream socket:
//!
//! 1. new -> old: `TAKEOVER 1\n`
//! 2. old: releases the admin socket and the metrics port, then
//!    old -> new: one message whose bytes are the JSON list of listen
//!    addresses and whose `SCM_RIGHTS` carry one descriptor per address, in
//!    the same order.
//! 3. new -> old: `OK\n` once it holds them; the old process drains and
//!    exits. Without the `OK` (the new process died), the old one keeps
//!    serving.

use std::{
    collections::HashMap,
    io::{self, IoSlice, IoSliceMut, Read as _, Write as _},
    net::SocketAddr,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// The hand-off socket's file name under `node.state_dir`.
pub const SOCKET: &str = "lbd.handoff.sock";
/// The first line of a request.
const REQUEST: &[u8] = b"TAKEOVER 1\n";
const ACK: &[u8] = b"OK\n";
/// Longest wait for the other side at each step.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The kernel's limit of descriptors per message (`SCM_MAX_FD`).
pub const MAX_SOCKETS: usize = 253;
/// Largest address list accepted.
const MAX_LIST: usize = 64 * 1024;

/// The hand-off socket path of a state directory.
#[must_use]
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

/// Asks a running `lbd` for its listening sockets. `Ok(None)` when no
/// `lbd` answers at `path` (a first start, or a stale socket file).
///
/// # Errors
/// When an `lbd` answers but the exchange fails; starting anyway would
/// fight it for the data plane, so the caller should stop.
pub fn take_over(path: &Path) -> io::Result<Option<HashMap<SocketAddr, OwnedFd>>> {
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
    stream.write_all(ACK)?;
    Ok(Some(addrs.into_iter().zip(fds).collect()))
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
    let addrs: Vec<SocketAddr> = serde_json::from_slice(&buf[..len])
        .map_err(|e| io::Error::other(format!("the running lbd sent a bad socket list: {e}")))?;
    Ok((addrs, fds))
}

/// The running `lbd`'s side: listens for a successor.
pub struct Server {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl Server {
    /// Binds the hand-off socket (replacing a stale file), mode 0600.
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
        let listener = tokio::net::UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Waits for a successor's request.
    ///
    /// # Errors
    /// When accepting fails or the request is not a take-over.
    pub async fn request(&self) -> io::Result<Successor> {
        let (stream, _) = self.listener.accept().await?;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(STEP_TIMEOUT))?;
        stream.set_write_timeout(Some(STEP_TIMEOUT))?;
        let mut line = [0u8; REQUEST.len()];
        (&stream).read_exact(&mut line)?;
        if line != REQUEST {
            return Err(io::Error::other("not a take-over request"));
        }
        Ok(Successor { stream })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A successor waiting for the sockets.
pub struct Successor {
    stream: UnixStream,
}

impl Successor {
    /// Sends the sockets and waits for the successor's acknowledgement.
    ///
    /// # Errors
    /// When sending fails or the successor does not confirm; the caller
    /// keeps serving then.
    pub fn hand_over(self, sockets: &[(SocketAddr, OwnedFd)]) -> io::Result<()> {
        if sockets.len() > MAX_SOCKETS {
            return Err(io::Error::other(format!(
                "{} listening sockets; a hand-off carries at most {MAX_SOCKETS}",
                sockets.len()
            )));
        }
        let addrs: Vec<SocketAddr> = sockets.iter().map(|(a, _)| *a).collect();
        let list = serde_json::to_vec(&addrs).map_err(io::Error::other)?;
        let fds: Vec<RawFd> = sockets.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        let cmsgs = if fds.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(&fds)]
        };
        sendmsg::<()>(
            self.stream.as_raw_fd(),
            &[IoSlice::new(&list)],
            &cmsgs,
            MsgFlags::empty(),
            None,
        )
        .map_err(io::Error::from)?;
        let mut ack = [0u8; ACK.len()];
        (&self.stream).read_exact(&mut ack)?;
        if ack != ACK {
            return Err(io::Error::other(
                "the successor did not confirm the hand-off",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_move_to_the_successor_and_keep_their_queue() {
        let dir = std::env::temp_dir().join(format!("lb-handoff-{}", std::process::id()));
        let path = socket_path(&dir);
        assert!(take_over(&path).expect("no lbd").is_none());

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        // A connection waiting in the queue before the hand-off.
        let _queued = std::net::TcpStream::connect(addr).expect("connect");

        let server = Server::bind(&path).expect("hand-off socket");
        let fd = OwnedFd::from(listener.try_clone().expect("dup"));
        let old = tokio::spawn(async move {
            let successor = server.request().await.expect("request");
            tokio::task::spawn_blocking(move || successor.hand_over(&[(addr, fd)]))
                .await
                .expect("join")
        });
        let path2 = path.clone();
        let taken = tokio::task::spawn_blocking(move || take_over(&path2))
            .await
            .expect("join")
            .expect("take over")
            .expect("an lbd answered");
        old.await.expect("join").expect("hand over");
        drop(listener);

        let fd = taken.into_iter().next().map(|(a, fd)| {
            assert_eq!(a, addr);
            fd
        });
        let adopted = std::net::TcpListener::from(fd.expect("one socket"));
        // The queued connection survived the old process's close.
        let (_, peer) = adopted.accept().expect("the queued connection");
        assert!(peer.ip().is_loopback());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
