//! The plan cache shared by every session of a gate.
//!
//! Keyed by (keyspace, statement text, parameter type OIDs); an entry planned under an older
//! vschema version is a miss and is replaced. A hit hashes the borrowed key, compares it in
//! place under a read lock and clones an `Arc`: no parsing and no heap allocation. The cache is
//! split into independently locked parts so sessions rarely wait for each other, and each part
//! evicts its least recently used entry when full.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::RwLock;

use super::error::PlanError;
use super::plan::{StatementPlan, plan_query, plan_statement};
use super::template::{TemplatePlan, is_routable_template};
use super::vschema::VSchema;

/// Number of independently locked parts (fewer for tiny caches).
const PARTS: usize = 16;

/// Counters of a [`PlanCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
}

/// Extended-protocol statements and simple-protocol query strings are cached apart: the same
/// text plans differently (one statement vs. a list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    Statement,
    Query,
    /// A simple query's literal template (see [`super::template`]).
    Template,
}

#[derive(Debug, Clone)]
enum Cached {
    Statement(Arc<StatementPlan>),
    Query(Arc<[Arc<StatementPlan>]>),
    /// `None`: the template cannot route its queries (they are planned from their text).
    Template(Option<Arc<TemplatePlan>>),
}

#[derive(Debug)]
struct Entry {
    mode: Mode,
    keyspace: Box<str>,
    sql: Box<str>,
    param_types: Box<[u32]>,
    /// vschema version the plan was made under.
    version: u64,
    value: Cached,
    /// Clock tick of the last hit, for LRU eviction.
    last_used: AtomicU64,
}

impl Entry {
    fn matches(&self, mode: Mode, keyspace: &str, sql: &str, param_types: &[u32]) -> bool {
        self.mode == mode
            && *self.keyspace == *keyspace
            && *self.sql == *sql
            && *self.param_types == *param_types
    }
}

