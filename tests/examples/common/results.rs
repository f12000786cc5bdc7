//! Writing a bench's results: the JSON at the path asked for, and beside it
//! the chart (`.svg`) and the markdown report (`.md`) that shows it. Shared
//! by the benches' report modules.

use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::Value;

/// Writes `json` to `out`, `svg` next to it, and the markdown that
/// `markdown` makes given the chart's file name; prints where they went.
///
/// # Errors
/// When a directory or a file cannot be written.
pub fn write(
    out: &Path,
    json: &Value,
    svg: &str,
    markdown: impl FnOnce(&str) -> String,
) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(json)?;
    std::fs::write(out, format!("{text}\n"))
        .with_context(|| format!("writing {}", out.display()))?;
    let svg_path = out.with_extension("svg");
    std::fs::write(&svg_path, svg).with_context(|| format!("writing {}", svg_path.display()))?;
    let md_path = out.with_extension("md");
    let svg_name = svg_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::write(&md_path, markdown(&svg_name))
        .with_context(|| format!("writing {}", md_path.display()))?;
    println!(
        "results written to {}, {} and {}",
        out.display(),
        md_path.display(),
        svg_path.display()
    );
    Ok(())
}
