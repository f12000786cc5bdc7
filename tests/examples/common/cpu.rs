//! Where a CPU's time went, from `/proc/stat`: the benches' busy shares of
//! the cores they pin work to (other work on a shared machine shows there).

/// Ticks of one CPU since boot, from `/proc/stat`.
#[derive(Clone, Copy, Default)]
pub struct CoreTicks {
    /// user, nice, system, irq, softirq and steal.
    pub busy: u64,
    pub softirq: u64,
    /// busy, idle and iowait.
    pub total: u64,
}

pub fn core_ticks(cpu: usize) -> CoreTicks {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{cpu}");
    let Some(line) = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
    else {
        return CoreTicks::default();
    };
    let t: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    if t.len() < 8 {
        return CoreTicks::default();
    }
    // user nice system idle iowait irq softirq steal
    let busy = t[0] + t[1] + t[2] + t[5] + t[6] + t[7];
    CoreTicks {
        busy,
        softirq: t[6],
        total: busy + t[3] + t[4],
    }
}

impl CoreTicks {
    /// Busy share of the CPU from `earlier` to `self`.
    #[expect(clippy::cast_precision_loss, reason = "tick counts far below 2^52")]
    pub fn busy_since(&self, earlier: &CoreTicks) -> f64 {
        self.busy.saturating_sub(earlier.busy) as f64
            / self.total.saturating_sub(earlier.total).max(1) as f64
    }
}
