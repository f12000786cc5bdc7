//! The load generator's userspace: builds the frame template and checksum
//! inputs for `lb_gen` (`lb-ebpf/src/gen`), checks what the program writes,
//! and runs it with `BPF_PROG_TEST_RUN` live frames, bounded in frames and
//! time, optionally paced to a rate. It also reads the sink's counters.
//!
//! Some kernels refuse live frames (`EPERM` even for root: seen on a
//! 6.18 VM build). The generator then says so once and sends the same
//! frames (same flows, same checksums, checked against the reference
//! frames too) from userspace through an `AF_PACKET` socket bound to the
//! interface, batched with `sendmmsg` and paced by the clock. That sender
//! is slower than the kernel's, so the maximum rates may be the
//! generator's rather than the LB's; the per-packet LB-core figures and
//! the paced runs are unaffected.

use std::{
    cell::Cell,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray, PerCpuValues},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
    util::nr_cpus,
};
use lb_common::{
    GEN_HDR_MAX, GEN_MAX_FLOWS, GEN_V4_TCP, GEN_V4_UDP, GEN_V6_TCP, GEN_V6_UDP, GenConfig,
    GenState, MAP_GEN_CONFIG, MAP_GEN_STATE, MAP_SINK_STATS, gen_copy_len, gen_header_len,
    sink_counter,
};

pub const XDP_TX: u32 = 3;
/// Frames per live-frames batch (the kernel's default).
const BATCH: u32 = 64;
/// Largest frame: a page minus the kernel's headroom and tailroom, and
/// within the line's MTU.
pub const MAX_FRAME: usize = 1514;
/// Source ports per source address: flows beyond this use the next address.
const SPORT_SPAN: u32 = 50_000;
const SPORT_BASE: u16 = 10_000;

/// What to send.
#[derive(Clone, Debug)]
pub struct FlowSpec {
    pub tcp: bool,
    /// Distinct flows, 1..=1,000,000.
    pub flows: u32,
    /// Frame length in bytes (Ethernet header included, no FCS).
    pub size: usize,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// Source address of flow 0 (family decides IPv4/IPv6).
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dport: u16,
    /// XDP action for each frame (`XDP_TX`: out to the veth peer).
    pub action: u32,
}

impl FlowSpec {
    pub fn kind(&self) -> u32 {
        match (self.src.is_ipv6(), self.tcp) {
            (false, false) => GEN_V4_UDP,
            (false, true) => GEN_V4_TCP,
            (true, false) => GEN_V6_UDP,
            (true, true) => GEN_V6_TCP,
        }
    }

    /// The smallest frame this kind allows.
    pub fn min_size(&self) -> usize {
        gen_copy_len(self.kind()).max(60)
    }

    pub fn label(&self) -> String {
        format!(
            "IPv{} {}",
            if self.src.is_ipv6() { 6 } else { 4 },
            if self.tcp { "TCP" } else { "UDP" }
        )
    }
}

/// What one run sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Frames the kernel ran the program for (and sent on).
    pub frames: u64,
    pub elapsed: Duration,
    /// The kernel's average time per frame (program, page recycling and the
    /// send), from `BPF_PROG_TEST_RUN`'s duration.
    pub kernel_ns_per_frame: f64,
}

impl Sent {
    pub fn pps(&self) -> f64 {
        per_second(self.frames, self.elapsed)
    }
}

#[expect(clippy::cast_precision_loss, reason = "packet counts far below 2^52")]
pub fn per_second(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Bounds of one run: it stops at whichever comes first.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub count: u64,
    pub duration: Duration,
    /// Frames per second; `None` sends as fast as the CPU allows.
    pub rate: Option<u64>,
}

/// The loaded generator object: `lb_gen`, `lb_gen_sink` and their maps.
pub struct Generator {
    pub ebpf: Ebpf,
    frame: Vec<u8>,
    spec: Option<FlowSpec>,
    cfg: GenConfig,
    /// The kernel refused live frames: frames go out through a socket.
    live_refused: Cell<bool>,
    /// Frames the socket sender sent (the program counts its own).
    socket_frames: Cell<u64>,
    /// The socket sender's next flow (the program keeps its own).
    socket_flow: Cell<u32>,
}

