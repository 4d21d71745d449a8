//! The serving shards of a keyspace and the key range each one owns.

/// Position of a shard in a [`ShardMap`] (shards are sorted by range start).
pub type ShardIndex = usize;

/// Why a list of shards is not a valid shard map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardMapError {
    /// No shards at all: no row could be placed.
    #[error("a keyspace needs at least one serving shard")]
    Empty,
    /// The first range does not start at 0.
    #[error("shard {name} starts at {start:#018x}; the first shard must start at 0")]
    FirstStartNotZero { name: String, start: u64 },
    /// A range is empty or inverted.
    #[error("shard {name} has an empty key range [{start:#018x}, {end:#018x})")]
    EmptyRange { name: String, start: u64, end: u64 },
    /// Two consecutive shards leave a gap or overlap.
    #[error("shard {previous} ends at {end} but the next shard {next} starts at {start:#018x}")]
    NotContiguous {
        previous: String,
        end: String,
        next: String,
        start: u64,
    },
    /// A shard before the last one runs to the end of the key space.
    #[error("shard {name} runs to the end of the key space but is not the last shard")]
    OpenEndNotLast { name: String },
    /// The last shard does not reach the end of the key space.
    #[error("the last shard {name} ends at {end:#018x}; it must run to the end of the key space")]
    LastEndBounded { name: String, end: u64 },
    /// Two shards share a name.
    #[error("shard name {name} appears twice")]
    DuplicateName { name: String },
    /// A shard name is not a Vitess-style key range name.
    #[error("shard name {name} is not a key range: {reason}")]
    BadRangeName { name: String, reason: String },
}

/// One serving shard: its name and half-open key range `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ShardRange {
    name: String,
    start: u64,
    /// `None` = the end of the key space (2^64).
    end: Option<u64>,
}

/// The serving shards of a keyspace, sorted by range start.
///
/// Invariant: the ranges partition the u64 key space exactly (first starts at 0, each ends where
/// the next starts, the last is open-ended), so every keyspace ID has exactly one owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    shards: Vec<ShardRange>,
}

impl ShardMap {
    /// Builds a shard map from `(name, start, end)` triples in any order (`end = None` = 2^64).
    /// Fails unless the ranges partition the key space exactly.
    pub fn new(shards: Vec<(String, u64, Option<u64>)>) -> Result<Self, ShardMapError> {
        let mut shards: Vec<ShardRange> = shards
            .into_iter()
            .map(|(name, start, end)| ShardRange { name, start, end })
            .collect();
        shards.sort_by_key(|shard| shard.start);
        let first = shards.first().ok_or(ShardMapError::Empty)?;
        if first.start != 0 {
            return Err(ShardMapError::FirstStartNotZero {
                name: first.name.clone(),
                start: first.start,
            });
        }
        for (position, shard) in shards.iter().enumerate() {
            if shards[..position]
                .iter()
                .any(|other| other.name == shard.name)
            {
                return Err(ShardMapError::DuplicateName {
                    name: shard.name.clone(),
                });
            }
            if let Some(end) = shard.end
                && end <= shard.start
            {
                return Err(ShardMapError::EmptyRange {
                    name: shard.name.clone(),
                    start: shard.start,
                    end,
                });
            }
            match (shard.end, shards.get(position + 1)) {
                (Some(end), Some(next)) if end != next.start => {
                    return Err(ShardMapError::NotContiguous {
                        previous: shard.name.clone(),
                        end: format!("{end:#018x}"),
                        next: next.name.clone(),
                        start: next.start,
                    });
                }
                (None, Some(_)) => {
                    return Err(ShardMapError::OpenEndNotLast {
                        name: shard.name.clone(),
                    });
                }
                (Some(end), None) => {
                    return Err(ShardMapError::LastEndBounded {
                        name: shard.name.clone(),
                        end,
                    });
                }
                _ => {}
            }
        }
        Ok(ShardMap { shards })
    }

    /// Builds a shard map from Vitess-style range names (`-80`, `80-`, ...), each shard named
    /// after its range.
    pub fn from_range_names(names: &[&str]) -> Result<Self, ShardMapError> {
        let mut shards = Vec::with_capacity(names.len());
        for name in names {
            let range: tessera_proto::keyrange::KeyRange =
                name.parse()
                    .map_err(|error: tessera_proto::keyrange::KeyRangeParseError| {
                        ShardMapError::BadRangeName {
                            name: name.to_string(),
                            reason: error.to_string(),
                        }
                    })?;
            shards.push((name.to_string(), range.start, range.end));
        }
        ShardMap::new(shards)
    }

