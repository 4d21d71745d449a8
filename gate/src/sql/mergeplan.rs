//! Planning how the results of a SELECT that runs on several shards are combined: which output
//! columns are group keys or aggregates, how rows are ordered, and what the shards must run
//! instead (`LIMIT n + offset`, no LIMIT under cross-shard aggregation).

use std::ops::ControlFlow;

use sqlparser::ast::{
    DuplicateTreatment, Expr, FunctionArguments, GroupByExpr, LimitClause, ObjectNamePart,
    OrderByKind, OrderBySort, Query, Select, SelectItem, SelectItemQualifiedWildcardKind, Value,
    Visit, WindowType,
};

use super::analyze::{
    Analyzer, Context, function_name, is_aggregate_call, is_aggregate_name, normalize_ident,
    visit_top_level,
};
use super::error::PlanError;
use super::merge::{ColumnMerge, MergePlan, SortKey};

/// One output column of the outermost SELECT.
struct OutputColumn<'q> {
    /// The select-list expression (`None` for columns expanded from `*`).
    expr: Option<&'q Expr>,
    /// The column's output name (alias or derived name).
    name: String,
    /// `(scope, relation, column)` when the column is a plain column reference.
    identity: Option<(usize, usize, String)>,
}

/// Output name PostgreSQL gives an unaliased select-list expression.
fn derived_name(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(ident) => normalize_ident(ident),
        Expr::CompoundIdentifier(parts) => parts.last().map(normalize_ident).unwrap_or_default(),
        Expr::Function(function) => function_name(&function.name),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => derived_name(expr),
        _ => "?column?".to_string(),
    }
}

/// A non-negative integer literal.
fn literal_u64(expr: &Expr) -> Option<u64> {
    match expr {
        Expr::Value(value) => match &value.value {
            Value::Number(digits, _) => digits.parse().ok(),
            _ => None,
        },
        Expr::Nested(inner) => literal_u64(inner),
        _ => None,
    }
}

fn is_constant(expr: &Expr) -> bool {
    match expr {
        Expr::Value(_) | Expr::TypedString(_) => true,
        Expr::Cast { expr, .. } | Expr::Nested(expr) => is_constant(expr),
        Expr::UnaryOp { expr, .. } => is_constant(expr),
        _ => false,
    }
}

/// The merge of a plain aggregate call, or `None` if `expr` is not an aggregate call.
fn aggregate_merge(expr: &Expr) -> Result<Option<ColumnMerge>, PlanError> {
    match expr {
        Expr::Nested(inner) => aggregate_merge(inner),
        Expr::Function(function) if function.over.is_none() => {
            let name = function_name(&function.name);
            if !is_aggregate_name(&name) && function.within_group.is_empty() {
                return Ok(None);
            }
            if let FunctionArguments::List(list) = &function.args
                && list.duplicate_treatment == Some(DuplicateTreatment::Distinct)
            {
                return Err(PlanError::unsupported(format!(
                    "{name}(DISTINCT ...) cannot be combined across shards"
                ))
                .with_hint(
                    "restrict the query to one sharding key, or GROUP BY the sharding column",
                ));
            }
            match name.as_str() {
                "count" => Ok(Some(ColumnMerge::Count)),
                "sum" => Ok(Some(ColumnMerge::Sum)),
                "min" => Ok(Some(ColumnMerge::Min)),
                "max" => Ok(Some(ColumnMerge::Max)),
                "avg" => Err(PlanError::unsupported(
                    "avg() cannot be combined across shards yet",
                )
                .with_hint("select sum(x) and count(x) and divide in the application")),
                _ => Err(PlanError::unsupported(format!(
                    "aggregate {name}() cannot be combined across shards"
                ))
                .with_hint("use count/sum/min/max, restrict the query to one sharding key, or GROUP BY the sharding column")),
            }
        }
        _ => Ok(None),
    }
}