impl Generator {
    pub fn load() -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load(lb::objects::GEN)
            .context("loading the generator object")?;
        for name in ["lb_gen", "lb_gen_sink"] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("{name} missing from the generator object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading {name} (verifier)"))?;
        }
        Ok(Self {
            ebpf,
            frame: Vec::new(),
            spec: None,
            cfg: GenConfig::default(),
            live_refused: Cell::new(false),
            socket_frames: Cell::new(0),
            socket_flow: Cell::new(0),
        })
    }

    pub fn program(&self, name: &str) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("{name} missing"))?
            .try_into()?)
    }

    pub fn program_mut(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("{name} missing"))?
            .try_into()?)
    }

    /// Writes the template for `spec`, resets the flow cycle, and checks the
    /// first frames the program writes (checksums, lengths, flow fields).
    pub fn configure(&mut self, spec: &FlowSpec) -> Result<()> {
        ensure!(
            (1..=GEN_MAX_FLOWS).contains(&spec.flows),
            "flows must be 1..={GEN_MAX_FLOWS}, got {}",
            spec.flows
        );
        ensure!(
            (spec.min_size()..=MAX_FRAME).contains(&spec.size),
            "a {} frame must be {}..={MAX_FRAME} bytes, got {}",
            spec.label(),
            spec.min_size(),
            spec.size
        );
        ensure!(
            spec.src.is_ipv6() == spec.dst.is_ipv6(),
            "source and destination must be of one family"
        );
        let (frame, cfg) = template(spec)?;
        self.write_config(cfg)?;
        self.frame = frame;
        self.spec = Some(spec.clone());
        self.reset_state()?;
        self.check(spec)?;
        self.reset_state()
    }

    fn write_config(&mut self, cfg: GenConfig) -> Result<()> {
        let mut map: Array<_, GenConfig> = self
            .ebpf
            .map_mut(MAP_GEN_CONFIG)
            .context("LB_GEN_CONFIG")?
            .try_into()?;
        map.set(0, cfg, 0)
            .context("writing the generator template")?;
        self.cfg = cfg;
        Ok(())
    }

    /// Paces the program to `rate` frames per second (`None`: every frame
    /// goes as fast as the kernel runs it).
    fn set_rate(&mut self, rate: Option<u64>) -> Result<()> {
        let interval_ps = rate.map_or(0, |r| 1_000_000_000_000 / r.max(1));
        if interval_ps != self.cfg.interval_ps {
            let mut cfg = self.cfg;
            cfg.interval_ps = interval_ps;
            self.write_config(cfg)?;
        }
        Ok(())
    }

    fn reset_state(&mut self) -> Result<()> {
        let cpus = nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        let mut map: PerCpuArray<_, GenState> = self
            .ebpf
            .map_mut(MAP_GEN_STATE)
            .context("LB_GEN_STATE")?
            .try_into()?;
        map.set(
            0,
            PerCpuValues::try_from(vec![GenState::default(); cpus])?,
            0,
        )
        .context("resetting the generator state")?;
        self.socket_flow.set(0);
        Ok(())
    }

    /// Runs the program (not live) on a scrambled frame for the first flows
    /// and compares with frames built independently by etherparse.
    fn check(&self, spec: &FlowSpec) -> Result<()> {
        let prog = self.program("lb_gen")?;
        let flows = spec.flows.min(3);
        for i in 0..flows {
            let garbage: Vec<u8> = (0..self.frame.len())
                .map(|j| u8::try_from((j * 7 + 13) % 251).unwrap_or(0))
                .collect();
            let mut out = vec![0u8; self.frame.len()];
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(&garbage),
                    data_out: Some(&mut out),
                    repeat: 1,
                    ..Default::default()
                })
                .context("test run of lb_gen")?;
            ensure!(
                r.return_value == spec.action,
                "lb_gen returned {}, want {}",
                r.return_value,
                spec.action
            );
            let want = reference_frame(spec, i)?;
            let mut ours = self.frame.clone();
            self.socket_frame(&mut ours, i);
            ensure!(
                ours[..gen_header_len(spec.kind())] == want[..gen_header_len(spec.kind())],
                "the socket sender builds a wrong header for flow {i}"
            );
            // The payload is not rewritten (the kernel copies the input frame
            // into each live page once), so compare the headers.
            let hdr = gen_header_len(spec.kind());
            ensure!(
                out[..hdr] == want[..hdr],
                "lb_gen wrote a wrong header for flow {i}:\n got {:02x?}\nwant {:02x?}",
                &out[..hdr],
                &want[..hdr]
            );
        }
        Ok(())
    }

    /// Sends frames out of `ifindex` (in the calling thread's network
    /// namespace) until `limits` says stop.
    pub fn run(&mut self, ifindex: u32, limits: Limits) -> Result<Sent> {
        ensure!(self.spec.is_some(), "configure the generator first");
        self.set_rate(limits.rate)?;
        if !self.live_refused.get() {
            match self.run_live(ifindex, limits) {
                Err(e) if refused(&e) => {
                    eprintln!(
                        "note: this kernel refuses BPF_PROG_TEST_RUN live frames ({e:#}); \
                         the generator sends from userspace through an AF_PACKET socket \
                         instead (slower: maximum rates may be the generator's)"
                    );
                    self.live_refused.set(true);
                }
                other => return other,
            }
        }
        self.run_socket(ifindex, limits)
    }

    /// Whether frames go out through the userspace socket sender.
    pub fn sends_from_userspace(&self) -> bool {
        self.live_refused.get()
    }

    /// Frames the program wrote, summed over CPUs.
    pub fn frames_written(&self) -> Result<u64> {
        Ok(self.state()?.0)
    }

    /// `(frames written, frames dropped by pacing)`, summed over CPUs.
    pub fn state(&self) -> Result<(u64, u64)> {
        let map: PerCpuArray<_, GenState> = self
            .ebpf
            .map(MAP_GEN_STATE)
            .context("LB_GEN_STATE")?
            .try_into()?;
        let v = map.get(&0, 0)?;
        Ok((
            v.iter().map(|s| s.frames).sum::<u64>() + self.socket_frames.get(),
            v.iter().map(|s| s.skipped).sum(),
        ))
    }

    /// The sink's counters (`sink_counter::*`), summed over CPUs.
    pub fn sink(&self) -> Result<SinkCounts> {
        let map: PerCpuArray<_, u64> = self
            .ebpf
            .map(MAP_SINK_STATS)
            .context("LB_SINK_STATS")?
            .try_into()?;
        let get = |i: u32| -> Result<u64> { Ok(map.get(&i, 0)?.iter().sum()) };
        Ok(SinkCounts {
            packets: get(sink_counter::PACKETS)?,
            bytes: get(sink_counter::BYTES)?,
            encapsulated: get(sink_counter::ENCAPSULATED)?,
            plain: get(sink_counter::PLAIN)?,
            passed: get(sink_counter::PASSED)?,
        })
    }
}

