//! Runs the routing golden cases of `gate/testdata/routing.txt` (format described at the top of
//! that file) against a 2-shard and a 4-shard map.

use std::fmt::Write as _;

use super::merge::{ColumnMerge, MergePlan};
use super::plan::{SchemaEffect, StatementPlan, plan_query, plan_statement};
use super::route::{Params, Route, route};
use super::shardmap::ShardMap;
use super::vschema::{TableKind, VSchema};

const GOLDEN: &str = include_str!("../../testdata/routing.txt");

fn two_shards() -> ShardMap {
    ShardMap::from_range_names(&["-80", "80-"]).expect("valid 2-shard map")
}

fn four_shards() -> ShardMap {
    ShardMap::from_range_names(&["-40", "40-80", "80-c0", "c0-"]).expect("valid 4-shard map")
}

/// One case of the golden file.
#[derive(Default, Debug)]
struct Case {
    line: usize,
    comment: String,
    sql: String,
    params: Option<String>,
    types: Option<String>,
    plans: Option<usize>,
    kind: Option<String>,
    route_2: Option<String>,
    route_4: Option<String>,
    error: Option<String>,
    shard_sql: Option<String>,
    merge: Option<String>,
    effect: Option<String>,
}

/// A parameter value of the `params:` line: `5` or `'a b'` (text format), `NULL`, or
/// `int8:5` / `int4:5` / `int2:5` / `uuid:<text>` (binary format with that type).
struct Param {
    bytes: Option<Vec<u8>>,
    format: i16,
    type_oid: u32,
}

fn parse_params(line: &str) -> Vec<Param> {
    line.split(" | ")
        .map(str::trim)
        .map(|item| {
            let binary = |type_oid, bytes: Vec<u8>| Param {
                bytes: Some(bytes),
                format: 1,
                type_oid,
            };
            if item == "NULL" {
                Param {
                    bytes: None,
                    format: 0,
                    type_oid: 0,
                }
            } else if let Some(value) = item.strip_prefix("int8:") {
                binary(
                    20,
                    value
                        .parse::<i64>()
                        .expect("int8 param")
                        .to_be_bytes()
                        .to_vec(),
                )
            } else if let Some(value) = item.strip_prefix("int4:") {
                binary(
                    23,
                    value
                        .parse::<i32>()
                        .expect("int4 param")
                        .to_be_bytes()
                        .to_vec(),
                )
            } else if let Some(value) = item.strip_prefix("int2:") {
                binary(
                    21,
                    value
                        .parse::<i16>()
                        .expect("int2 param")
                        .to_be_bytes()
                        .to_vec(),
                )
            } else if let Some(value) = item.strip_prefix("uuid:") {
                binary(
                    2950,
                    super::keys::parse_uuid(value.as_bytes())
                        .expect("uuid param")
                        .to_vec(),
                )
            } else {
                let text = item
                    .strip_prefix('\'')
                    .and_then(|rest| rest.strip_suffix('\''))
                    .unwrap_or(item);
                Param {
                    bytes: Some(text.as_bytes().to_vec()),
                    format: 0,
                    type_oid: 0,
                }
            }
        })
        .collect()
}

fn format_route(route: &Route, shards: &ShardMap) -> String {
    match route {
        Route::Gate => "gate".to_string(),
        Route::All => "all".to_string(),
        Route::Single(index) => shards.name(*index).to_string(),
        Route::Shards(indexes) => indexes
            .iter()
            .map(|index| shards.name(*index))
            .collect::<Vec<_>>()
            .join(", "),
        Route::InsertSplit(groups) => {
            let parts: Vec<String> = groups
                .iter()
                .map(|(index, rows)| {
                    let rows: Vec<String> = rows.iter().map(ToString::to_string).collect();
                    format!("{} [{}]", shards.name(*index), rows.join(" "))
                })
                .collect();
            format!("split {}", parts.join("; "))
        }
    }
}

fn format_merge(plan: &MergePlan) -> String {
    let mut parts = Vec::new();
    if plan.aggregate {
        let columns: Vec<&str> = plan
            .columns
            .iter()
            .map(|column| match column {
                ColumnMerge::Key => "key",
                ColumnMerge::Count => "count",
                ColumnMerge::Sum => "sum",
                ColumnMerge::Min => "min",
                ColumnMerge::Max => "max",
            })
            .collect();
        parts.push(format!("aggregate [{}]", columns.join(" ")));
        if !plan.group_by.is_empty() {
            let groups: Vec<String> = plan.group_by.iter().map(|c| (c + 1).to_string()).collect();
            parts.push(format!("group by {}", groups.join(" ")));
        }
    }
    if plan.distinct {
        parts.push("distinct".to_string());
    }
    for key in &plan.order_by {
        let mut text = format!("order by {}", key.column + 1);
        if key.descending {
            text.push_str(" desc");
        }
        if key.nulls_first != key.descending {
            text.push_str(if key.nulls_first {
                " nulls first"
            } else {
                " nulls last"
            });
        }
        parts.push(text);
    }
    if let Some(limit) = plan.limit {
        parts.push(format!("limit {limit}"));
    }
    if plan.offset > 0 {
        parts.push(format!("offset {}", plan.offset));
    }
    parts.join("; ")
}

