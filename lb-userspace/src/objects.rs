//! The compiled eBPF objects, embedded in the binaries.

/// The balancer object (`lb-ebpf`'s `lb` binary): program `lb_balancer`,
/// the benchmark helpers `lb_drop` and `lb_bounce`, and every `LB_*` map.
pub static BALANCER: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// The backends' object (`lb-ebpf`'s `lb-decap` binary): programs `lb_decap`
/// and `lb_pass`, and the `LB_DECAP_STATS` map.
pub static DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));

/// The benchmark load generator (`lb-ebpf`'s `lb-gen` binary): programs
/// `lb_gen` (run with `BPF_PROG_TEST_RUN` live frames) and `lb_gen_sink`,
/// and the `LB_GEN_*` / `LB_SINK_STATS` maps.
pub static GEN: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-gen"));