/// What reached the sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkCounts {
    pub packets: u64,
    pub bytes: u64,
    pub encapsulated: u64,
    pub plain: u64,
    pub passed: u64,
}

impl SinkCounts {
    pub fn since(&self, before: &SinkCounts) -> SinkCounts {
        SinkCounts {
            packets: self.packets - before.packets,
            bytes: self.bytes - before.bytes,
            encapsulated: self.encapsulated - before.encapsulated,
            plain: self.plain - before.plain,
            passed: self.passed - before.passed,
        }
    }
}

/// `struct xdp_md` for the test run: the frame spans the whole input, and
/// it arrived on `ifindex`.
fn xdp_md(len: usize, ifindex: u32) -> Result<[u8; 24]> {
    let mut md = [0u8; 24];
    let len = u32::try_from(len)?;
    md[4..8].copy_from_slice(&len.to_ne_bytes());
    md[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    Ok(md)
}

impl Generator {
    fn run_live(&self, ifindex: u32, limits: Limits) -> Result<Sent> {
        let prog = self.program("lb_gen")?;
        let frame = &self.frame;
        let ctx = xdp_md(frame.len(), ifindex)?;
        let start = Instant::now();
        let first = self.frames_written()?;
        let mut kernel_ns = 0f64;
        // Each call costs the kernel a fixed ~20 ms (it builds a page pool
        // and tears it down with an RCU grace period), so calls last up to
        // half a second, sized from the kernel's own time per iteration.
        let mut ns_per_iteration = 100.0f64;
        loop {
            let sent = self.frames_written()? - first;
            let elapsed = start.elapsed();
            if sent >= limits.count || elapsed >= limits.duration {
                break;
            }
            let left = sent.abs_diff(limits.count);
            let mut secs = limits
                .duration
                .saturating_sub(elapsed)
                .min(Duration::from_millis(500))
                .as_secs_f64();
            if let Some(rate) = limits.rate {
                #[expect(clippy::cast_precision_loss, reason = "frame counts below 2^52")]
                let need = left as f64 / rate.max(1) as f64;
                secs = secs.min(need.max(0.001));
            }
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a positive iteration count far below 2^53"
            )]
            let mut n = match limits.rate {
                // Paced, each run waits for its slot: size by the rate.
                #[expect(clippy::cast_precision_loss, reason = "rates below 2^52")]
                Some(rate) => ((secs * rate as f64) as u64).max(64),
                None => ((secs * 1e9 / ns_per_iteration) as u64).max(4096),
            };
            if limits.rate.is_none() {
                n = n.min(left);
            }
            let n = u32::try_from(n.min(u64::from(u32::MAX)))?;
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    ctx_in: Some(&ctx),
                    repeat: n,
                    attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                    ..Default::default()
                })
                .context("BPF_PROG_TEST_RUN with live frames")?;
            let per = r.duration.as_secs_f64() * 1e9;
            kernel_ns += per * f64::from(n);
            if per > 0.0 {
                ns_per_iteration = per;
            }
        }
        let frames = self.frames_written()? - first;
        if frames == 0 {
            bail!("the generator sent nothing within {:?}", limits.duration);
        }
        #[expect(clippy::cast_precision_loss, reason = "frame counts below 2^52")]
        let avg = kernel_ns / frames as f64;
        Ok(Sent {
            frames,
            elapsed: start.elapsed(),
            kernel_ns_per_frame: avg,
        })
    }
}

