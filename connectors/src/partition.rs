//! Which share of a source's documents one work unit covers: partition `index` of
//! `count`, by a stable hash of the document key.
//!
//! Invariant: the hash depends on the key only (the first 60 bits of its MD5, which
//! PostgreSQL and MySQL compute in SQL too), and partition `i` of `n` is the contiguous
//! hash range `[ceil(i·2⁶⁰/n), ceil((i+1)·2⁶⁰/n))`. So every key lies in exactly one
//! partition for any `n`, a changed `n` moves keys between units without changing them,
//! and a ledger that stores the hash finds a partition's rows with one index range scan.

use md5::{Digest, Md5};

/// Bits of the key hash: 15 hex digits of MD5, so it fits a signed 64-bit column.
pub const HASH_BITS: u32 = 60;

/// Partition `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Partition {
    pub index: u32,
    pub count: u32,
}

impl Partition {
    /// Partition `index` of `count` (`index < count`, `count >= 1`).
    pub fn new(index: u32, count: u32) -> Self {
        assert!(count >= 1 && index < count, "partition {index} of {count}");
        Self { index, count }
    }

    /// The stable 60-bit hash of a document key: the first 15 hex digits of the MD5 of
    /// its UTF-8 bytes, as `('x' || substr(md5(k), 1, 15))::bit(60)::bigint` in
    /// PostgreSQL and `CONV(SUBSTRING(MD5(k), 1, 15), 16, 10)` in MySQL.
    pub fn key_hash(key: &str) -> i64 {
        let digest = Md5::digest(key.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        (u64::from_be_bytes(first) >> (64 - HASH_BITS)) as i64
    }

    /// The hash values `[lo, hi)` this partition covers.
    pub fn hash_range(&self) -> (i64, i64) {
        (
            bound(self.index, self.count),
            bound(self.index + 1, self.count),
        )
    }

    /// Whether the key with this hash lies in the partition.
    pub fn contains_hash(&self, hash: i64) -> bool {
        let (lo, hi) = self.hash_range();
        hash >= lo && hash < hi
    }

    pub fn contains(&self, key: &str) -> bool {
        self.contains_hash(Self::key_hash(key))
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// `ceil(i · 2⁶⁰ / n)`: where partition `i` of `n` starts.
fn bound(i: u32, n: u32) -> i64 {
    let space = 1u128 << HASH_BITS;
    (((i as u128) * space).div_ceil(n as u128)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_the_first_sixty_bits_of_md5() {
        // md5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(Partition::key_hash(""), 0xd41d8cd98f00b20);
        // `printf a/b.md | md5sum`: 037949b6853d86b...
        assert_eq!(Partition::key_hash("a/b.md"), 0x037949b6853d86b);
    }

    #[test]
    fn every_key_lies_in_exactly_one_partition_for_any_count() {
        for count in [1, 2, 3, 4, 6, 7, 8] {
            for n in 0..500 {
                let key = format!("doc-{n}.md");
                let holders = (0..count)
                    .filter(|&i| Partition::new(i, count).contains(&key))
                    .count();
                assert_eq!(holders, 1, "{key} in {holders} of {count} partitions");
            }
            let (lo, _) = Partition::new(0, count).hash_range();
            let (_, hi) = Partition::new(count - 1, count).hash_range();
            assert_eq!((lo, hi), (0, 1 << HASH_BITS));
        }
    }

    #[test]
    fn partitions_share_keys_fairly() {
        let count = 4;
        let mut sizes = [0usize; 4];
        for n in 0..4000 {
            let key = format!("row/{n}");
            let p = (0..count)
                .find(|&i| Partition::new(i, count).contains(&key))
                .unwrap();
            sizes[p as usize] += 1;
        }
        assert!(sizes.iter().all(|&s| (800..1200).contains(&s)), "{sizes:?}");
    }
}
