//! The gate's SQL layer: parse and plan statements (once per distinct text, cached), route each
//! execution to shards with a pure function, rewrite multi-shard INSERTs, and merge scatter
//! results.
//!
//! Flow for one statement:
//! 1. [`PlanCache::get_statement`] / [`PlanCache::get_query`] return [`StatementPlan`]s
//!    (parsing with sqlparser's PostgreSQL dialect only on a miss);
//! 2. [`route`] resolves a plan against the bound parameters and the [`ShardMap`];
//! 3. the executor runs `plan.sql` on a single shard and relays the bytes, or, on several
//!    shards, runs `plan.shard_sql` (if any), splits INSERTs with [`rewrite_insert`], and combines
//!    rows with [`merge`] when `plan.merge` is set.
//!
//! Simple queries whose constants vary are planned once per literal [`template`] and, where
//! [`bindable`] allows, run on the server as that template prepared.
//!
//! See `docs/routing.md` for the rules and `docs/supported-sql.md` for what is refused.

mod analyze;
pub mod bindable;
pub mod cache;
mod datum;
pub mod error;
mod keys;
pub mod merge;
mod mergeplan;
pub mod plan;
pub mod rewrite;
pub mod route;
pub mod shardmap;
pub mod template;
pub mod vschema;

#[cfg(test)]
mod golden_tests;

pub use cache::{CacheStats, PlanCache};
pub use error::PlanError;
pub use merge::{ColumnMerge, FieldDesc, MergePlan, SortKey, merge};
pub use plan::{
    KeyValue, SchemaEffect, StatementKind, StatementPlan, Target, check_unparsed, plan_query,
    plan_statement,
};
pub use rewrite::rewrite_insert;
pub use route::{Params, Route, route};
pub use shardmap::{ShardIndex, ShardMap, ShardMapError};
pub use template::{Template, TemplatePlan, template_route};
pub use vschema::{HashFamily, TableInfo, TableKind, VSchema};