/// Whether `e` is the kernel refusing live frames (`EPERM`).
fn refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
    })
}

/// Frames per `sendmmsg`.
const SOCKET_BATCH: usize = 64;
/// Pacing: at most this much lost time is made up by sending back to back.
const SOCKET_CATCH_UP: Duration = Duration::from_micros(200);

impl Generator {
    /// Writes flow `flow`'s source port, source address word and both
    /// checksums into `f` (a copy of the template frame), as `lb_gen` does.
    fn socket_frame(&self, f: &mut [u8], flow: u32) {
        let cfg = &self.cfg;
        let v6 = cfg.kind == GEN_V6_UDP || cfg.kind == GEN_V6_TCP;
        let tcp = cfg.kind == GEN_V4_TCP || cfg.kind == GEN_V6_TCP;
        let span = cfg.sport_span.max(1);
        #[expect(clippy::cast_possible_truncation, reason = "flows below 2^16 per span")]
        let (sport, addr) = (
            cfg.sport_base.wrapping_add((flow % span) as u16),
            cfg.addr_base.wrapping_add((flow / span) as u16),
        );
        let l4 = 14 + if v6 { 40 } else { 20 };
        let low = if v6 { 14 + 8 + 14 } else { 14 + 12 + 2 };
        let (addr_be, sport_be) = (addr.to_be_bytes(), sport.to_be_bytes());
        f[low..low + 2].copy_from_slice(&addr_be);
        f[l4..l4 + 2].copy_from_slice(&sport_be);
        let addr_word = u64::from(u16::from_ne_bytes(addr_be));
        let sport_word = u64::from(u16::from_ne_bytes(sport_be));
        let fold = |s: u64| {
            #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits")]
            let folded = fold_keep(s) as u16;
            !folded
        };
        if !v6 {
            let c = fold(u64::from(cfg.ip_sum) + addr_word);
            f[14 + 10..14 + 12].copy_from_slice(&c.to_ne_bytes());
        }
        let mut c = fold(u64::from(cfg.l4_sum) + addr_word + sport_word);
        if !tcp && c == 0 {
            c = 0xffff;
        }
        let at = l4 + if tcp { 16 } else { 6 };
        f[at..at + 2].copy_from_slice(&c.to_ne_bytes());
    }

