//! Loading the backends' XDP programs (`lbctl decap attach|detach`): the
//! IPIP/IP6IP6 decapsulator, and a plain `XDP_PASS` program for veth peers
//! that must accept frames another XDP program sent with `XDP_TX`.
//!
//! Links are pinned under a directory on bpffs, named after the network
//! namespace and the interface, so the program stays attached after `lbctl`
//! exits and interfaces called `eth0` in different namespaces do not clash.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    EbpfLoader,
    programs::{Xdp, XdpMode, links::FdLink},
};

use crate::objects;

/// Default directory for the backends' link pins.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb-decap";

/// Which backend program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendProgram {
    /// `lb_decap`: strips IPIP / IP6IP6 and passes the inner packet.
    Decap,
    /// `lb_pass`: passes everything (lets a veth accept frames sent with `XDP_TX`).
    Pass,
}

impl BackendProgram {
    fn function(self) -> &'static str {
        match self {
            Self::Decap => "lb_decap",
            Self::Pass => "lb_pass",
        }
    }
}

fn netns_inode() -> io::Result<u64> {
    // /proc/thread-self: only the calling thread may have switched namespaces.
    Ok(fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// The pin of `program` on `iface` in the caller's network namespace.
///
/// # Errors
/// When the network namespace cannot be identified.
pub fn pin_path(dir: &Path, program: BackendProgram, iface: &str) -> io::Result<PathBuf> {
    Ok(dir.join(format!(
        "{}_{}_{}",
        program.function(),
        netns_inode()?,
        iface
    )))
}

/// Attaches `program` to `iface` (in the caller's network namespace) and
/// pins the link under `dir`. Replaces the program if already attached.
///
/// # Errors
/// When the interface does not exist, bpffs is not mounted, or the kernel
/// refuses the program.
pub fn attach(dir: &Path, program: BackendProgram, iface: &str) -> anyhow::Result<PathBuf> {
    let pin = pin_path(dir, program, iface).context("reading the network namespace")?;
    if pin.exists() {
        fs::remove_file(&pin).with_context(|| format!("replacing {}", pin.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| {
        format!(
            "creating {} (is bpffs mounted on /sys/fs/bpf?)",
            dir.display()
        )
    })?;
    let mut ebpf = EbpfLoader::new()
        .load(objects::DECAP)
        .context("loading the decap object")?;
    let prog: &mut Xdp = ebpf
        .program_mut(program.function())
        .with_context(|| format!("program {} missing from the object", program.function()))?
        .try_into()?;
    prog.load()
        .with_context(|| format!("loading {} (verifier)", program.function()))?;
    let id = prog
        .attach(iface, XdpMode::Default)
        .with_context(|| format!("attaching {} to {iface}", program.function()))?;
    let link = prog.take_link(id)?;
    let Ok(fd) = FdLink::try_from(link) else {
        bail!("the kernel attached XDP to {iface} without a BPF link, which cannot be pinned");
    };
    fd.pin(&pin)
        .with_context(|| format!("pinning the link at {}", pin.display()))?;
    Ok(pin)
}

/// Detaches `program` from `iface` by removing its link pin.
///
/// # Errors
/// When nothing is attached there, or the pin cannot be removed.
pub fn detach(dir: &Path, program: BackendProgram, iface: &str) -> anyhow::Result<PathBuf> {
    let pin = pin_path(dir, program, iface).context("reading the network namespace")?;
    if !pin.exists() {
        bail!(
            "{} is not attached to {iface} in this network namespace (no pin at {})",
            program.function(),
            pin.display()
        );
    }
    crate::dataplane::detach_pinned_link(&pin)
        .with_context(|| format!("detaching the link pinned at {}", pin.display()))?;
    fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
    Ok(pin)
}
