//! Proves that a plan-cache hit plus routing neither parses nor allocates, with a counting
//! global allocator (its own test binary, so no other test shares the allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tessera_gate::sql::{
    HashFamily, Params, PlanCache, Route, ShardMap, TableInfo, Template, VSchema, route,
    template_route,
};

/// Counts allocations made by the current thread (test threads do not disturb each other).
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(pointer, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn vschema() -> VSchema {
    let mut vschema = VSchema::new("app", "tenant_id");
    vschema.tables.insert(
        "customers".to_string(),
        TableInfo::sharded("tenant_id", HashFamily::Int, &["tenant_id", "id", "name"]),
    );
    vschema
}

fn shards() -> ShardMap {
    ShardMap::from_range_names(&["-80", "80-"]).expect("valid map")
}

/// Goal: repeated prepared statements (point SELECT, single-row INSERT, UPDATE) hit the cache and
/// route with zero heap allocations and without parsing.
#[test]
fn cache_hit_and_route_do_not_allocate() {
    let cache = PlanCache::new(1024);
    let vschema = vschema();
    let shards = shards();
    let statements: [(&str, &[u32]); 3] = [
        ("SELECT id, name FROM customers WHERE tenant_id = $1", &[20]),
        (
            "INSERT INTO customers (tenant_id, id, name) VALUES ($1, $2, $3)",
            &[20, 20, 25],
        ),
        (
            "UPDATE customers SET name = $3 WHERE tenant_id = $1 AND id = $2",
            &[20, 20, 25],
        ),
    ];
    let key = 42i64.to_be_bytes();
    let id = 7i64.to_be_bytes();
    let values = [Some(&key[..]), Some(&id[..]), Some(&b"bob"[..])];
    let formats = [1, 1, 0];
    for (sql, types) in statements {
        let params = Params {
            values: &values,
            formats: &formats,
            types,
        };
        // Warm up: the miss parses, plans and inserts (allocates).
        let plan = cache.get_statement(sql, types, &vschema).expect("plans");
        let expected = route(&plan, &params, &shards).expect("routes");
        assert!(matches!(expected, Route::Single(_)), "{sql}: {expected:?}");
        drop(plan);

        let before_stats = cache.stats();
        let before = allocations();
        for _ in 0..1000 {
            let plan = cache.get_statement(sql, types, &vschema).expect("hit");
            let routed = route(&plan, &params, &shards).expect("routes");
            assert_eq!(routed, expected);
        }
        let allocated = allocations() - before;
        let after_stats = cache.stats();
        println!(
            "allocations: prepared `{sql}`: {allocated} allocations and {} parses in 1000 cache hits + routes",
            after_stats.misses - before_stats.misses
        );
        assert_eq!(allocated, 0, "{sql}: {allocated} allocations in 1000 hits");
        assert_eq!(
            after_stats.hits - before_stats.hits,
            1000,
            "{sql}: every lookup was a hit"
        );
        assert_eq!(
            after_stats.misses, before_stats.misses,
            "{sql}: nothing was re-planned"
        );
    }
}

/// Goal: a repeated simple-protocol query string also hits without allocating.
#[test]
fn simple_query_hit_does_not_allocate() {
    let cache = PlanCache::new(1024);
    let vschema = vschema();
    let shards = shards();
    let sql = "SELECT * FROM customers WHERE tenant_id = 9";
    let plans = cache.get_query(sql, &vschema).expect("plans");
    let expected = route(&plans[0], &Params::NONE, &shards).expect("routes");
    drop(plans);
    let before = allocations();
    for _ in 0..1000 {
        let plans = cache.get_query(sql, &vschema).expect("hit");
        assert_eq!(
            route(&plans[0], &Params::NONE, &shards).expect("routes"),
            expected
        );
    }
    let allocated = allocations() - before;
    println!("allocations: simple `{sql}`: {allocated} allocations in 1000 cache hits + routes");
    assert_eq!(allocated, 0);
}

/// Goal: simple queries that differ only in their constants (`... = 1`, `... = 2`, ...) are
/// scanned into one literal template, hit its cached plan and route without parsing or
/// allocating once the session's template buffers have grown.
#[test]
fn literal_template_hit_does_not_allocate() {
    let cache = PlanCache::new(1024);
    let vschema = vschema();
    let shards = shards();
    let queries: Vec<String> = (1..=1000)
        .map(|key| format!("SELECT id, name FROM customers WHERE tenant_id = {key}"))
        .collect();
    let mut template = Template::default();
    assert!(template.scan(&queries[0]));
    let plan = cache
        .get_template(&template.text, &vschema)
        .expect("a keyed template routes");
    drop(plan);
    let before_stats = cache.stats();
    let before = allocations();
    let mut routed = 0;
    for sql in &queries {
        assert!(template.scan(sql));
        let plan = cache
            .get_template(&template.text, &vschema)
            .expect("template hit");
        if template_route(&plan, &template, sql, &shards).is_some() {
            routed += 1;
        }
    }
    let allocated = allocations() - before;
    let after_stats = cache.stats();
    println!(
        "allocations: simple with varying literal `{}`: {allocated} allocations and {} parses in 1000 scans + template hits + routes",
        template.text,
        after_stats.misses - before_stats.misses
    );
    assert_eq!(routed, 1000);
    assert_eq!(
        after_stats.misses, before_stats.misses,
        "nothing re-planned"
    );
    assert_eq!(allocated, 0);
}

/// Goal: the counter works (so the zero above means something).
#[test]
fn counting_allocator_counts() {
    let before = allocations();
    let boxed = std::hint::black_box(Box::new(5u64));
    drop(boxed);
    assert!(allocations() > before);
}
