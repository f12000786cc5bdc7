//! The compiled eBPF objects, embedded in the binaries.

/// The balancer object (`lb-ebpf`'s `lb` binary): program `lb_balancer`,
/// the benchmark helpers `lb_drop` and `lb_bounce`, and every `LB_*` map.
pub static BALANCER: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// The backends' object (`lb-ebpf`'s `lb-decap` binary): programs `lb_decap`
/// and `lb_pass`, and the `LB_DECAP_STATS` map.
pub static DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));