fn format_effect(effect: &SchemaEffect) -> String {
    match effect {
        SchemaEffect::CreateTable {
            name,
            info,
            if_not_exists,
        } => {
            let kind = match &info.kind {
                TableKind::Sharded { column, family } => format!("sharded by {column} {family:?}"),
                TableKind::Reference => "reference".to_string(),
            };
            format!(
                "create {name} {kind} ({}){}",
                info.columns.join(", "),
                if *if_not_exists { " if not exists" } else { "" }
            )
        }
        SchemaEffect::DropTable { names, if_exists } => format!(
            "drop {}{}",
            names.join(", "),
            if *if_exists { " if exists" } else { "" }
        ),
        SchemaEffect::AlterTable {
            name,
            new_name,
            columns,
        } => {
            let mut text = format!("alter {name}");
            if let Some(new_name) = new_name {
                let _ = write!(text, " rename to {new_name}");
            }
            if let Some(columns) = columns {
                let _ = write!(text, " columns ({})", columns.join(", "));
            }
            text
        }
    }
}

fn parse_cases(text: &str, vschema: &mut VSchema) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut current = Case::default();
    let mut comment = String::new();
    let finish = |current: &mut Case, cases: &mut Vec<Case>| {
        if !current.sql.is_empty() {
            cases.push(std::mem::take(current));
        } else {
            *current = Case::default();
        }
    };
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if line.trim().is_empty() {
            finish(&mut current, &mut cases);
            comment.clear();
            continue;
        }
        if let Some(text) = line.strip_prefix('#') {
            if !comment.is_empty() {
                comment.push(' ');
            }
            comment.push_str(text.trim());
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("routing.txt line {}: expected `key: value`", number + 1));
        let value = value.trim().to_string();
        match key.trim() {
            "schema" => {
                let plans = plan_query(&value, vschema)
                    .unwrap_or_else(|error| panic!("schema line {}: {error}", number + 1));
                for plan in plans {
                    if let Some(effect) = &plan.effect {
                        vschema.apply(effect);
                    }
                }
            }
            "sql" => {
                current.line = number + 1;
                current.comment = comment.clone();
                current.sql = value;
            }
            "params" => current.params = Some(value),
            "types" => current.types = Some(value),
            "plans" => current.plans = Some(value.parse().expect("plans: number")),
            "kind" => current.kind = Some(value),
            "route" => {
                current.route_2 = Some(value.clone());
                current.route_4 = Some(value);
            }
            "2 shards" => current.route_2 = Some(value),
            "4 shards" => current.route_4 = Some(value),
            "error" => current.error = Some(value),
            "shard sql" => current.shard_sql = Some(value),
            "merge" => current.merge = Some(value),
            "effect" => current.effect = Some(value),
            other => panic!("routing.txt line {}: unknown key {other:?}", number + 1),
        }
    }
    finish(&mut current, &mut cases);
    cases
}

