//! Hash vindex: the keyspace ID of a sharding value, computed exactly as PostgreSQL's own seeded
//! hash functions compute it.
//!
//! Why PostgreSQL's functions and not a hash of our own: a shard's key range must be expressible
//! as a SQL predicate that PostgreSQL evaluates by itself (`hashint8extended(col, seed) >= lo ...`),
//! because resharding uses that predicate as a logical-replication row filter. So the gate (Rust)
//! and PostgreSQL (SQL) must agree bit for bit; `tests/tests/hash_vs_postgres.rs` checks that
//! against a real server.
//!
//! The algorithm is Bob Jenkins' lookup3 in the variant PostgreSQL uses (`hash_bytes_extended`
//! and `hash_bytes_uint32_extended` in `src/common/hashfn.c`), written here from the published
//! algorithm. Three PostgreSQL-specific details matter and are easy to get wrong:
//! - the 64-bit seed is folded into the initial state (high half into `a`, low half into `b`)
//!   followed by one extra `mix` round, only when the seed is non-zero;
//! - the 32-bit words are read little-endian (PostgreSQL on x86/ARM), and for the final 9..11
//!   tail bytes the lowest byte of `c` stays unused (`k[8]` lands in bits 8..16);
//! - `final` runs even for an empty key, and the 64-bit result is `(b << 32) | c`.
//!
//! Integers of every width hash alike: PostgreSQL folds the high half of an int8 into the low half
//! (`lo ^= hi` for non-negative values, `lo ^= !hi` for negative ones), so an int8 holding a value
//! that fits in int4 hashes like that int4. Tessera therefore uses one function for int2, int4 and
//! int8 sharding columns.

/// Seed of every Tessera hash vindex (ARCHITECTURE section 3). It is positive as an i64
/// (8816678312871386365), so it prints the same either way in SQL.
///
/// Note: an early brief quoted the decimal 8817117418955700477; that is 0x7A5CB193D3C378FD, not
/// this seed. The hex value fixed by ARCHITECTURE is authoritative.
pub const HASH_SEED: u64 = 0x7A5B_2236_7996_DCFD;

/// Keyspace ID of an integer sharding value (int2, int4 or int8): `hashint8extended(v, seed)`
/// reinterpreted as u64.
pub fn hash_int8(value: i64) -> u64 {
    hash_int8_with_seed(value, HASH_SEED)
}

/// Keyspace ID of a text (or varchar) sharding value given as its UTF-8 bytes:
/// `hashtextextended(v, seed)` under a deterministic collation, reinterpreted as u64.
pub fn hash_text(value: &[u8]) -> u64 {
    hash_bytes_extended(value, HASH_SEED)
}

/// Keyspace ID of a uuid sharding value given as its 16 bytes in network (RFC 4122) order:
/// `uuid_hash_extended(v, seed)` reinterpreted as u64.
pub fn hash_uuid(value: &[u8; 16]) -> u64 {
    hash_bytes_extended(value, HASH_SEED)
}

/// `hashint8extended(value, seed)` for an arbitrary seed (the SQL function's second argument,
/// an int8, reinterpreted as u64).
pub fn hash_int8_with_seed(value: i64, seed: u64) -> u64 {
    // Truncations are the point here: PostgreSQL splits the int8 into two 32-bit halves.
    let low_half = value as u32;
    let high_half = (value >> 32) as u32;
    let folded = if value >= 0 {
        low_half ^ high_half
    } else {
        low_half ^ !high_half
    };
    hash_bytes_uint32_extended(folded, seed)
}

