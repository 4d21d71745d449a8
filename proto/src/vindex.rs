//! Hash vindex: PostgreSQL-compatible seeded hashing (being written; see the helper brief).

/// Seed of every Tessera hash vindex (ARCHITECTURE section 3).
pub const HASH_SEED: u64 = 0x7A5B_2236_7996_DCFD;

/// Keyspace ID of an integer sharding value: `hashint8extended(v, seed)` as u64.
pub fn hash_int8(_value: i64) -> u64 {
    todo!("hash vindex not written yet")
}

/// Keyspace ID of a text sharding value: `hashtextextended(v, seed)` as u64.
pub fn hash_text(_value: &[u8]) -> u64 {
    todo!("hash vindex not written yet")
}

/// Keyspace ID of a uuid sharding value: `uuid_hash_extended(v, seed)` as u64.
pub fn hash_uuid(_value: &[u8; 16]) -> u64 {
    todo!("hash vindex not written yet")
}
