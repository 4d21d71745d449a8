//! Statement rewrites for execution: splitting a multi-row INSERT across shards.

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, SetExpr, Statement, Value, visit_expressions_mut};

use super::error::{INTERNAL_ERROR, PlanError};
use super::keys::placeholder_index;
use super::plan::StatementPlan;

/// For an INSERT split across shards: SQL containing only `rows` (0-based VALUES row indexes, in
/// the order given), with parameters renumbered `$1..$k` in order of first appearance; returns
/// `(sql, param_map)` where `param_map[i]` = original 0-based parameter index of new `$(i+1)`.
/// Parameters used only by other rows are dropped.
pub fn rewrite_insert(
    plan: &StatementPlan,
    rows: &[usize],
) -> Result<(String, Vec<usize>), PlanError> {
    let mut statement = plan.ast.as_ref().clone();
    let Statement::Insert(insert) = &mut statement else {
        return Err(PlanError::new(
            INTERNAL_ERROR,
            "rewrite_insert on a statement that is not an INSERT",
        ));
    };
    let Some(source) = insert.source.as_mut() else {
        return Err(PlanError::new(
            INTERNAL_ERROR,
            "rewrite_insert on an INSERT without VALUES",
        ));
    };
    let SetExpr::Values(values) = source.body.as_mut() else {
        return Err(PlanError::new(
            INTERNAL_ERROR,
            "rewrite_insert on an INSERT without VALUES",
        ));
    };
    if rows.is_empty() {
        return Err(PlanError::new(
            INTERNAL_ERROR,
            "rewrite_insert with no rows",
        ));
    }
    let mut kept = Vec::with_capacity(rows.len());
    for row in rows {
        let original = values.rows.get(*row).ok_or_else(|| {
            PlanError::new(
                INTERNAL_ERROR,
                format!(
                    "rewrite_insert row {row} beyond the {} VALUES rows",
                    values.rows.len()
                ),
            )
        })?;
        kept.push(original.clone());
    }
    values.rows = kept;
    // New number of each original parameter, assigned on first appearance.
    let mut new_number: Vec<Option<usize>> = vec![None; plan.param_count];
    let mut param_map: Vec<usize> = Vec::new();
    let _ = visit_expressions_mut(&mut statement, |expr: &mut Expr| {
        if let Some(original) = placeholder_index(expr)
            && let Expr::Value(value) = expr
        {
            if original >= new_number.len() {
                new_number.resize(original + 1, None);
            }
            let number = *new_number[original].get_or_insert_with(|| {
                param_map.push(original);
                param_map.len()
            });
            value.value = Value::Placeholder(format!("${number}"));
        }
        ControlFlow::<()>::Continue(())
    });
    Ok((statement.to_string(), param_map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::plan::{KeyValue, Target, plan_statement};
    use crate::sql::vschema::{HashFamily, TableInfo, VSchema};

    fn vschema() -> VSchema {
        let mut vschema = VSchema::new("app", "tenant_id");
        vschema.tables.insert(
            "customers".to_string(),
            TableInfo::sharded("tenant_id", HashFamily::Int, &["tenant_id", "id", "name"]),
        );
        vschema
    }

    /// Goal: the rewritten INSERT holds only the chosen rows, with parameters renumbered from $1,
    /// and re-plans to exactly those rows' keys (parameters outside VALUES are kept).
    #[test]
    fn rewrite_keeps_chosen_rows_and_renumbers_parameters() {
        let plan = plan_statement(
            "INSERT INTO customers (tenant_id, id, name) VALUES ($1, $2, 'a'), (5, $3, $4), ($5, 1, $4) \
             ON CONFLICT (tenant_id, id) DO UPDATE SET name = $6 RETURNING id",
            &vschema(),
        )
        .expect("plans");
        let (sql, param_map) = rewrite_insert(&plan, &[2, 1]).expect("rewrites");
        // Rows 2 then 1: $5 -> $1, $4 -> $2, $3 -> $3, then ON CONFLICT's $6 -> $4.
        assert_eq!(param_map, vec![4, 3, 2, 5]);
        let rewritten = plan_statement(&sql, &vschema()).expect("rewritten SQL plans");
        assert_eq!(
            rewritten.target,
            Target::InsertRows {
                family: HashFamily::Int,
                rows: vec![KeyValue::Param(0), KeyValue::Int(5)],
            }
        );
        assert_eq!(rewritten.param_count, 4);
        assert!(sql.contains("ON CONFLICT"), "{sql}");
        assert!(sql.contains("RETURNING id"), "{sql}");
    }

    /// Goal: a single row without parameters rewrites to that row only, with no parameters.
    #[test]
    fn rewrite_of_literal_row_has_no_parameters() {
        let plan = plan_statement(
            "INSERT INTO customers VALUES (1, 1, 'a'), (2, 2, 'b')",
            &vschema(),
        )
        .expect("plans");
        let (sql, param_map) = rewrite_insert(&plan, &[1]).expect("rewrites");
        assert!(param_map.is_empty());
        let rewritten = plan_statement(&sql, &vschema()).expect("plans");
        assert_eq!(
            rewritten.target,
            Target::InsertRows {
                family: HashFamily::Int,
                rows: vec![KeyValue::Int(2)],
            }
        );
    }

    /// Goal: rewriting something that is not a VALUES insert, or unknown rows, is an error.
    #[test]
    fn rewrite_rejects_bad_input() {
        let select = plan_statement("SELECT 1", &vschema()).expect("plans");
        assert!(rewrite_insert(&select, &[0]).is_err());
        let insert =
            plan_statement("INSERT INTO customers VALUES (1, 1, 'a')", &vschema()).expect("plans");
        assert!(rewrite_insert(&insert, &[1]).is_err());
        assert!(rewrite_insert(&insert, &[]).is_err());
    }
}