/// Whether `node` calls an aggregate outside nested queries.
fn contains_aggregate<V: Visit>(node: &V) -> bool {
    let mut found = false;
    visit_top_level(
        node,
        &mut |expr| {
            if is_aggregate_call(expr) {
                found = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        },
        &mut |_| {},
    );
    found
}

/// LIMIT and OFFSET as constants.
fn limit_offset(query: &Query) -> Result<(Option<u64>, u64), PlanError> {
    if query.fetch.is_some() {
        return Err(
            PlanError::unsupported("FETCH FIRST cannot be merged across shards")
                .with_hint("use LIMIT"),
        );
    }
    let constant = |expr: &Expr, what: &str| {
        literal_u64(expr).ok_or_else(|| {
            PlanError::unsupported(format!(
                "{what} must be an integer constant when the query runs on several shards"
            ))
        })
    };
    match &query.limit_clause {
        None => Ok((None, 0)),
        Some(LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) => {
            if !limit_by.is_empty() {
                return Err(PlanError::unsupported("LIMIT BY is not PostgreSQL's"));
            }
            let limit = match limit {
                None => None,
                Some(Expr::Value(value)) if matches!(value.value, Value::Null) => None,
                Some(expr) => Some(constant(expr, "LIMIT")?),
            };
            let offset = match offset {
                None => 0,
                Some(offset) => constant(&offset.value, "OFFSET")?,
            };
            Ok((limit, offset))
        }
        Some(LimitClause::OffsetCommaLimit { .. }) => Err(PlanError::unsupported(
            "LIMIT offset, count is not PostgreSQL's",
        )),
    }
}

impl Analyzer<'_> {
    /// True when a GROUP BY expression is the sharding column of an instance of the outer FROM:
    /// then no group spans two shards and per-shard aggregation is already final.
    fn groups_are_shard_local(&self, select: &Select, scope: usize) -> bool {
        match &select.group_by {
            GroupByExpr::Expressions(expressions, _) => expressions.iter().any(|expr| {
                self.sharding_instance(expr, scope)
                    .is_some_and(|instance| self.instances[instance].context == Context::Outer)
            }),
            GroupByExpr::All(_) => false,
        }
    }

    /// Window functions are fine per shard only when partitioned by the sharding column.
    fn check_windows(&self, select: &Select, query: &Query, scope: usize) -> Result<(), PlanError> {
        // PARTITION BY of each window function (`None` for a named window).
        let mut partitions: Vec<Option<Vec<Expr>>> = Vec::new();
        let mut collect = |expr: &Expr| {
            if let Expr::Function(function) = expr
                && let Some(over) = &function.over
            {
                partitions.push(match over {
                    WindowType::WindowSpec(spec) => Some(spec.partition_by.clone()),
                    WindowType::NamedWindow(_) => None,
                });
            }
            ControlFlow::Continue(())
        };
        visit_top_level(&select.projection, &mut collect, &mut |_| {});
        if let Some(order_by) = &query.order_by {
            visit_top_level(order_by, &mut collect, &mut |_| {});
        }
        for partition in partitions {
            let partitioned_by_key = partition.is_some_and(|expressions| {
                expressions
                    .iter()
                    .any(|expr| self.sharding_instance(expr, scope).is_some())
            });
            if !partitioned_by_key {
                return Err(PlanError::unsupported(
                    "window functions cannot be computed across shards unless partitioned by the sharding column",
                )
                .with_hint("add PARTITION BY the sharding column, or restrict the query to one sharding key"));
            }
        }
        Ok(())
    }

    /// Output columns of the select list; `None` when a `*` cannot be expanded by the gate.
    fn output_columns<'q>(
        &self,
        select: &'q Select,
        scope: usize,
    ) -> Option<Vec<OutputColumn<'q>>> {
        let mut outputs = Vec::new();
        let scope_data = &self.scopes[scope];
        for item in &select.projection {
            match item {
                SelectItem::UnnamedExpr(expr) => outputs.push(OutputColumn {
                    expr: Some(expr),
                    name: derived_name(expr),
                    identity: self.resolve(expr, scope),
                }),
                SelectItem::ExprWithAlias { expr, alias } => outputs.push(OutputColumn {
                    expr: Some(expr),
                    name: normalize_ident(alias),
                    identity: self.resolve(expr, scope),
                }),
                SelectItem::ExprWithAliases { .. } => return None,
                SelectItem::Wildcard(options) => {
                    if options.opt_exclude.is_some()
                        || options.opt_except.is_some()
                        || options.opt_replace.is_some()
                        || options.opt_rename.is_some()
                        || options.opt_ilike.is_some()
                        || scope_data.merged_columns
                    {
                        return None;
                    }
                    for (position, relation) in scope_data.relations.iter().enumerate() {
                        for column in relation.columns.as_ref()? {
                            outputs.push(OutputColumn {
                                expr: None,
                                name: column.clone(),
                                identity: Some((scope, position, column.clone())),
                            });
                        }
                    }
                }
                SelectItem::QualifiedWildcard(kind, _) => {
                    let SelectItemQualifiedWildcardKind::ObjectName(name) = kind else {
                        return None;
                    };
                    let qualifier = match name.0.last() {
                        Some(ObjectNamePart::Identifier(ident)) => normalize_ident(ident),
                        _ => return None,
                    };
                    let (position, relation) = scope_data
                        .relations
                        .iter()
                        .enumerate()
                        .find(|(_, relation)| relation.name == qualifier)?;
                    for column in relation.columns.as_ref()? {
                        outputs.push(OutputColumn {
                            expr: None,
                            name: column.clone(),
                            identity: Some((scope, position, column.clone())),
                        });
                    }
                }
            }
        }
        Some(outputs)
    }

    /// Which output column an ORDER BY / GROUP BY expression denotes.
    fn output_index(
        &self,
        expr: &Expr,
        outputs: &[OutputColumn<'_>],
        scope: usize,
        names_first: bool,
    ) -> Option<usize> {
        if let Some(position) = literal_u64(expr) {
            let index = usize::try_from(position).ok()?.checked_sub(1)?;
            return (index < outputs.len()).then_some(index);
        }
        let by_name = || {
            if let Expr::Identifier(ident) = expr {
                let name = normalize_ident(ident);
                let matching: Vec<usize> = outputs
                    .iter()
                    .enumerate()
                    .filter(|(_, output)| output.name == name)
                    .map(|(index, _)| index)
                    .collect();
                if matching.len() == 1 {
                    return Some(matching[0]);
                }
            }
            None
        };
        let by_identity = || {
            let identity = self.resolve(expr, scope)?;
            outputs
                .iter()
                .position(|output| output.identity.as_ref() == Some(&identity))
        };
        let text = expr.to_string();
        let by_text = || {
            outputs
                .iter()
                .position(|output| output.expr.is_some_and(|e| e.to_string() == text))
        };
        if names_first {
            by_name().or_else(by_identity).or_else(by_text)
        } else {
            by_identity().or_else(by_text).or_else(by_name)
        }
    }

    /// Merge plan and shard text for the outermost SELECT when it may run on several shards.
    pub(crate) fn plan_merge(
        &self,
        query: &Query,
        select: &Select,
        scope: usize,
    ) -> Result<(Option<MergePlan>, Option<String>), PlanError> {
        let shard_local = self.groups_are_shard_local(select, scope);
        self.check_windows(select, query, scope)?;
        let distinct = match &select.distinct {
            None | Some(sqlparser::ast::Distinct::All) => false,
            Some(sqlparser::ast::Distinct::Distinct) => true,
            Some(sqlparser::ast::Distinct::On(expressions)) => {
                let on_key = expressions
                    .iter()
                    .any(|expr| self.sharding_instance(expr, scope).is_some());
                if !on_key {
                    return Err(PlanError::unsupported(
                        "DISTINCT ON cannot be merged across shards unless it includes the sharding column",
                    ));
                }
                false
            }
        };
        let group_expressions: &[Expr] = match &select.group_by {
            GroupByExpr::Expressions(expressions, modifiers) => {
                if !modifiers.is_empty() {
                    return Err(PlanError::unsupported(
                        "GROUP BY modifiers cannot be merged across shards",
                    ));
                }
                expressions
            }
            GroupByExpr::All(_) => {
                return Err(PlanError::unsupported("GROUP BY ALL is not PostgreSQL's"));
            }
        };
        let aggregate = !shard_local
            && (!group_expressions.is_empty()
                || select.having.is_some()
                || contains_aggregate(&select.projection));
        if aggregate && select.having.is_some() {
            return Err(PlanError::unsupported(
                "HAVING cannot be evaluated across shards",
            )
            .with_hint("filter in the application, GROUP BY the sharding column, or restrict the query to one sharding key"));
        }
        let order_expressions = match &query.order_by {
            None => Vec::new(),
            Some(order_by) => match &order_by.kind {
                OrderByKind::Expressions(expressions) => expressions.iter().collect(),
                OrderByKind::All(_) => {
                    return Err(PlanError::unsupported("ORDER BY ALL is not PostgreSQL's"));
                }
            },
        };
        let (limit, offset) = limit_offset(query)?;
        let needs_merge =
            aggregate || distinct || !order_expressions.is_empty() || limit.is_some() || offset > 0;
        if !needs_merge {
            return Ok((None, None));
        }
        let outputs = if aggregate || !order_expressions.is_empty() {
            self.output_columns(select, scope).ok_or_else(|| {
                PlanError::unsupported(
                    "cannot merge results across shards: the select list uses * over a relation \
                     whose columns the gate does not know",
                )
                .with_hint("list the columns explicitly")
            })?
        } else {
            Vec::new()
        };
        let mut columns = vec![ColumnMerge::Key; outputs.len()];
        let mut group_by = Vec::new();
        if aggregate {
            for (index, output) in outputs.iter().enumerate() {
                let Some(expr) = output.expr else {
                    continue;
                };
                match aggregate_merge(expr)? {
                    Some(merge) => columns[index] = merge,
                    None if contains_aggregate(expr) => {
                        return Err(PlanError::unsupported(format!(
                            "the aggregate inside expression {expr} cannot be combined across shards"
                        ))
                        .with_hint("select the plain aggregate and compute the expression in the application"));
                    }
                    None => {}
                }
            }
            for expr in group_expressions {
                if matches!(
                    expr,
                    Expr::Rollup(_) | Expr::Cube(_) | Expr::GroupingSets(_)
                ) {
                    return Err(PlanError::unsupported(
                        "ROLLUP, CUBE and GROUPING SETS cannot be merged across shards",
                    ));
                }
                let index = self
                    .output_index(expr, &outputs, scope, false)
                    .filter(|index| columns[*index] == ColumnMerge::Key)
                    .ok_or_else(|| {
                        PlanError::unsupported(format!(
                            "GROUP BY {expr} must also appear in the select list when the query runs on several shards"
                        ))
                    })?;
                if !group_by.contains(&index) {
                    group_by.push(index);
                }
            }
            // Remaining plain columns are constants or functionally dependent on the group keys
            // (PostgreSQL rejects anything else), so the first row's value is the group's.
            for (index, output) in outputs.iter().enumerate() {
                if columns[index] == ColumnMerge::Key
                    && !group_by.contains(&index)
                    && output.expr.is_some_and(|expr| !is_constant(expr))
                    && group_expressions.is_empty()
                {
                    return Err(PlanError::unsupported(format!(
                        "column {} must be aggregated or grouped",
                        output.name
                    )));
                }
            }
        }
        let mut order_by = Vec::with_capacity(order_expressions.len());
        for order in order_expressions {
            if matches!(order.options.sort, Some(OrderBySort::Using(_))) {
                return Err(PlanError::unsupported(
                    "ORDER BY ... USING cannot be merged across shards",
                ));
            }
            let column = self
                .output_index(&order.expr, &outputs, scope, true)
                .ok_or_else(|| {
                    PlanError::unsupported(format!(
                        "ORDER BY {} must also appear in the select list when the query runs on several shards",
                        order.expr
                    ))
                    .with_hint("add the expression to the select list, or restrict the query to one sharding key")
                })?;
            let descending = matches!(order.options.sort, Some(OrderBySort::Desc));
            order_by.push(SortKey {
                column,
                descending,
                nulls_first: order.options.nulls_first.unwrap_or(descending),
            });
        }
        let shard_sql = if limit.is_some() || offset > 0 {
            let mut rewritten = query.clone();
            rewritten.limit_clause = if aggregate {
                None
            } else {
                limit.map(|limit| LimitClause::LimitOffset {
                    limit: Some(Expr::value(Value::Number(
                        limit.saturating_add(offset).to_string(),
                        false,
                    ))),
                    offset: None,
                    limit_by: Vec::new(),
                })
            };
            Some(rewritten.to_string())
        } else {
            None
        };
        Ok((
            Some(MergePlan {
                columns,
                group_by,
                order_by,
                limit,
                offset,
                distinct,
                aggregate,
            }),
            shard_sql,
        ))
    }

    /// For INSERT ... SELECT spread over shards: the source must produce, per shard, exactly the
    /// rows it produces globally (no LIMIT, no cross-shard aggregation or windows).
    pub(crate) fn check_select_decomposes(
        &self,
        query: &Query,
        select: &Select,
        scope: usize,
    ) -> Result<(), PlanError> {
        let (merge, _) = self.plan_merge(query, select, scope)?;
        match merge {
            Some(plan)
                if plan.aggregate || plan.limit.is_some() || plan.offset > 0 || plan.distinct =>
            {
                Err(PlanError::unsupported(
                    "INSERT ... SELECT over several shards cannot use LIMIT, OFFSET, DISTINCT or \
                     aggregates that span shards",
                )
                .with_hint(
                    "GROUP BY the sharding column, or restrict the SELECT to one sharding key",
                ))
            }
            _ => Ok(()),
        }
    }
}
