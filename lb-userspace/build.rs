//! Compiles the eBPF programs (crate `lb-ebpf`) for the BPF target with
//! aya-build and leaves the objects in `OUT_DIR` for `include_bytes_aligned!`.
//! Needs the nightly toolchain with rust-src and bpf-linker: `scripts/bootstrap.sh`.

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "lb-ebpf")
        .ok_or_else(|| anyhow!("package lb-ebpf not found in the workspace"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
        .context("building the eBPF programs failed; run scripts/bootstrap.sh (or `cargo xtask bootstrap`) first")
}