    /// Sends frames out of `ifindex` (in the calling thread's network
    /// namespace) through an `AF_PACKET` socket, within `limits`.
    fn run_socket(&self, ifindex: u32, limits: Limits) -> Result<Sent> {
        let sock = packet_socket(ifindex)?;
        let len = self.frame.len();
        let mut buf = vec![0u8; len * SOCKET_BATCH];
        for chunk in buf.chunks_mut(len) {
            chunk.copy_from_slice(&self.frame);
        }
        let flows = self.cfg.flows.max(1);
        let interval = limits
            .rate
            .map(|r| Duration::from_secs(1) / u32::try_from(r.max(1)).unwrap_or(u32::MAX));
        let start = Instant::now();
        let cpu0 = thread_cpu_ns();
        let mut next = start;
        let mut sent = 0u64;
        while sent < limits.count && start.elapsed() < limits.duration {
            let batch = match interval {
                Some(every) => {
                    let now = Instant::now();
                    if now < next {
                        let wait = next - now;
                        if wait > Duration::from_micros(100) {
                            std::thread::sleep(wait);
                        }
                        continue;
                    }
                    // Behind: make up at most SOCKET_CATCH_UP of lost time.
                    next = next.max(now.checked_sub(SOCKET_CATCH_UP).unwrap_or(now));
                    let due = (now - next).as_nanos() / every.as_nanos().max(1) + 1;
                    usize::try_from(due)
                        .unwrap_or(SOCKET_BATCH)
                        .min(SOCKET_BATCH)
                }
                None => SOCKET_BATCH,
            };
            let batch = batch.min(usize::try_from(limits.count - sent).unwrap_or(SOCKET_BATCH));
            let mut flow = self.socket_flow.get();
            for chunk in buf.chunks_mut(len).take(batch) {
                self.socket_frame(chunk, flow);
                flow = (flow + 1) % flows;
            }
            let n = send_batch(&sock, &mut buf, len, batch)?;
            // Frames the kernel did not take are built again next time.
            let back = u32::try_from(batch - n).unwrap_or(0);
            self.socket_flow.set((flow + flows - back % flows) % flows);
            sent += n as u64;
            if let Some(every) = interval {
                next += every * u32::try_from(n).unwrap_or(0);
            }
        }
        self.socket_frames.set(self.socket_frames.get() + sent);
        if sent == 0 {
            bail!("the generator sent nothing within {:?}", limits.duration);
        }
        #[expect(
            clippy::cast_precision_loss,
            reason = "nanoseconds and frames far below 2^52"
        )]
        let per_frame = thread_cpu_ns().saturating_sub(cpu0) as f64 / sent as f64;
        Ok(Sent {
            frames: sent,
            elapsed: start.elapsed(),
            kernel_ns_per_frame: per_frame,
        })
    }
}

/// A raw `AF_PACKET` socket bound to `ifindex`, sending only, past the
/// queueing discipline.
fn packet_socket(ifindex: u32) -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("an AF_PACKET socket");
    }
    // SAFETY: `fd` is a new socket that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = u16::try_from(libc::AF_PACKET)?;
    addr.sll_ifindex = i32::try_from(ifindex)?;
    let addr_len = u32::try_from(std::mem::size_of::<libc::sockaddr_ll>())?;
    // SAFETY: `addr` is a valid sockaddr_ll of `addr_len` bytes.
    if unsafe { libc::bind(sock.as_raw_fd(), (&raw const addr).cast(), addr_len) } != 0 {
        return Err(std::io::Error::last_os_error()).context("binding the AF_PACKET socket");
    }
    let one: libc::c_int = 1;
    let one_len = u32::try_from(std::mem::size_of::<libc::c_int>())?;
    // SAFETY: PACKET_QDISC_BYPASS takes an int; best effort.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            one_len,
        );
    }
    Ok(sock)
}

