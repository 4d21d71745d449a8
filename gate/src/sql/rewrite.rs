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
pub fn rewrite_insert(plan: &StatementPlan, rows: &[usize]) -> Result<(String, Vec<usize>), PlanError> {
    let mut statement = plan.ast.as_ref().clone();
    let Statement::Insert(insert) = &mut statement else {
        return Err(PlanError::new(INTERNAL_ERROR, "rewrite_insert on a statement that is not an INSERT"));
    };
    let Some(source) = insert.source.as_mut() else {
        return Err(PlanError::new(INTERNAL_ERROR, "rewrite_insert on an INSERT without VALUES"));
    };
    let SetExpr::Values(values) = source.body.as_mut() else {
        return Err(PlanError::new(INTERNAL_ERROR, "rewrite_insert on an INSERT without VALUES"));
    };
    if rows.is_empty() {
        return Err(PlanError::new(INTERNAL_ERROR, "rewrite_insert with no rows"));
    }
    let mut kept = Vec::with_capacity(rows.len());
    for row in rows {
        let original = values.rows.get(*row).ok_or_else(|| {
            PlanError::new(
                INTERNAL_ERROR,
                format!("rewrite_insert row {row} beyond the {} VALUES rows", values.rows.len()),
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
