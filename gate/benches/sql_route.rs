//! Parse + route micro-benchmark: plan-cache miss (parse and plan) vs hit (lookup and route).
//!
//! Run: `cargo bench -p tessera-gate --bench sql_route`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tessera_gate::sql::{
    HashFamily, Params, PlanCache, ShardMap, TableInfo, VSchema, plan_statement, route,
};

fn vschema() -> VSchema {
    let mut vschema = VSchema::new("app", "tenant_id");
    vschema.tables.insert(
        "pgbench_accounts".to_string(),
        TableInfo::sharded(
            "tenant_id",
            HashFamily::Int,
            &["tenant_id", "aid", "bid", "abalance", "filler"],
        ),
    );
    vschema
}

fn shards() -> ShardMap {
    ShardMap::from_range_names(&["-80", "80-"]).expect("valid map")
}

const POINT_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE tenant_id = $1";
const SCATTER_COUNT: &str = "SELECT count(*) FROM pgbench_accounts";

fn bench(criterion: &mut Criterion) {
    let vschema = vschema();
    let shards = shards();
    let key = 4242i64.to_be_bytes();
    let values = [Some(&key[..])];
    let params = Params {
        values: &values,
        formats: &[1],
        types: &[20],
    };

    let mut group = criterion.benchmark_group("parse_and_route");
    group.bench_function("miss: parse + plan + route (point select)", |bencher| {
        bencher.iter(|| {
            let plan = plan_statement(black_box(POINT_SELECT), &vschema).expect("plans");
            route(&plan, &params, &shards).expect("routes")
        })
    });
    group.bench_function("miss: parse + plan (scatter count)", |bencher| {
        bencher.iter(|| plan_statement(black_box(SCATTER_COUNT), &vschema).expect("plans"))
    });
    let cache = PlanCache::new(1024);
    cache
        .get_statement(POINT_SELECT, &[20], &vschema)
        .expect("warm");
    group.bench_function("hit: cache lookup + route (point select)", |bencher| {
        bencher.iter(|| {
            let plan = cache
                .get_statement(black_box(POINT_SELECT), &[20], &vschema)
                .expect("hit");
            route(&plan, &params, &shards).expect("routes")
        })
    });
    let plan = cache
        .get_statement(POINT_SELECT, &[20], &vschema)
        .expect("hit");
    group.bench_function("route only (point select, binary int8)", |bencher| {
        bencher.iter(|| route(black_box(&plan), &params, &shards).expect("routes"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