/// Sends the first `count` frames of `len` bytes in `buf`; returns how
/// many the kernel took (a full queue takes fewer, or none).
fn send_batch(sock: &OwnedFd, buf: &mut [u8], len: usize, count: usize) -> Result<usize> {
    let mut iov: Vec<libc::iovec> = buf
        .chunks_mut(len)
        .take(count)
        .map(|c| libc::iovec {
            iov_base: c.as_mut_ptr().cast(),
            iov_len: len,
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: an all-zero msghdr is valid (no name, no control).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = std::ptr::from_mut(v);
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let n = u32::try_from(msgs.len())?;
    // SAFETY: `msgs` holds `n` headers whose buffers live in `buf`.
    let r = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), n, 0) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)) {
            std::thread::yield_now();
            return Ok(0);
        }
        return Err(e).context("sendmmsg on the AF_PACKET socket");
    }
    Ok(usize::try_from(r)?)
}

/// This thread's CPU time.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// One's-complement sum of 16-bit words in memory order (see `lb_ebpf::csum`).
fn sum_words(bytes: &[u8]) -> u64 {
    bytes
        .chunks(2)
        .map(|c| u64::from(u16::from_ne_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold_keep(mut s: u64) -> u32 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    u32::try_from(s).unwrap_or(0)
}

/// The frame of flow 0 and the program's configuration.
fn template(spec: &FlowSpec) -> Result<(Vec<u8>, GenConfig)> {
    let kind = spec.kind();
    let v6 = spec.src.is_ipv6();
    let hdr_len = gen_header_len(kind);
    let l3 = 14;
    let l4 = l3 + if v6 { 40 } else { 20 };
    let l4_len = spec.size - l4;
    let proto: u8 = if spec.tcp { 6 } else { 17 };
    let mut f = vec![0u8; spec.size];
    f[0..6].copy_from_slice(&spec.dst_mac);
    f[6..12].copy_from_slice(&spec.src_mac);
    let (src, dst): (Vec<u8>, Vec<u8>) = match (spec.src, spec.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (s.octets().to_vec(), d.octets().to_vec()),
        (IpAddr::V6(s), IpAddr::V6(d)) => (s.octets().to_vec(), d.octets().to_vec()),
        _ => bail!("mixed address families"),
    };
    let alen = src.len();
    let addr_word_base = u16::from_be_bytes([src[alen - 2], src[alen - 1]]);
    let flows_per_addr = SPORT_SPAN.min(spec.flows);
    let addrs = spec.flows.div_ceil(flows_per_addr);
    ensure!(
        u32::from(addr_word_base) + addrs <= 0xffff,
        "the source address {} leaves no room for {addrs} addresses",
        spec.src
    );
    if v6 {
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        f[l3] = 0x60;
        f[l3 + 4..l3 + 6].copy_from_slice(&u16::try_from(l4_len)?.to_be_bytes());
        f[l3 + 6] = proto;
        f[l3 + 7] = 64;
        f[l3 + 8..l3 + 24].copy_from_slice(&src);
        f[l3 + 24..l3 + 40].copy_from_slice(&dst);
    } else {
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[l3] = 0x45;
        f[l3 + 2..l3 + 4].copy_from_slice(&u16::try_from(spec.size - l3)?.to_be_bytes());
        f[l3 + 6] = 0x40; // DF
        f[l3 + 8] = 64;
        f[l3 + 9] = proto;
        f[l3 + 12..l3 + 16].copy_from_slice(&src);
        f[l3 + 16..l3 + 20].copy_from_slice(&dst);
    }
    f[l4 + 2..l4 + 4].copy_from_slice(&spec.dport.to_be_bytes());
    if spec.tcp {
        f[l4 + 4..l4 + 8].copy_from_slice(&1u32.to_be_bytes()); // seq
        f[l4 + 8..l4 + 12].copy_from_slice(&1u32.to_be_bytes()); // ack
        f[l4 + 12] = 5 << 4;
        f[l4 + 13] = 0x10; // ACK: an established flow
        f[l4 + 14..l4 + 16].copy_from_slice(&0xffffu16.to_be_bytes());
    } else {
        f[l4 + 4..l4 + 6].copy_from_slice(&u16::try_from(l4_len)?.to_be_bytes());
    }
    // Partial sums with the varying words (source port, low address word)
    // and the checksum fields zero.
    let mut z = f.clone();
    let src_low = if v6 { l3 + 8 + 14 } else { l3 + 12 + 2 };
    z[src_low] = 0;
    z[src_low + 1] = 0;
    z[l4] = 0;
    z[l4 + 1] = 0;
    let ip_sum = if v6 {
        0
    } else {
        fold_keep(sum_words(&z[l3..l4]))
    };
    let pseudo: Vec<u8> = if v6 {
        let mut p = z[l3 + 8..l3 + 40].to_vec();
        p.extend_from_slice(&u32::try_from(l4_len)?.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto]);
        p
    } else {
        let mut p = z[l3 + 12..l3 + 20].to_vec();
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&u16::try_from(l4_len)?.to_be_bytes());
        p
    };
    let l4_sum = fold_keep(sum_words(&pseudo) + sum_words(&z[l4..]));
    let mut cfg = GenConfig {
        kind,
        flows: spec.flows,
        sport_span: flows_per_addr,
        sport_base: SPORT_BASE,
        addr_base: addr_word_base,
        ip_sum,
        l4_sum,
        action: spec.action,
        ..GenConfig::default()
    };
    let copy = gen_copy_len(kind);
    ensure!(copy <= GEN_HDR_MAX && copy <= f.len(), "frame too short");
    cfg.hdr[..copy].copy_from_slice(&f[..copy]);
    let _ = hdr_len;
    Ok((f, cfg))
}