/// PostgreSQL's `hash_bytes_extended(k, keylen, seed)`: lookup3 over a byte string.
pub fn hash_bytes_extended(key: &[u8], seed: u64) -> u64 {
    // PostgreSQL passes the length as an int; keys longer than 4 GiB cannot exist there, and
    // wrapping matches its `(uint32) keylen` conversion anyway.
    let mut state = State::new(key.len() as u32, seed);
    let mut chunks = key.chunks_exact(12);
    for chunk in &mut chunks {
        state.a = state.a.wrapping_add(read_u32_le(&chunk[0..4]));
        state.b = state.b.wrapping_add(read_u32_le(&chunk[4..8]));
        state.c = state.c.wrapping_add(read_u32_le(&chunk[8..12]));
        state.mix();
    }
    let tail = chunks.remainder();
    // Tail bytes 0..4 go to `a`, 4..8 to `b`, 8..11 to `c` shifted up by one byte: PostgreSQL
    // keeps the lowest byte of `c` reserved (it held the length in the original lookup3).
    for (index, byte) in tail.iter().enumerate() {
        let byte = u32::from(*byte);
        match index {
            0..=3 => state.a = state.a.wrapping_add(byte << (8 * index)),
            4..=7 => state.b = state.b.wrapping_add(byte << (8 * (index - 4))),
            _ => state.c = state.c.wrapping_add(byte << (8 * (index - 8 + 1))),
        }
    }
    state.finish()
}

/// PostgreSQL's `hash_bytes_uint32_extended(k, seed)`: lookup3 specialised to one 32-bit word.
pub fn hash_bytes_uint32_extended(key: u32, seed: u64) -> u64 {
    let mut state = State::new(4, seed);
    state.a = state.a.wrapping_add(key);
    state.finish()
}

/// Which PostgreSQL hash function a sharding column's type uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashFamily {
    /// int2 / int4 / int8 (and serial types): `hashint8extended`.
    Int,
    /// text / varchar / character varying: `hashtextextended` (deterministic collation).
    Text,
    /// uuid: `uuid_hash_extended`.
    Uuid,
}

impl HashFamily {
    /// Hash family for a PostgreSQL type name as written in DDL or reported by the catalog
    /// (`bigint`, `int4`, `character varying(64)`, `UUID`, ...). Case-insensitive; a length or
    /// precision modifier in parentheses is ignored. `None` for types Tessera cannot shard by.
    pub fn for_sql_type(type_name: &str) -> Option<HashFamily> {
        let lowered = type_name.trim().to_ascii_lowercase();
        // Drop a type modifier such as "(64)"; the hash does not depend on it.
        let base = match lowered.find('(') {
            Some(position) => lowered[..position].trim_end(),
            None => lowered.as_str(),
        };
        // Normalise inner whitespace so "character  varying" matches too.
        let base = base.split_whitespace().collect::<Vec<_>>().join(" ");
        match base.as_str() {
            "smallint" | "int2" | "smallserial" | "serial2" | "integer" | "int" | "int4"
            | "serial" | "serial4" | "bigint" | "int8" | "bigserial" | "serial8" => {
                Some(HashFamily::Int)
            }
            "text" | "varchar" | "character varying" => Some(HashFamily::Text),
            "uuid" => Some(HashFamily::Uuid),
            _ => None,
        }
    }

    /// Name of the PostgreSQL SQL function that computes this family's hash.
    pub fn sql_function(self) -> &'static str {
        match self {
            HashFamily::Int => "hashint8extended",
            HashFamily::Text => "hashtextextended",
            HashFamily::Uuid => "uuid_hash_extended",
        }
    }

    /// The SQL type the column is cast to before hashing.
    fn sql_cast_type(self) -> &'static str {
        match self {
            HashFamily::Int => "int8",
            HashFamily::Text => "text",
            HashFamily::Uuid => "uuid",
        }
    }
}

/// SQL expression that makes PostgreSQL compute the keyspace ID (as a signed int8) of
/// `column_sql`, e.g. `hashint8extended(tenant_id::int8, 8816678312871386365)`.
///
/// `column_sql` is inserted verbatim (it is SQL, not a value); anything other than a plain or
/// qualified identifier is parenthesised so the cast applies to the whole expression.
pub fn sql_hash_expr(family: HashFamily, column_sql: &str) -> String {
    let column_sql = column_sql.trim();
    let operand = if is_identifier_chain(column_sql) {
        column_sql.to_string()
    } else {
        format!("({column_sql})")
    };
    format!(
        "{}({}::{}, {})",
        family.sql_function(),
        operand,
        family.sql_cast_type(),
        HASH_SEED as i64
    )
}

