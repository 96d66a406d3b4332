//! Hash maps keyed by numbers (file handles, inode numbers) on the request
//! path. The standard SipHash resists keys chosen to collide, which these
//! keys are not (the daemon hands out the handles; inode numbers come from
//! the storage), and costs a measurable share of an open/close; one
//! SplitMix64 round spreads a number over all 64 bits instead.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::spans::mix;

/// Hasher of integer keys (and tuples of them).
#[derive(Debug, Default, Clone, Copy)]
pub struct NumHasher(u64);

impl Hasher for NumHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = mix(self.0.rotate_left(5) ^ n);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_i32(&mut self, n: i32) {
        self.write_u64(n as u32 as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A `HashMap` with [`NumHasher`].
pub type NumMap<K, V> = HashMap<K, V, BuildHasherDefault<NumHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn sequential_keys_spread_over_the_high_bits() {
        // hashbrown picks the bucket from the low bits and the tag from the
        // top 7: both must vary for consecutive handles.
        let b = BuildHasherDefault::<NumHasher>::default();
        let tops: std::collections::HashSet<u64> =
            (0..1000u64).map(|k| b.hash_one(k) >> 57).collect();
        let lows: std::collections::HashSet<u64> =
            (0..1000u64).map(|k| b.hash_one(k) & 1023).collect();
        assert_eq!(tops.len(), 128);
        assert!(lows.len() > 550, "{}", lows.len());
    }

    #[test]
    fn tuple_keys_differ() {
        let b = BuildHasherDefault::<NumHasher>::default();
        assert_ne!(b.hash_one((7u64, 0i32)), b.hash_one((7u64, 2i32)));
        assert_ne!(b.hash_one((7u64, 2i32)), b.hash_one((2u64, 7i32)));
        let mut m: NumMap<(u64, i32), u8> = NumMap::default();
        m.insert((1, 2), 3);
        assert_eq!(m.get(&(1, 2)), Some(&3));
        assert_eq!(m.get(&(2, 1)), None);
    }
}
