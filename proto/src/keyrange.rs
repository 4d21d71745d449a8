//! Key ranges: the slice of the u64 keyspace-ID space that a shard owns.
//!
//! Names follow Vitess: `-80` is `[0, 0x80..)`, `80-` is `[0x80.., end)`, `40-80` is
//! `[0x40.., 0x80..)`, and `-` (or `0`, Vitess' name for an unsharded keyspace's only shard) is the
//! whole space. Each bound is a hex string of whole bytes (an even number of digits, 2..=16),
//! left-aligned in the 64-bit ID: `8` is rejected like Vitess rejects it (it cannot be decoded as
//! bytes), `80` and `8000` both mean `0x8000_0000_0000_0000`. Upper- and lower-case digits are
//! accepted; the canonical name printed by `Display` is lower-case with trailing zero bytes
//! removed, so `8000-C0` prints as `80-c0`.
//!
//! Why the range also renders as SQL: a shard's key range becomes a PostgreSQL predicate on the
//! hash vindex (see [`crate::vindex`]), used to check row placement and, for resharding, as a
//! logical-replication row filter. PostgreSQL only has signed int8, so a u64 range is translated
//! into one or two signed intervals ([`KeyRange::signed_intervals`]).

use std::fmt;
use std::str::FromStr;

/// Number of keyspace IDs in the whole space (2^64), as u128 so range arithmetic cannot overflow.
const SPACE_END: u128 = 1 << 64;

/// First keyspace ID whose signed reinterpretation is negative (2^63).
const SIGN_BIT: u64 = 1 << 63;

/// A half-open interval `[start, end)` of keyspace IDs; `end: None` means the end of the u64 space.
///
/// Invariant: `end`, when present, is greater than `start` (a range is never empty). Values built
/// through [`KeyRange::new`], parsing and [`KeyRange::split_evenly`] uphold it; code that builds
/// the struct literally must too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyRange {
    /// First keyspace ID in the range.
    pub start: u64,
    /// First keyspace ID after the range; `None` means the range runs to the end of the space.
    pub end: Option<u64>,
}

/// Why a key-range name could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRangeParseError {
    /// The name has no `-` separating start and end (and is not `0`).
    #[error("key range {name:?} has no '-': expected a name like -80, 80-, 40-80 or -")]
    MissingDash { name: String },
    /// The name has more than one `-`.
    #[error("key range {name:?} has more than one '-'")]
    TooManyDashes { name: String },
    /// A bound contains a character that is not a hex digit.
    #[error("key range bound {bound:?} is not hexadecimal")]
    NotHex { bound: String },
    /// A bound has an odd number of hex digits; bounds are whole bytes, as in Vitess.
    #[error(
        "key range bound {bound:?} has an odd number of hex digits: bounds are whole bytes (write 80, not 8)"
    )]
    OddLength { bound: String },
    /// A bound has more than 16 hex digits (keyspace IDs are 64 bits).
    #[error("key range bound {bound:?} is longer than 16 hex digits (keyspace IDs are 64-bit)")]
    TooLong { bound: String },
    /// The end is not after the start, so the range would be empty.
    #[error("key range {name:?} is empty: its end is not after its start")]
    Empty { name: String },
}

/// Why [`KeyRange::new`] or [`KeyRange::split_evenly`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRangeError {
    /// `end` is not greater than `start`.
    #[error("key range [{start:#x}, {end:#x}) is empty")]
    Empty { start: u64, end: u64 },
    /// `split_evenly(0)`.
    #[error("cannot split the keyspace into 0 shards")]
    ZeroShards,
}

/// Ranges that do not partition the keyspace exactly, with every defect found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct PartitionError {
    /// Parts of the space no range covers, in ascending order.
    pub gaps: Vec<KeyRange>,
    /// Pairs of ranges sharing keyspace IDs, in ascending order of the shared part.
    pub overlaps: Vec<Overlap>,
}

/// Two ranges that share keyspace IDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlap {
    /// The range that starts first (or the shorter one when both start together).
    pub first: KeyRange,
    /// The other range.
    pub second: KeyRange,
    /// The keyspace IDs both contain.
    pub shared: KeyRange,
}

/// One interval of signed int8 values `[lower, upper)`, the form in which PostgreSQL sees
/// keyspace IDs. `lower: None` means from `i64::MIN`; `upper: None` means through `i64::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedInterval {
    /// Smallest signed value included, or `None` for no lower bound.
    pub lower: Option<i64>,
    /// First signed value excluded, or `None` for no upper bound.
    pub upper: Option<i64>,
}