/// True for `col`, `t.col`, `"Mixed Case"."col"` and parameters like `$1`: a cast can follow
/// them without parentheses.
fn is_identifier_chain(sql: &str) -> bool {
    if sql.is_empty() {
        return false;
    }
    let mut in_quotes = false;
    let mut part_length = 0usize;
    for character in sql.chars() {
        if in_quotes {
            if character == '"' {
                in_quotes = false;
            }
            part_length += 1;
            continue;
        }
        match character {
            '"' => {
                in_quotes = true;
                part_length += 1;
            }
            '.' => {
                if part_length == 0 {
                    return false;
                }
                part_length = 0;
            }
            c if c.is_alphanumeric() || c == '_' || c == '$' => part_length += 1,
            _ => return false,
        }
    }
    !in_quotes && part_length > 0 && !sql.starts_with(|c: char| c.is_ascii_digit())
}

fn read_u32_le(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// lookup3's three-word internal state.
struct State {
    a: u32,
    b: u32,
    c: u32,
}

impl State {
    /// Initial state for a key of `key_length` bytes, with PostgreSQL's seed folding.
    fn new(key_length: u32, seed: u64) -> State {
        let initial = 0x9e37_79b9_u32
            .wrapping_add(key_length)
            .wrapping_add(3_923_095);
        let mut state = State {
            a: initial,
            b: initial,
            c: initial,
        };
        if seed != 0 {
            state.a = state.a.wrapping_add((seed >> 32) as u32);
            state.b = state.b.wrapping_add(seed as u32);
            state.mix();
        }
        state
    }

    /// lookup3 `mix`: reversible mixing of three words after each 12-byte block.
    fn mix(&mut self) {
        let State { a, b, c } = self;
        *a = a.wrapping_sub(*c);
        *a ^= c.rotate_left(4);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a);
        *b ^= a.rotate_left(6);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b);
        *c ^= b.rotate_left(8);
        *b = b.wrapping_add(*a);
        *a = a.wrapping_sub(*c);
        *a ^= c.rotate_left(16);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a);
        *b ^= a.rotate_left(19);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b);
        *c ^= b.rotate_left(4);
        *b = b.wrapping_add(*a);
    }

    /// lookup3 `final` followed by PostgreSQL's 64-bit result `(b << 32) | c`.
    fn finish(mut self) -> u64 {
        let State { a, b, c } = &mut self;
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(14));
        *a ^= *c;
        *a = a.wrapping_sub(c.rotate_left(11));
        *b ^= *a;
        *b = b.wrapping_sub(a.rotate_left(25));
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(16));
        *a ^= *c;
        *a = a.wrapping_sub(c.rotate_left(4));
        *b ^= *a;
        *b = b.wrapping_sub(a.rotate_left(14));
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(24));
        (u64::from(*b) << 32) | u64::from(*c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every expected value below was produced by PostgreSQL 15 itself (`SELECT
    // hashint8extended(v, 8816678312871386365)` etc.), not by this module. The exhaustive
    // comparison lives in tests/tests/hash_vs_postgres.rs.

    /// Goal: integer hashing matches PostgreSQL's hashint8extended on edge values.
    #[test]
    fn int8_matches_postgres_vectors() {
        let cases: [(i64, i64); 7] = [
            (0, -4403592609991167795),
            (1, 5968994663651403477),
            (-1, -5017072347659237694),
            (42, 7363975540656877951),
            (i64::MAX, 4938542303000433043),
            (i64::MIN, -6050265599104649060),
            (2147483648, 4938542303000433043),
        ];
        for (value, expected) in cases {
            assert_eq!(hash_int8(value), expected as u64, "value {value}");
        }
    }

    /// Goal: the seed of 0 takes PostgreSQL's no-mix path and still matches.
    #[test]
    fn zero_seed_matches_postgres_vectors() {
        assert_eq!(hash_int8_with_seed(5, 0), -9138765687874534020_i64 as u64);
        assert_eq!(
            hash_bytes_extended(b"abc", 0),
            -6747756470228489321_i64 as u64
        );
    }

    /// Goal: text hashing matches hashtextextended for every tail length class and UTF-8.
    #[test]
    fn text_matches_postgres_vectors() {
        let cases: [(&str, i64); 7] = [
            ("", -5700645584453517373),
            ("a", -6705225459120232837),
            ("hello world!", -1886269529411655687),
            ("abcdefghijk", -2046435308545367432),
            ("abcdefghijkl", -7876791541613377658),
            ("abcdefghijklmnopqrstuvw", -7324642668702903167),
            ("héllo 😀", 2499821287191884753),
        ];
        for (value, expected) in cases {
            assert_eq!(
                hash_text(value.as_bytes()),
                expected as u64,
                "value {value:?}"
            );
        }
    }

    /// Goal: uuid hashing matches uuid_hash_extended over the 16 network-order bytes.
    #[test]
    fn uuid_matches_postgres_vectors() {
        assert_eq!(hash_uuid(&[0; 16]), -5281082146396728638_i64 as u64);
        let uuid = [
            0x12, 0x3e, 0x45, 0x67, 0xe8, 0x9b, 0x12, 0xd3, 0xa4, 0x56, 0x42, 0x66, 0x14, 0x17,
            0x40, 0x00,
        ];
        assert_eq!(hash_uuid(&uuid), -1252132692482143582_i64 as u64);
    }

    /// Goal: values that fit in int4 hash the same through the int8 folding as directly.
    #[test]
    fn narrow_integers_hash_like_their_int4_word() {
        for value in [0_i32, 1, -1, i32::MIN, i32::MAX, 12345, -12345] {
            assert_eq!(
                hash_int8(i64::from(value)),
                hash_bytes_uint32_extended(value as u32, HASH_SEED),
                "value {value}"
            );
        }
    }

    /// Goal: PostgreSQL type spellings map to the right family, others are rejected.
    #[test]
    fn for_sql_type_accepts_postgres_spellings() {
        let integer_names = [
            "smallint",
            "INT2",
            "integer",
            "int",
            "Int4",
            "bigint",
            "int8",
            "serial",
            "BIGSERIAL",
        ];
        let text_names = [
            "text",
            "VARCHAR",
            "varchar(32)",
            "character varying (64)",
            "Character  Varying",
        ];
        let unsupported = ["numeric", "char(3)", "bytea", "", "int[]", "timestamp"];
        let expectations = integer_names
            .iter()
            .map(|name| (*name, Some(HashFamily::Int)))
            .chain(
                text_names
                    .iter()
                    .map(|name| (*name, Some(HashFamily::Text))),
            )
            .chain([(" UUID ", Some(HashFamily::Uuid))])
            .chain(unsupported.iter().map(|name| (*name, None)));
        for (name, expected) in expectations {
            assert_eq!(HashFamily::for_sql_type(name), expected, "{name:?}");
        }
    }

    /// Goal: the SQL expression names the right function, casts, and the signed seed.
    #[test]
    fn sql_hash_expr_formats_function_cast_and_seed() {
        let cases = [
            (
                HashFamily::Int,
                "tenant_id",
                "hashint8extended(tenant_id::int8, 8816678312871386365)",
            ),
            (
                HashFamily::Text,
                "c.\"Name\"",
                "hashtextextended(c.\"Name\"::text, 8816678312871386365)",
            ),
            (
                HashFamily::Uuid,
                "$1",
                "uuid_hash_extended($1::uuid, 8816678312871386365)",
            ),
            (
                HashFamily::Int,
                "a + b",
                "hashint8extended((a + b)::int8, 8816678312871386365)",
            ),
        ];
        for (family, column, expected) in cases {
            assert_eq!(sql_hash_expr(family, column), expected);
        }
    }
}
