//! Internet checksums (RFC 1071) computed over memory-order words, so the
//! result is stored back with `to_ne_bytes` whatever the host byte order.

/// Folds a 32-bit (or wider) one's-complement sum and complements it.
#[inline(always)]
#[must_use]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
    let s = sum as u16;
    !s
}

/// Checksum of an IPv4 header held on the stack (its checksum field zero).
#[inline(always)]
#[must_use]
pub fn ipv4_header(h: &[u8; 20]) -> u16 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < 20 {
        sum += u64::from(u16::from_ne_bytes([h[i], h[i + 1]]));
        i += 2;
    }
    fold(sum)
}