/// Flow `i`'s frame, built independently with etherparse (checksums
/// included), to check the program against.
fn reference_frame(spec: &FlowSpec, flow: u32) -> Result<Vec<u8>> {
    let per_addr = SPORT_SPAN.min(spec.flows);
    let sport = SPORT_BASE + u16::try_from(flow % per_addr)?;
    let bump = u16::try_from(flow / per_addr)?;
    let eth = etherparse::PacketBuilder::ethernet2(spec.src_mac, spec.dst_mac);
    let ip = match (spec.src, spec.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut octets = src.octets();
            let low = u16::from_be_bytes([octets[2], octets[3]]) + bump;
            octets[2..4].copy_from_slice(&low.to_be_bytes());
            let mut header = etherparse::Ipv4Header::new(
                0,
                64,
                if spec.tcp {
                    etherparse::IpNumber::TCP
                } else {
                    etherparse::IpNumber::UDP
                },
                octets,
                dst.octets(),
            )?;
            header.dont_fragment = true;
            eth.ip(etherparse::IpHeaders::Ipv4(
                header,
                etherparse::Ipv4Extensions::default(),
            ))
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut octets = src.octets();
            let low = u16::from_be_bytes([octets[14], octets[15]]) + bump;
            octets[14..16].copy_from_slice(&low.to_be_bytes());
            eth.ipv6(octets, dst.octets(), 64)
        }
        _ => bail!("mixed address families"),
    };
    let l4 = 14 + if spec.src.is_ipv6() { 40 } else { 20 };
    let mut out = Vec::with_capacity(spec.size);
    if spec.tcp {
        let payload = vec![0u8; spec.size - l4 - 20];
        ip.tcp(sport, spec.dport, 1, 0xffff)
            .ack(1)
            .write(&mut out, &payload)?;
    } else {
        let payload = vec![0u8; spec.size - l4 - 8];
        ip.udp(sport, spec.dport).write(&mut out, &payload)?;
    }
    Ok(out)
}