impl SignedInterval {
    /// Whether the signed value lies in the interval.
    pub fn contains(&self, value: i64) -> bool {
        self.lower.is_none_or(|lower| value >= lower)
            && self.upper.is_none_or(|upper| value < upper)
    }
}

impl KeyRange {
    /// The whole keyspace-ID space, named `-`.
    pub const FULL: KeyRange = KeyRange {
        start: 0,
        end: None,
    };

    /// A range `[start, end)`; `end: None` runs to the end of the space. Rejects empty ranges.
    pub fn new(start: u64, end: Option<u64>) -> Result<KeyRange, KeyRangeError> {
        match end {
            Some(end) if end <= start => Err(KeyRangeError::Empty { start, end }),
            _ => Ok(KeyRange { start, end }),
        }
    }

    /// Whether this is the whole space.
    pub fn is_full(&self) -> bool {
        self.start == 0 && self.end.is_none()
    }

    /// Whether the keyspace ID lies in the range.
    pub fn contains(&self, keyspace_id: u64) -> bool {
        keyspace_id >= self.start && self.end.is_none_or(|end| keyspace_id < end)
    }

    /// The keyspace IDs both ranges contain, if any.
    pub fn intersection(&self, other: &KeyRange) -> Option<KeyRange> {
        let start = self.start.max(other.start);
        let end = self.end_exclusive().min(other.end_exclusive());
        (u128::from(start) < end).then(|| KeyRange {
            start,
            end: end_from_u128(end),
        })
    }

    /// The end as a number in `1..=2^64`, so comparisons need no special case for `None`.
    fn end_exclusive(&self) -> u128 {
        self.end.map_or(SPACE_END, u128::from)
    }

    /// Checks that `ranges` cover every keyspace ID exactly once (the serving shards of a
    /// keyspace must). Reports every gap and every overlapping pair, not only the first.
    pub fn check_partition(ranges: &[KeyRange]) -> Result<(), PartitionError> {
        let mut sorted = ranges.to_vec();
        sorted.sort_by_key(|range| (range.start, range.end_exclusive()));
        let mut gaps = Vec::new();
        let mut overlaps = Vec::new();
        // Everything below `covered_until` is covered by some range already visited.
        let mut covered_until: u128 = 0;
        for (index, range) in sorted.iter().enumerate() {
            if u128::from(range.start) > covered_until {
                gaps.push(KeyRange {
                    // covered_until < range.start <= u64::MAX here, so it fits.
                    start: covered_until as u64,
                    end: Some(range.start),
                });
            }
            // Later ranges start at or after this one; those starting before its end overlap it.
            for later in &sorted[index + 1..] {
                if u128::from(later.start) >= range.end_exclusive() {
                    break;
                }
                if let Some(shared) = range.intersection(later) {
                    overlaps.push(Overlap {
                        first: *range,
                        second: *later,
                        shared,
                    });
                }
            }
            covered_until = covered_until.max(range.end_exclusive());
        }
        if covered_until < SPACE_END {
            gaps.push(KeyRange {
                start: covered_until as u64,
                end: None,
            });
        }
        overlaps.sort_by_key(|overlap| (overlap.shared, overlap.first, overlap.second));
        if gaps.is_empty() && overlaps.is_empty() {
            Ok(())
        } else {
            Err(PartitionError { gaps, overlaps })
        }
    }

    /// Splits the whole space into `shard_count` contiguous ranges of (nearly) equal size, with
    /// short names: boundaries are whole bytes, using as few bytes as `shard_count` needs
    /// (1 byte up to 256 shards, 2 up to 65536, ...). 2 gives `-80`, `80-`; 4 gives `-40`,
    /// `40-80`, `80-c0`, `c0-`; 3 gives `-55`, `55-aa`, `aa-`.
    pub fn split_evenly(shard_count: usize) -> Result<Vec<KeyRange>, KeyRangeError> {
        if shard_count == 0 {
            return Err(KeyRangeError::ZeroShards);
        }
        let count = shard_count as u128;
        let mut precision_bytes: u32 = 1;
        while precision_bytes < 8 && (1u128 << (8 * precision_bytes)) < count {
            precision_bytes += 1;
        }
        let steps = 1u128 << (8 * precision_bytes);
        let shift = 64 - 8 * precision_bytes;
        // Boundary i (0..=count) in the space, as u128; boundary `count` is 2^64.
        let boundary = |index: u128| (index * steps / count) << shift;
        let ranges = (0..count)
            .map(|index| KeyRange {
                start: boundary(index) as u64,
                end: end_from_u128(boundary(index + 1)),
            })
            .collect();
        Ok(ranges)
    }

