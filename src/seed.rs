//! Independent random seeds derived from one base seed.

/// Derive an independent seed from a base seed and a path of integers (splitmix64).
pub fn derive_seed(base: u64, path: &[u64]) -> u64 {
    let mut x = base ^ 0x9E37_79B9_7F4A_7C15;
    for &p in path {
        x ^= p
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(x << 6)
            .wrapping_add(x >> 2);
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x = z ^ (z >> 31);
    }
    x
}
