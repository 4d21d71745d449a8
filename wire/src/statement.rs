//! Content-addressed prepared statements.
//!
//! Clients name their statements freely and those names mean nothing on a shared server
//! connection. Tessera prepares each distinct (SQL text, parameter types) once per server
//! connection under a name derived from its content, `t<16 hex digits>`, so statements are shared
//! by every client using the same text and re-prepared lazily on connections that lack them.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

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
    let mut hasher = Fnv64(0xcbf2_9ce4_8422_2325);
    sql.hash(&mut hasher);
    param_types.hash(&mut hasher);
    hasher.finish()
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
        }
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