    /// The signed int8 intervals whose union is this range, as PostgreSQL sees keyspace IDs
    /// (u64 reinterpreted as i64). IDs below 2^63 keep their value; IDs at or above it become
    /// negative, so a range that crosses 2^63 becomes two intervals. The whole space is one
    /// unbounded interval.
    pub fn signed_intervals(&self) -> Vec<SignedInterval> {
        if self.is_full() {
            return vec![SignedInterval {
                lower: None,
                upper: None,
            }];
        }
        let mut intervals = Vec::with_capacity(2);
        // The part below 2^63: non-negative signed values, same numbers.
        if self.start < SIGN_BIT {
            intervals.push(SignedInterval {
                lower: Some(self.start as i64),
                upper: match self.end {
                    Some(end) if end < SIGN_BIT => Some(end as i64),
                    _ => None,
                },
            });
        }
        // The part at or above 2^63: negative signed values, `id - 2^64`.
        if self.end_exclusive() > u128::from(SIGN_BIT) {
            intervals.push(SignedInterval {
                lower: (self.start > SIGN_BIT).then_some(self.start as i64),
                upper: Some(self.end.map_or(0, |end| end as i64)),
            });
        }
        intervals
    }

    /// SQL that is true exactly for rows whose keyspace ID lies in this range, given the SQL
    /// expression computing the signed keyspace ID (see [`crate::vindex::sql_hash_expr`]).
    /// Over `h`: `-80` gives `(h >= 0)`, `80-` gives `(h < 0)`, `40-80` gives
    /// `(h >= 4611686018427387904)` and `40-c0`, which crosses 2^63, gives
    /// `(h >= 4611686018427387904 OR h < -4611686018427387904)`. The whole space gives `true`.
    /// The result is parenthesised, so it can be used as a publication row filter as is.
    /// `hash_expr` is inserted verbatim, possibly twice.
    pub fn to_sql_predicate(&self, hash_expr: &str) -> String {
        if self.is_full() {
            return "true".to_string();
        }
        let alternatives: Vec<String> = self
            .signed_intervals()
            .iter()
            .map(|interval| {
                let mut conditions = Vec::with_capacity(2);
                if let Some(lower) = interval.lower {
                    conditions.push(format!("{hash_expr} >= {lower}"));
                }
                if let Some(upper) = interval.upper {
                    conditions.push(format!("{hash_expr} < {upper}"));
                }
                conditions.join(" AND ")
            })
            .collect();
        format!("({})", alternatives.join(" OR "))
    }
}

/// Converts an exclusive end in `1..=2^64` back to the struct's representation.
fn end_from_u128(end: u128) -> Option<u64> {
    (end < SPACE_END).then_some(end as u64)
}

/// Canonical hex of a non-zero bound: lower-case, whole bytes, trailing zero bytes removed.
fn format_bound(value: u64) -> String {
    let full = format!("{value:016x}");
    let mut trimmed = full.as_str();
    while trimmed.len() > 2 && trimmed.ends_with("00") {
        trimmed = &trimmed[..trimmed.len() - 2];
    }
    trimmed.to_string()
}

/// Parses one bound; `""` is 0 for a start (callers handle an empty end).
fn parse_bound(bound: &str) -> Result<u64, KeyRangeParseError> {
    if bound.is_empty() {
        return Ok(0);
    }
    if !bound.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(KeyRangeParseError::NotHex {
            bound: bound.to_string(),
        });
    }
    if bound.len() > 16 {
        return Err(KeyRangeParseError::TooLong {
            bound: bound.to_string(),
        });
    }
    if !bound.len().is_multiple_of(2) {
        return Err(KeyRangeParseError::OddLength {
            bound: bound.to_string(),
        });
    }
    let value = u64::from_str_radix(bound, 16).map_err(|_| KeyRangeParseError::NotHex {
        bound: bound.to_string(),
    })?;
    // Left-align: "80" is the top byte.
    Ok(value << (64 - 4 * bound.len()))
}

impl FromStr for KeyRange {
    type Err = KeyRangeParseError;