    /// Number of serving shards (at least 1).
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Always false: a shard map has at least one shard (kept for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Name of shard `index` (e.g. `-80`).
    ///
    /// Panics if `index >= len()`: indexes come from this map, so that is a caller bug.
    pub fn name(&self, index: ShardIndex) -> &str {
        &self.shards[index].name
    }

    /// Index of the shard with this name.
    pub fn index_of(&self, name: &str) -> Option<ShardIndex> {
        self.shards.iter().position(|shard| shard.name == name)
    }

    /// Key range `[start, end)` of shard `index` (`end = None` = 2^64).
    pub fn range(&self, index: ShardIndex) -> (u64, Option<u64>) {
        let shard = &self.shards[index];
        (shard.start, shard.end)
    }

    /// The shard whose range contains `keyspace_id`.
    pub fn shard_for(&self, keyspace_id: u64) -> ShardIndex {
        // The first shard starts at 0, so at least one start is <= any id.
        self.shards
            .partition_point(|shard| shard.start <= keyspace_id)
            .saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(ranges: &[(&str, u64, Option<u64>)]) -> Result<ShardMap, ShardMapError> {
        ShardMap::new(
            ranges
                .iter()
                .map(|(name, start, end)| (name.to_string(), *start, *end))
                .collect(),
        )
    }

    /// Goal: keyspace IDs at and around range boundaries go to the owning shard.
    #[test]
    fn shard_for_respects_half_open_ranges() {
        let shards = ShardMap::from_range_names(&["80-", "-40", "40-80"]).expect("valid map");
        assert_eq!(shards.name(0), "-40");
        assert_eq!(shards.name(shards.shard_for(0)), "-40");
        assert_eq!(shards.name(shards.shard_for(0x3fff_ffff_ffff_ffff)), "-40");
        assert_eq!(
            shards.name(shards.shard_for(0x4000_0000_0000_0000)),
            "40-80"
        );
        assert_eq!(
            shards.name(shards.shard_for(0x7fff_ffff_ffff_ffff)),
            "40-80"
        );
        assert_eq!(shards.name(shards.shard_for(0x8000_0000_0000_0000)), "80-");
        assert_eq!(shards.name(shards.shard_for(u64::MAX)), "80-");
        assert_eq!(shards.index_of("80-"), Some(2));
    }

    /// Goal: maps with gaps, overlaps, bounded ends or bad starts are rejected.
    #[test]
    fn new_rejects_maps_that_do_not_partition_the_space() {
        assert_eq!(map(&[]), Err(ShardMapError::Empty));
        assert!(matches!(
            map(&[("x", 1, None)]),
            Err(ShardMapError::FirstStartNotZero { .. })
        ));
        assert!(matches!(
            map(&[("a", 0, Some(10)), ("b", 11, None)]),
            Err(ShardMapError::NotContiguous { .. })
        ));
        assert!(matches!(
            map(&[("a", 0, Some(10)), ("b", 5, None)]),
            Err(ShardMapError::NotContiguous { .. })
        ));
        assert!(matches!(
            map(&[("a", 0, Some(10))]),
            Err(ShardMapError::LastEndBounded { .. })
        ));
        assert!(matches!(
            map(&[("a", 0, None), ("b", 0, None)]),
            Err(ShardMapError::OpenEndNotLast { .. }) | Err(ShardMapError::DuplicateName { .. })
        ));
        assert!(matches!(
            map(&[("a", 0, Some(0)), ("b", 0, None)]),
            Err(ShardMapError::EmptyRange { .. })
        ));
        assert!(matches!(
            map(&[("a", 0, Some(5)), ("a", 5, None)]),
            Err(ShardMapError::DuplicateName { .. })
        ));
        assert!(map(&[("-", 0, None)]).is_ok());
        assert!(matches!(
            ShardMap::from_range_names(&["-8x", "80-"]),
            Err(ShardMapError::BadRangeName { .. })
        ));
        assert!(matches!(
            ShardMap::from_range_names(&["-40", "80-"]),
            Err(ShardMapError::NotContiguous { .. })
        ));
    }
}
