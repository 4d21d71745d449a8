//! Content-addressed prepared statements.
//!
//! Clients name their statements freely and those names mean nothing on a shared server
//! connection. Tessera prepares each distinct (SQL text, parameter types) once per server
//! connection under a name derived from its content, `t<16 hex digits>`, so statements are shared
//! by every client using the same text and re-prepared lazily on connections that lack them.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;

use crate::message;

#[derive(Debug)]
pub struct Statement {
    /// Hash of the SQL text and parameter types.
    pub key: u64,
    /// Server-side name: `t` + 16 hex digits of `key`.
    pub name: String,
    pub sql: Arc<str>,
    pub param_types: Vec<u32>,
    /// When this statement was parsed on the client's side (see [`parse_clock`]). A server
    /// connection that prepared the same content earlier may hold a plan older than a schema
    /// change the client already sees; the relay then re-prepares instead of failing.
    parsed_at: AtomicU64,
}

/// Orders client Parses and server prepares within the process. A counter, not a clock: only
/// "before or after" matters.
static PARSE_CLOCK: AtomicU64 = AtomicU64::new(1);

/// The next tick of the parse clock.
pub fn parse_clock() -> u64 {
    PARSE_CLOCK.fetch_add(1, Ordering::Relaxed)
}

/// Result-type changes seen by this process: (server, statement key) -> parse-clock tick at
/// which a server refused the statement as stale. A client statement parsed before that tick
/// may describe rows differently from what a re-prepared statement returns, so it must fail
/// as it would on PostgreSQL instead of running on a connection that re-prepared it.
static STALE_SINCE: parking_lot::Mutex<Option<HashMap<(String, u64), u64>>> =
    parking_lot::Mutex::new(None);
/// Tick of the latest entry above: most statements are newer, and skip the map.
static LATEST_STALE: AtomicU64 = AtomicU64::new(0);

/// Records that `server` found statement `key` stale now.
pub fn note_stale(server: &str, key: u64) {
    let now = parse_clock();
    STALE_SINCE
        .lock()
        .get_or_insert_with(HashMap::new)
        .insert((server.to_string(), key), now);
    LATEST_STALE.fetch_max(now, Ordering::Relaxed);
}

/// Was `statement` parsed before `server()` last found its content stale? One atomic load for
/// statements parsed after every stale plan seen so far.
pub fn predates_change(server: impl FnOnce() -> String, statement: &Statement) -> bool {
    let parsed_at = statement.parsed_at();
    if LATEST_STALE.load(Ordering::Relaxed) < parsed_at {
        return false;
    }
    STALE_SINCE.lock().as_ref().is_some_and(|map| {
        map.get(&(server(), statement.key))
            .is_some_and(|&since| since > parsed_at)
    })
}

/// FNV-1a: stable across processes and Rust versions (unlike `DefaultHasher`), so every gate and
/// pooler derives the same name for the same statement.
struct Fnv64(u64);

impl Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

pub fn statement_key(sql: &str, param_types: &[u32]) -> u64 {
    SqlKey::of(sql).with_types(param_types)
}

/// The SQL text's share of [`statement_key`], for callers that key one text with varying
/// parameter types and should not hash the text again each time.
#[derive(Debug, Clone, Copy)]
pub struct SqlKey(u64);

impl SqlKey {
    pub fn of(sql: &str) -> SqlKey {
        let mut hasher = Fnv64(0xcbf2_9ce4_8422_2325);
        sql.hash(&mut hasher);
        SqlKey(hasher.0)
    }

    /// `statement_key(sql, param_types)`.
    pub fn with_types(self, param_types: &[u32]) -> u64 {
        let mut hasher = Fnv64(self.0);
        param_types.hash(&mut hasher);
        hasher.finish()
    }
}

pub fn statement_name(key: u64) -> String {
    format!("t{key:016x}")
}

impl Statement {
    pub fn new(sql: Arc<str>, param_types: Vec<u32>) -> Statement {
        let key = statement_key(&sql, &param_types);
        Statement {
            key,
            name: statement_name(key),
            sql,
            param_types,
            parsed_at: AtomicU64::new(parse_clock()),
        }
    }

    pub fn parsed_at(&self) -> u64 {
        self.parsed_at.load(Ordering::Relaxed)
    }

    /// The client's description of this statement now comes from a plan prepared after the
    /// latest stale one (the relay re-prepared it and answered the client from it).
    pub fn renew(&self) {
        self.parsed_at.store(parse_clock(), Ordering::Relaxed);
    }

    /// The Parse frame that prepares this statement on a server.
    pub fn write_parse(&self, out: &mut BytesMut) {
        message::parse(out, &self.name, &self.sql, &self.param_types);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_names_depend_on_text_and_types_only() {
        let a = Statement::new("select $1".into(), vec![23]);
        let b = Statement::new("select $1".into(), vec![23]);
        let c = Statement::new("select $1".into(), vec![20]);
        assert_eq!(a.name, b.name);
        assert_ne!(a.name, c.name);
        assert_eq!(a.name.len(), 17);
    }
}