    fn from_str(name: &str) -> Result<KeyRange, KeyRangeParseError> {
        if name == "0" || name == "-" {
            return Ok(KeyRange::FULL);
        }
        let mut parts = name.split('-');
        let (Some(start_text), Some(end_text)) = (parts.next(), parts.next()) else {
            return Err(KeyRangeParseError::MissingDash {
                name: name.to_string(),
            });
        };
        if parts.next().is_some() {
            return Err(KeyRangeParseError::TooManyDashes {
                name: name.to_string(),
            });
        }
        let start = parse_bound(start_text)?;
        let end = if end_text.is_empty() {
            None
        } else {
            Some(parse_bound(end_text)?)
        };
        KeyRange::new(start, end).map_err(|_| KeyRangeParseError::Empty {
            name: name.to_string(),
        })
    }
}

impl fmt::Display for KeyRange {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start != 0 {
            formatter.write_str(&format_bound(self.start))?;
        }
        formatter.write_str("-")?;
        if let Some(end) = self.end {
            formatter.write_str(&format_bound(end))?;
        }
        Ok(())
    }
}

impl serde::Serialize for KeyRange {
    /// Serialised as its canonical name, the form operators read in topology records.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for KeyRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<KeyRange, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl PartitionError {
    /// One line listing every gap and overlap by canonical range name.
    fn describe(&self) -> String {
        let mut problems: Vec<String> = self.gaps.iter().map(|gap| format!("gap {gap}")).collect();
        problems.extend(self.overlaps.iter().map(|overlap| {
            format!(
                "overlap of {} and {} on {}",
                overlap.first, overlap.second, overlap.shared
            )
        }));
        format!(
            "key ranges do not partition the keyspace: {}",
            problems.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn range(name: &str) -> KeyRange {
        name.parse().unwrap()
    }

    /// Goal: Vitess-style names parse to the documented bounds.
    #[test]
    fn parses_vitess_names() {
        assert_eq!(
            range("-80"),
            KeyRange {
                start: 0,
                end: Some(0x8000_0000_0000_0000)
            }
        );
        assert_eq!(
            range("80-"),
            KeyRange {
                start: 0x8000_0000_0000_0000,
                end: None
            }
        );
        assert_eq!(
            range("40-80"),
            KeyRange {
                start: 0x4000_0000_0000_0000,
                end: Some(0x8000_0000_0000_0000)
            }
        );
        assert_eq!(range("-"), KeyRange::FULL);
        assert_eq!(range("0"), KeyRange::FULL);
        assert_eq!(range("8000-C0"), range("80-c0"));
        assert_eq!(
            range("0123456789abcdef-"),
            KeyRange {
                start: 0x0123_4567_89ab_cdef,
                end: None
            }
        );
        assert_eq!(range("00-80"), range("-80"));
    }

    /// Goal: canonical names round-trip and non-canonical spellings print canonically.
    #[test]
    fn display_is_canonical() {
        for name in [
            "-80",
            "80-",
            "40-80",
            "-",
            "80-c0",
            "-0001",
            "1234-123456",
            "0123456789abcdef-",
        ] {
            assert_eq!(range(name).to_string(), name);
        }
        assert_eq!(range("0").to_string(), "-");
        assert_eq!(range("8000-C000").to_string(), "80-c0");
        assert_eq!(range("00-80").to_string(), "-80");
    }

    /// Goal: every malformed name gets its own typed error.
    #[test]
    fn rejects_malformed_names() {
        let error = |name: &str| name.parse::<KeyRange>().unwrap_err();
        assert!(matches!(
            error("80"),
            KeyRangeParseError::MissingDash { .. }
        ));
        assert!(matches!(error(""), KeyRangeParseError::MissingDash { .. }));
        assert!(matches!(
            error("-40-80"),
            KeyRangeParseError::TooManyDashes { .. }
        ));
        assert!(matches!(error("8-"), KeyRangeParseError::OddLength { .. }));
        assert!(matches!(error("-8"), KeyRangeParseError::OddLength { .. }));
        assert!(matches!(error("zz-"), KeyRangeParseError::NotHex { .. }));
        assert!(matches!(error(" 80-"), KeyRangeParseError::NotHex { .. }));
        assert!(matches!(error("+8-"), KeyRangeParseError::NotHex { .. }));
        assert!(matches!(
            error("012345678901234567-"),
            KeyRangeParseError::TooLong { .. }
        ));
        assert!(matches!(error("80-40"), KeyRangeParseError::Empty { .. }));
        assert!(matches!(error("80-8000"), KeyRangeParseError::Empty { .. }));
        assert!(matches!(error("-00"), KeyRangeParseError::Empty { .. }));
        assert!(error("8-").to_string().contains("write 80, not 8"));
    }

    /// Goal: contains honours the half-open bounds, including the top of the space.
    #[test]
    fn contains_is_half_open() {
        let low = range("-80");
        assert!(low.contains(0));
        assert!(low.contains(0x7fff_ffff_ffff_ffff));
        assert!(!low.contains(0x8000_0000_0000_0000));
        let high = range("80-");
        assert!(high.contains(0x8000_0000_0000_0000));
        assert!(high.contains(u64::MAX));
        assert!(!high.contains(0x7fff_ffff_ffff_ffff));
        assert!(KeyRange::FULL.contains(0) && KeyRange::FULL.contains(u64::MAX));
    }

    /// Goal: a correct partition passes, in any order.
    #[test]
    fn partition_accepts_exact_cover() {
        let ranges = [range("80-c0"), range("-40"), range("c0-"), range("40-80")];
        assert_eq!(KeyRange::check_partition(&ranges), Ok(()));
        assert_eq!(KeyRange::check_partition(&[KeyRange::FULL]), Ok(()));
    }

    /// Goal: gaps (start, middle, end, empty list) and overlaps are each reported precisely.
    #[test]
    fn partition_reports_gaps_and_overlaps() {
        let error = KeyRange::check_partition(&[range("40-80"), range("90-")]).unwrap_err();
        assert_eq!(error.gaps, vec![range("-40"), range("80-90")]);
        assert!(error.overlaps.is_empty());

        let error = KeyRange::check_partition(&[range("-80")]).unwrap_err();
        assert_eq!(error.gaps, vec![range("80-")]);

        let error = KeyRange::check_partition(&[]).unwrap_err();
        assert_eq!(error.gaps, vec![KeyRange::FULL]);

        let error =
            KeyRange::check_partition(&[range("-80"), range("40-c0"), range("c0-")]).unwrap_err();
        assert!(error.gaps.is_empty());
        assert_eq!(
            error.overlaps,
            vec![Overlap {
                first: range("-80"),
                second: range("40-c0"),
                shared: range("40-80")
            }]
        );
        assert_eq!(
            error.to_string(),
            "key ranges do not partition the keyspace: overlap of -80 and 40-c0 on 40-80"
        );

        // A duplicate shard and a range nested inside another are overlaps too.
        let error =
            KeyRange::check_partition(&[range("-"), range("-80"), range("80-")]).unwrap_err();
        assert_eq!(error.overlaps.len(), 2);
        assert_eq!(error.overlaps[0].shared, range("-80"));
        assert_eq!(error.overlaps[1].shared, range("80-"));
    }

    /// Goal: split_evenly gives the documented names and always partitions the space.
    #[test]
    fn split_evenly_partitions() {
        let names = |count| {
            KeyRange::split_evenly(count)
                .unwrap()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(1), ["-"]);
        assert_eq!(names(2), ["-80", "80-"]);
        assert_eq!(names(4), ["-40", "40-80", "80-c0", "c0-"]);
        assert_eq!(names(3), ["-55", "55-aa", "aa-"]);
        for count in [1, 2, 3, 5, 7, 16, 255, 256, 257, 1000, 65536, 65537] {
            let ranges = KeyRange::split_evenly(count).unwrap();
            assert_eq!(ranges.len(), count);
            assert_eq!(KeyRange::check_partition(&ranges), Ok(()), "{count} shards");
        }
        assert_eq!(KeyRange::split_evenly(0), Err(KeyRangeError::ZeroShards));
    }

    /// Goal: predicates have the documented shape for ranges on each side of 2^63.
    #[test]
    fn sql_predicate_shapes() {
        let cases = [
            ("-", "true"),
            ("-80", "(h >= 0)"),
            ("80-", "(h < 0)"),
            ("40-80", "(h >= 4611686018427387904)"),
            ("-40", "(h >= 0 AND h < 4611686018427387904)"),
            ("c0-", "(h >= -4611686018427387904 AND h < 0)"),
            ("80-c0", "(h < -4611686018427387904)"),
            (
                "40-c0",
                "(h >= 4611686018427387904 OR h < -4611686018427387904)",
            ),
        ];
        for (name, expected) in cases {
            assert_eq!(range(name).to_sql_predicate("h"), expected, "range {name}");
        }
    }

    /// Goal: deserialising goes through the name parser, so bad names are rejected there.
    #[test]
    fn deserialize_parses_names() {
        use serde::Deserialize;
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error, StrDeserializer};
        let parse = |name: &'static str| {
            let deserializer: StrDeserializer<'_, Error> = name.into_deserializer();
            KeyRange::deserialize(deserializer)
        };
        assert_eq!(parse("8000-c0").unwrap(), range("80-c0"));
        let error = parse("8-").unwrap_err().to_string();
        assert!(error.contains("odd number of hex digits"), "{error}");
    }