/// Plans and routes one case; returns its mismatches.
fn run_case(case: &Case, vschema: &VSchema, maps: &[(&str, ShardMap)]) -> Vec<String> {
    let mut problems = Vec::new();
    let params = case.params.as_deref().map(parse_params).unwrap_or_default();
    let values: Vec<Option<&[u8]>> = params.iter().map(|p| p.bytes.as_deref()).collect();
    let formats: Vec<i16> = params.iter().map(|p| p.format).collect();
    let mut types: Vec<u32> = params.iter().map(|p| p.type_oid).collect();
    if let Some(declared) = &case.types {
        types = declared
            .split(',')
            .map(|oid| oid.trim().parse().expect("types: OIDs"))
            .collect();
    }
    let bind = Params {
        values: &values,
        formats: &formats,
        types: &types,
    };
    let planned: Result<Vec<std::sync::Arc<StatementPlan>>, _> = if case.params.is_some() {
        plan_statement(&case.sql, vschema).map(|plan| vec![plan])
    } else {
        plan_query(&case.sql, vschema)
    };
    let plans = match planned {
        Ok(plans) => plans,
        Err(error) => {
            match &case.error {
                Some(expected) => check_error(expected, &error, "planning", &mut problems),
                None => problems.push(format!("planning failed: {error}")),
            }
            return problems;
        }
    };
    if let Some(expected) = case.plans
        && plans.len() != expected
    {
        problems.push(format!("expected {expected} plans, got {}", plans.len()));
    }
    let Some(plan) = plans.last() else {
        problems.push("no plan".to_string());
        return problems;
    };
    if let Some(kind) = &case.kind {
        let actual = format!("{:?}", plan.kind);
        if &actual != kind {
            problems.push(format!("kind: expected {kind}, got {actual}"));
        }
    }
    if let Some(expected) = &case.shard_sql {
        let actual = plan.shard_sql.as_deref().unwrap_or("(none)");
        if actual != expected {
            problems.push(format!("shard sql: expected {expected}, got {actual}"));
        }
    }
    if let Some(expected) = &case.merge {
        let actual = plan
            .merge
            .as_ref()
            .map(format_merge)
            .unwrap_or("(none)".to_string());
        if &actual != expected {
            problems.push(format!("merge: expected {expected}, got {actual}"));
        }
    }
    if let Some(expected) = &case.effect {
        let actual = plan
            .effect
            .as_ref()
            .map(format_effect)
            .unwrap_or("(none)".to_string());
        if &actual != expected {
            problems.push(format!("effect: expected {expected}, got {actual}"));
        }
    }
    for (label, shards) in maps {
        let declared = if *label == "2" {
            &case.route_2
        } else {
            &case.route_4
        };
        // A bare `error:` line on a case that plans fine means routing fails on every map.
        let expected = declared
            .clone()
            .or_else(|| case.error.as_ref().map(|error| format!("error {error}")));
        match (route(plan, &bind, shards), expected) {
            (Ok(actual), Some(expected)) => {
                let actual = format_route(&actual, shards);
                if actual != expected {
                    problems.push(format!("{label} shards: expected {expected}, got {actual}"));
                }
            }
            (Ok(actual), None) => problems.push(format!(
                "{label} shards: no expectation, got {}",
                format_route(&actual, shards)
            )),
            (Err(error), Some(expected)) if expected.starts_with("error") => {
                let expected = expected.trim_start_matches("error").trim();
                check_error(expected, &error, "routing", &mut problems);
            }
            (Err(error), _) => problems.push(format!("{label} shards: routing failed: {error}")),
        }
    }
    problems
}

/// `expected` is `SQLSTATE` or `SQLSTATE: message fragment`.
fn check_error(expected: &str, error: &super::PlanError, stage: &str, problems: &mut Vec<String>) {
    let (sqlstate, fragment) = match expected.split_once(':') {
        Some((sqlstate, fragment)) => (sqlstate.trim(), Some(fragment.trim())),
        None => (expected.trim(), None),
    };
    if error.sqlstate != sqlstate {
        problems.push(format!(
            "{stage} error: expected SQLSTATE {sqlstate}, got {} ({})",
            error.sqlstate, error.message
        ));
    }
    if let Some(fragment) = fragment
        && !error.message.contains(fragment)
    {
        problems.push(format!(
            "{stage} error: message {:?} does not contain {fragment:?}",
            error.message
        ));
    }
}

/// Goal: every routing golden case (readable data file) routes as written, on 2 and 4 shards.
#[test]
fn routing_golden_cases() {
    let mut vschema = VSchema::new("app", "tenant_id");
    let cases = parse_cases(GOLDEN, &mut vschema);
    assert!(cases.len() >= 80, "only {} golden cases", cases.len());
    let maps = [("2", two_shards()), ("4", four_shards())];
    let mut report = String::new();
    for case in &cases {
        let problems = run_case(case, &vschema, &maps);
        if !problems.is_empty() {
            let _ = writeln!(
                report,
                "routing.txt:{} {}\n  sql: {}\n  - {}",
                case.line,
                case.comment,
                case.sql,
                problems.join("\n  - ")
            );
        }
    }
    assert!(report.is_empty(), "golden cases failed:\n{report}");
}

/// Goal: the harness itself catches wrong expectations (so the golden test can fail).
#[test]
fn golden_harness_reports_mismatches() {
    let mut vschema = VSchema::new("app", "tenant_id");
    let text = "schema: CREATE TABLE t (tenant_id bigint, x int)\n\n\
                # wrong shard on purpose\nsql: SELECT * FROM t WHERE tenant_id = 2\n\
                2 shards: -80\n4 shards: 80-c0\n\n\
                sql: SELECT * FROM t WHERE\nroute: all\n\n\
                sql: SELECT * FROM t WHERE tenant_id = 2\nerror: 0A000\n";
    let cases = parse_cases(text, &mut vschema);
    assert_eq!(cases.len(), 3);
    let maps = [("2", two_shards()), ("4", four_shards())];
    let wrong_shard = run_case(&cases[0], &vschema, &maps);
    assert_eq!(wrong_shard.len(), 1, "{wrong_shard:?}");
    assert!(wrong_shard[0].contains("expected -80, got 80-"));
    let unexpected_error = run_case(&cases[1], &vschema, &maps);
    assert!(
        unexpected_error[0].contains("planning failed"),
        "{unexpected_error:?}"
    );
    let missing_error = run_case(&cases[2], &vschema, &maps);
    assert_eq!(missing_error.len(), 2, "{missing_error:?}");
}