/// The map key is already a 64-bit hash of the full key; hashing it again would be waste.
#[derive(Default)]
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8) | u64::from(*byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

#[derive(Debug, Default)]
struct Part {
    /// Hash of the full key -> entries with that hash (almost always one).
    map: HashMap<u64, Vec<Entry>, BuildHasherDefault<PassThroughHasher>>,
    /// Invariant: equals the total number of entries in `map`.
    entries: usize,
    /// Counted per part (next to the part's lock word) rather than in one shared counter, so
    /// concurrent hits on different parts do not contend on one cache line.
    hits: AtomicU64,
    misses: AtomicU64,
}

/// A bounded, concurrent plan cache.
#[derive(Debug)]
pub struct PlanCache {
    parts: Box<[RwLock<Part>]>,
    /// Randomly keyed so clients cannot aim statements at one bucket.
    hasher: RandomState,
    /// Invariant: every part holds at most this many entries.
    capacity_per_part: usize,
    /// Advanced on every insert; a hit stamps its entry with the current value (a load, not a
    /// read-modify-write), so eviction is least-recently-used at insert granularity.
    clock: AtomicU64,
    entries: AtomicUsize,
}

impl PlanCache {
    /// A cache holding at most about `capacity` plans (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        let part_count = PARTS.min(capacity.max(1));
        let parts: Vec<RwLock<Part>> = (0..part_count)
            .map(|_| RwLock::new(Part::default()))
            .collect();
        PlanCache {
            parts: parts.into_boxed_slice(),
            hasher: RandomState::new(),
            capacity_per_part: capacity.div_ceil(part_count),
            clock: AtomicU64::new(0),
            entries: AtomicUsize::new(0),
        }
    }

    /// The plan of an extended-protocol statement (Parse), from the cache when possible.
    pub fn get_statement(
        &self,
        sql: &str,
        param_types: &[u32],
        vschema: &VSchema,
    ) -> Result<Arc<StatementPlan>, PlanError> {
        if let Some(Cached::Statement(plan)) =
            self.lookup(Mode::Statement, sql, param_types, vschema)
        {
            return Ok(plan);
        }
        let plan = plan_statement(sql, vschema)?;
        self.insert(
            Mode::Statement,
            sql,
            param_types,
            vschema,
            Cached::Statement(plan.clone()),
        );
        Ok(plan)
    }

    /// The plans of a simple-protocol query string, from the cache when possible.
    pub fn get_query(
        &self,
        sql: &str,
        vschema: &VSchema,
    ) -> Result<Arc<[Arc<StatementPlan>]>, PlanError> {
        if let Some(Cached::Query(plans)) = self.lookup(Mode::Query, sql, &[], vschema) {
            return Ok(plans);
        }
        let plans: Arc<[Arc<StatementPlan>]> = plan_query(sql, vschema)?.into();
        self.insert(Mode::Query, sql, &[], vschema, Cached::Query(plans.clone()));
        Ok(plans)
    }

    /// The plan of a simple query's literal template if queries of that template may be routed
    /// with it ([`is_routable_template`]); `None` otherwise. Both answers are cached, so a
    /// template that cannot route costs one lookup per query, not a parse.
    pub fn get_template(&self, template: &str, vschema: &VSchema) -> Option<Arc<TemplatePlan>> {
        if let Some(Cached::Template(plan)) = self.lookup(Mode::Template, template, &[], vschema) {
            return plan;
        }
        let plan = plan_statement(template, vschema)
            .ok()
            .filter(|plan| is_routable_template(plan))
            .map(|plan| Arc::new(TemplatePlan::new(plan)));
        self.insert(
            Mode::Template,
            template,
            &[],
            vschema,
            Cached::Template(plan.clone()),
        );
        plan
    }

    /// Hit, miss and size counters.
    pub fn stats(&self) -> CacheStats {
        let mut stats = CacheStats {
            entries: self.entries.load(Ordering::Relaxed),
            ..CacheStats::default()
        };
        for part in self.parts.iter() {
            let part = part.read();
            stats.hits += part.hits.load(Ordering::Relaxed);
            stats.misses += part.misses.load(Ordering::Relaxed);
        }
        stats
    }

    fn key_hash(&self, mode: Mode, keyspace: &str, sql: &str, param_types: &[u32]) -> u64 {
        self.hasher.hash_one((mode, keyspace, sql, param_types))
    }

    fn part(&self, hash: u64) -> &RwLock<Part> {
        // The low bits pick the bucket inside the part's map; use high bits for the part.
        &self.parts[((hash >> 48) as usize) % self.parts.len()]
    }

    fn lookup(
        &self,
        mode: Mode,
        sql: &str,
        param_types: &[u32],
        vschema: &VSchema,
    ) -> Option<Cached> {
        let hash = self.key_hash(mode, &vschema.keyspace, sql, param_types);
        let part = self.part(hash).read();
        let found = part.map.get(&hash).and_then(|entries| {
            entries
                .iter()
                .find(|entry| entry.matches(mode, &vschema.keyspace, sql, param_types))
        });
        match found {
            Some(entry) if entry.version == vschema.version => {
                entry
                    .last_used
                    .store(self.clock.load(Ordering::Relaxed), Ordering::Relaxed);
                part.hits.fetch_add(1, Ordering::Relaxed);
                Some(entry.value.clone())
            }
            _ => {
                part.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn insert(&self, mode: Mode, sql: &str, param_types: &[u32], vschema: &VSchema, value: Cached) {
        if self.capacity_per_part == 0 {
            return;
        }
        let hash = self.key_hash(mode, &vschema.keyspace, sql, param_types);
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut part = self.part(hash).write();
        let entries = part.map.entry(hash).or_default();
        if let Some(existing) = entries
            .iter_mut()
            .find(|entry| entry.matches(mode, &vschema.keyspace, sql, param_types))
        {
            // A stale plan (older vschema) or a concurrent miss: keep the newest.
            if vschema.version >= existing.version {
                existing.version = vschema.version;
                existing.value = value;
                existing.last_used.store(tick, Ordering::Relaxed);
            }
            return;
        }
        entries.push(Entry {
            mode,
            keyspace: vschema.keyspace.as_str().into(),
            sql: sql.into(),
            param_types: param_types.into(),
            version: vschema.version,
            value,
            last_used: AtomicU64::new(tick),
        });
        part.entries += 1;
        self.entries.fetch_add(1, Ordering::Relaxed);
        if part.entries > self.capacity_per_part {
            Self::evict_least_recent(&mut part);
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn evict_least_recent(part: &mut Part) {
        let oldest = part
            .map
            .iter()
            .flat_map(|(hash, entries)| {
                entries.iter().enumerate().map(move |(index, entry)| {
                    (entry.last_used.load(Ordering::Relaxed), *hash, index)
                })
            })
            .min();
        if let Some((_, hash, index)) = oldest
            && let Some(entries) = part.map.get_mut(&hash)
        {
            entries.swap_remove(index);
            if entries.is_empty() {
                part.map.remove(&hash);
            }
            part.entries -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::plan::Target;
    use crate::sql::vschema::{HashFamily, TableInfo};

    fn vschema() -> VSchema {
        let mut vschema = VSchema::new("app", "tenant_id");
        vschema.tables.insert(
            "t".to_string(),
            TableInfo::sharded("tenant_id", HashFamily::Int, &["tenant_id", "x"]),
        );
        vschema
    }

    impl PlanCache {
        /// A cache with one part, so eviction order is deterministic in tests.
        fn single_part(capacity: usize) -> Self {
            let mut cache = PlanCache::new(capacity);
            cache.parts = vec![RwLock::new(Part::default())].into_boxed_slice();
            cache.capacity_per_part = capacity;
            cache
        }
    }

    /// Goal: the second lookup of the same text and types is a hit returning the same plan.
    #[test]
    fn repeated_statement_is_a_hit() {
        let cache = PlanCache::new(64);
        let vschema = vschema();
        let first = cache
            .get_statement("SELECT * FROM t WHERE tenant_id = $1", &[20], &vschema)
            .expect("plans");
        let second = cache
            .get_statement("SELECT * FROM t WHERE tenant_id = $1", &[20], &vschema)
            .expect("plans");
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(
            cache.stats(),
            CacheStats {
                hits: 1,
                misses: 1,
                entries: 1
            }
        );
    }

    /// Goal: parameter types, keyspace and protocol mode are part of the key.
    #[test]
    fn key_includes_types_keyspace_and_mode() {
        let cache = PlanCache::new(64);
        let vschema = vschema();
        let mut other_keyspace = vschema.clone();
        other_keyspace.keyspace = "other".to_string();
        let sql = "SELECT * FROM t WHERE tenant_id = $1";
        cache.get_statement(sql, &[20], &vschema).expect("plans");
        cache.get_statement(sql, &[23], &vschema).expect("plans");
        cache
            .get_statement(sql, &[20], &other_keyspace)
            .expect("plans");
        cache.get_query("SELECT 1", &vschema).expect("plans");
        cache
            .get_statement("SELECT 1", &[], &vschema)
            .expect("plans");
        assert_eq!(
            cache.stats(),
            CacheStats {
                hits: 0,
                misses: 5,
                entries: 5
            }
        );
    }

    /// Goal: a plan made under an older vschema version is a miss and is replaced in place.
    #[test]
    fn newer_vschema_version_invalidates() {
        let cache = PlanCache::new(64);
        let mut vschema = vschema();
        let sql = "SELECT * FROM u";
        assert!(cache.get_query(sql, &vschema).is_err(), "u is unknown");
        vschema.apply(&crate::sql::plan::SchemaEffect::CreateTable {
            name: "u".to_string(),
            info: TableInfo::reference(&["a"]),
            if_not_exists: false,
        });
        let plans = cache.get_query(sql, &vschema).expect("u exists now");
        assert_eq!(plans[0].target, Target::AnyShard);
        let old = cache
            .get_statement("SELECT * FROM t", &[], &vschema)
            .expect("plans");
        vschema.version += 1;
        let new = cache
            .get_statement("SELECT * FROM t", &[], &vschema)
            .expect("plans");
        assert!(!Arc::ptr_eq(&old, &new), "re-planned");
        let again = cache
            .get_statement("SELECT * FROM t", &[], &vschema)
            .expect("plans");
        assert!(Arc::ptr_eq(&new, &again));
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (1, 4, 2));
    }

    /// Goal: errors are not cached (every attempt re-plans and fails again).
    #[test]
    fn errors_are_not_cached() {
        let cache = PlanCache::new(8);
        for _ in 0..2 {
            let error = cache
                .get_statement("SELEC 1", &[], &vschema())
                .expect_err("syntax");
            assert_eq!(error.sqlstate, crate::sql::error::SYNTAX_ERROR);
        }
        assert_eq!(
            cache.stats(),
            CacheStats {
                hits: 0,
                misses: 2,
                entries: 0
            }
        );
    }

    /// Goal: the cache never holds more than its capacity and evicts the least recently used.
    #[test]
    fn capacity_bounds_entries_and_evicts_least_recent() {
        let cache = PlanCache::new(16);
        let vschema = vschema();
        for value in 0..200 {
            cache
                .get_statement(&format!("SELECT {value}"), &[], &vschema)
                .expect("plans");
        }
        assert!(cache.stats().entries <= 16, "{:?}", cache.stats());

        let cache = PlanCache::single_part(2);
        cache
            .get_statement("SELECT 1", &[], &vschema)
            .expect("plans");
        cache
            .get_statement("SELECT 2", &[], &vschema)
            .expect("plans");
        cache
            .get_statement("SELECT 1", &[], &vschema)
            .expect("hit refreshes SELECT 1");
        cache
            .get_statement("SELECT 3", &[], &vschema)
            .expect("evicts SELECT 2");
        let before = cache.stats();
        cache
            .get_statement("SELECT 1", &[], &vschema)
            .expect("still cached");
        cache
            .get_statement("SELECT 2", &[], &vschema)
            .expect("was evicted");
        let after = cache.stats();
        assert_eq!(
            (after.hits - before.hits, after.misses - before.misses),
            (1, 1)
        );
        assert_eq!(after.entries, 2);
    }

    /// Goal: concurrent sessions see consistent plans and every lookup is counted once.
    #[test]
    fn concurrent_lookups_are_consistent() {
        let cache = Arc::new(PlanCache::new(128));
        let vschema = Arc::new(vschema());
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let cache = cache.clone();
                let vschema = vschema.clone();
                std::thread::spawn(move || {
                    for round in 0..500 {
                        let key = (round + thread) % 20;
                        let plan = cache
                            .get_statement(
                                &format!("SELECT * FROM t WHERE tenant_id = {key}"),
                                &[],
                                &vschema,
                            )
                            .expect("plans");
                        assert!(plan.sql.ends_with(&format!("= {key}")));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no panic");
        }
        let stats = cache.stats();
        assert_eq!(stats.hits + stats.misses, 2000);
        assert_eq!(stats.entries, 20);
    }
}