    /// Evaluates a predicate produced by `to_sql_predicate` over `h` for a signed value, by
    /// reading the SQL text itself (so the rendering, not only the intervals, is checked).
    fn evaluate_predicate(sql: &str, value: i64) -> bool {
        if sql == "true" {
            return true;
        }
        let inner = sql
            .strip_prefix('(')
            .and_then(|rest| rest.strip_suffix(')'))
            .expect("predicate is parenthesised");
        inner.split(" OR ").any(|alternative| {
            alternative.split(" AND ").all(|condition| {
                let tokens: Vec<&str> = condition.split(' ').collect();
                assert_eq!(tokens.len(), 3, "condition {condition:?}");
                assert_eq!(tokens[0], "h");
                let bound: i64 = tokens[2].parse().expect("signed bound");
                match tokens[1] {
                    ">=" => value >= bound,
                    "<" => value < bound,
                    operator => panic!("unexpected operator {operator}"),
                }
            })
        })
    }

    /// Keyspace IDs biased towards the places where off-by-one errors live.
    fn keyspace_id() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            Just(0),
            Just(u64::MAX),
            Just(SIGN_BIT),
            Just(SIGN_BIT - 1),
            Just(SIGN_BIT + 1),
            (0u64..=255).prop_map(|byte| byte << 56),
        ]
    }

    fn key_range() -> impl Strategy<Value = KeyRange> {
        (keyspace_id(), keyspace_id(), any::<bool>()).prop_map(|(first, second, open_end)| {
            let (start, end) = (first.min(second), first.max(second));
            if open_end || start == end {
                KeyRange { start, end: None }
            } else {
                KeyRange {
                    start,
                    end: Some(end),
                }
            }
        })
    }

    proptest! {
        /// Goal: the SQL predicate over signed values selects exactly what `contains` selects.
        #[test]
        fn predicate_agrees_with_contains(range in key_range(), id in keyspace_id(), ids in proptest::collection::vec(keyspace_id(), 16)) {
            let sql = range.to_sql_predicate("h");
            for id in std::iter::once(id).chain(ids).chain([range.start, range.start.wrapping_sub(1)]).chain(range.end) {
                prop_assert_eq!(range.contains(id), evaluate_predicate(&sql, id as i64), "range {} id {:#x} sql {}", range, id, sql);
                let in_intervals = range.signed_intervals().iter().any(|interval| interval.contains(id as i64));
                prop_assert_eq!(range.contains(id), in_intervals);
            }
        }

        /// Goal: every range's canonical name parses back to the same range.
        #[test]
        fn name_round_trips(range in key_range()) {
            let name = range.to_string();
            prop_assert_eq!(name.parse::<KeyRange>(), Ok(range));
        }

        /// Goal: ranges cut at random points partition the space; dropping one leaves exactly it as a gap.
        #[test]
        fn cuts_partition_and_missing_piece_is_the_gap(mut cuts in proptest::collection::btree_set(1u64.., 0..8), drop_index in any::<proptest::sample::Index>()) {
            let mut bounds: Vec<u64> = vec![0];
            bounds.extend(std::mem::take(&mut cuts));
            let ranges: Vec<KeyRange> = bounds.iter().enumerate().map(|(index, start)| KeyRange { start: *start, end: bounds.get(index + 1).copied() }).collect();
            prop_assert_eq!(KeyRange::check_partition(&ranges), Ok(()));
            let dropped = drop_index.index(ranges.len());
            let mut remaining = ranges.clone();
            let missing = remaining.remove(dropped);
            let error = KeyRange::check_partition(&remaining).unwrap_err();
            prop_assert_eq!(error.gaps, vec![missing]);
            prop_assert!(error.overlaps.is_empty());
        }
    }
}
