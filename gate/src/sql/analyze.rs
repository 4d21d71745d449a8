//! Routing analysis of SELECT, INSERT, UPDATE and DELETE.
//!
//! The analysis finds every sharded table *instance* the statement reads or writes (a table can
//! appear several times), and two kinds of facts about them, taken only from places where they
//! filter rows (the top-level AND-conjunction of a WHERE, or of a JOIN ON on the side the join
//! filters):
//! - a *restriction* `t.tenant_id = 5` / `IN (...)` / `= ANY($1)`: every row of that instance
//!   that can influence the result has one of these keys;
//! - an *equality* `a.tenant_id = b.tenant_id`: joined rows live on the same shard
//!   (co-location), and a restriction of one side carries over to the side that is filtered.
//!
//! A statement whose every instance is restricted runs on the shards owning those keys; on one
//! shard anything goes, because that shard holds every row that can influence the result. A
//! statement that may run on several shards must *decompose*: running it on each shard and
//! combining the results (concatenation or [`super::merge`]) must equal running it on all data.
//! That holds when all instances form one co-location class anchored in the outermost FROM,
//! nothing sharded hides in a derived table, WITH query or set operation, no outer join
//! preserves rows of a non-sharded side, and the outermost SELECT's shape can be merged.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Assignment, AssignmentTarget, BinaryOperator, Delete, Expr, FromTable, FunctionArg,
    FunctionArgExpr, FunctionArguments, Ident, Insert, JoinConstraint, JoinOperator, ObjectName,
    ObjectNamePart, OnConflictAction, OnInsert, Query, Select, SelectItem, SetExpr, Statement,
    TableFactor, TableObject, TableWithJoins, Update, UpdateTableFromKind, Value, Visit, Visitor,
};

use super::error::{PlanError, UNDEFINED_COLUMN, UNDEFINED_TABLE};
use super::keys::{KeyUse, key_value, placeholder_index, string_content, text_key};
use super::plan::{
    Analysis, KeyValue, StatementKind, Target, is_string_literal, synchronous_commit_error,
    table_key,
};
use super::vschema::{HashFamily, TableKind, VSchema};

/// PostgreSQL identifier folding: unquoted identifiers are lower-cased.
pub(crate) fn normalize_ident(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// Where a sharded table instance sits in the statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    /// FROM of the outermost SELECT block (or the target/FROM/USING of UPDATE and DELETE).
    Outer,
    /// FROM of a subquery inside an expression (WHERE, select list, ...).
    Nested,
    /// Inside a derived table, WITH query or set operation branch.
    Derived,
}

impl Context {
    fn nested(self) -> Context {
        match self {
            Context::Derived => Context::Derived,
            _ => Context::Nested,
        }
    }
}

/// One occurrence of a sharded table.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub table: String,
    pub column: String,
    pub family: HashFamily,
    pub context: Context,
}

/// What a FROM item is, as far as routing cares.
#[derive(Debug, Clone)]
pub(crate) enum RelationKind {
    Sharded(usize),
    Reference,
    /// Derived table, WITH query, function, catalog: columns unknown to the gate.
    Opaque,
}

#[derive(Debug, Clone)]
pub(crate) struct Relation {
    /// Name the relation is referred to by (alias, or the bare table name).
    pub name: String,
    pub kind: RelationKind,
    /// Column names in order when known (tables from the vschema).
    pub columns: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    pub parent: Option<usize>,
    pub relations: Vec<Relation>,
    /// WITH query names visible from this scope.
    pub ctes: Vec<String>,
    /// True when a USING or NATURAL join merges columns (so `*` cannot be expanded by the gate).
    pub merged_columns: bool,
}

/// The keys a sharded instance is restricted to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum KeySet {
    Values(Vec<KeyValue>),
    ArrayParam(usize),
}

pub(crate) struct Analyzer<'v> {
    pub vschema: &'v VSchema,
    pub scopes: Vec<Scope>,
    pub instances: Vec<Instance>,
    /// Restrictions found in filtering positions.
    direct: Vec<(usize, KeySet)>,
    /// `(from, to)`: rows of `to` that matter have a key of some row of `from`.
    edges: Vec<(usize, usize)>,
    /// Co-location pairs.
    unions: Vec<(usize, usize)>,
    /// Reasons the statement cannot be split over shards found while walking FROM clauses.
    scatter_blockers: Vec<String>,
    tables_seen: usize,
    queries_seen: usize,
}

/// Facts about the expressions of one block (not counting nested queries).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ExpressionFacts {
    pub window: bool,
    pub aggregate: bool,
}

/// Aggregate functions PostgreSQL ships; user-defined aggregates cannot be recognised.
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "bit_xor",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "xmlagg",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "mode",
    "percentile_cont",
    "percentile_disc",
    "range_agg",
    "range_intersect_agg",
];

/// Functions whose result differs between shards or between calls; a reference-table write must
/// compute the same rows on every shard, so they are refused there.
const VOLATILE_FUNCTIONS: &[&str] = &[
    "random",
    "setseed",
    "now",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "current_timestamp",
    "current_time",
    "localtimestamp",
    "localtime",
    "current_date",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "nextval",
    "setval",
    "txid_current",
    "pg_current_xact_id",
    "pg_backend_pid",
    "inet_server_addr",
    "inet_server_port",
];

/// Last part of a function name, lower-cased.
pub(crate) fn function_name(name: &ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(ident)) => normalize_ident(ident),
        Some(ObjectNamePart::Function(function)) => function.to_string().to_lowercase(),
        None => String::new(),
    }
}

pub(crate) fn is_aggregate_name(name: &str) -> bool {
    AGGREGATES.contains(&name)
}

/// Walks a node's own expressions (not those inside nested queries) and the queries directly
/// under it: each SELECT block is analysed on its own, with its own scope.
struct TopLevel<'f> {
    depth: usize,
    on_expr: &'f mut dyn FnMut(&Expr) -> ControlFlow<()>,
    on_query: &'f mut dyn FnMut(&Query),
}

impl Visitor for TopLevel<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if self.depth == 0 {
            (self.on_query)(query);
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if self.depth == 0 {
            (self.on_expr)(expr)
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// Calls `on_expr` for every expression of `node` outside nested queries (stopping at the first
/// `Break`) and `on_query` for every query directly under `node`.
pub(crate) fn visit_top_level<V: Visit>(
    node: &V,
    on_expr: &mut dyn FnMut(&Expr) -> ControlFlow<()>,
    on_query: &mut dyn FnMut(&Query),
) {
    let mut visitor = TopLevel {
        depth: 0,
        on_expr,
        on_query,
    };
    let _ = node.visit(&mut visitor);
}

/// True for a call of a built-in aggregate (or an ordered-set aggregate) that is not a window.
pub(crate) fn is_aggregate_call(expr: &Expr) -> bool {
    match expr {
        Expr::Function(function) => {
            function.over.is_none()
                && (is_aggregate_name(&function_name(&function.name))
                    || !function.within_group.is_empty())
        }
        _ => false,
    }
}

/// Counts table references and queries anywhere in a statement.
#[derive(Default)]
struct Census {
    tables: usize,
    queries: usize,
}

impl Visitor for Census {
    type Break = ();

    fn pre_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.queries += 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        if matches!(factor, TableFactor::Table { .. }) {
            self.tables += 1;
        }
        ControlFlow::Continue(())
    }
}

/// Highest `$n` in the statement.
pub(crate) fn param_count(statement: &Statement) -> usize {
    let mut highest = 0;
    let _ = sqlparser::ast::visit_expressions(statement, |expr| {
        if let Some(index) = placeholder_index(expr) {
            highest = highest.max(index + 1);
        }
        ControlFlow::<()>::Continue(())
    });
    highest
}

/// Refuses `set_config('synchronous_commit', ...)` anywhere, and `set_config` with a setting name
/// that is not a literal (the gate could not tell which setting it changes).
pub(crate) fn check_set_config(statement: &Statement) -> Result<(), PlanError> {
    let mut result = Ok(());
    let _ = sqlparser::ast::visit_expressions(statement, |expr| {
        if let Expr::Function(function) = expr
            && function_name(&function.name) == "set_config"
        {
            let first = match &function.args {
                FunctionArguments::List(list) => list.args.first(),
                _ => None,
            };
            let literal = match first {
                Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(expr))) => Some(expr),
                _ => None,
            };
            let refuse = match literal {
                Some(expr) => {
                    is_string_literal(expr, "synchronous_commit") || !is_any_string_literal(expr)
                }
                None => true,
            };
            if refuse {
                result = Err(synchronous_commit_error().with_detail(
                    "set_config() may only name its setting with a string literal other than synchronous_commit",
                ));
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    result
}

fn is_any_string_literal(expr: &Expr) -> bool {
    match expr {
        Expr::Value(value) => string_content(&value.value).is_some(),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => is_any_string_literal(expr),
        _ => false,
    }
}

/// Name of the first volatile function called anywhere in `node`.
fn first_volatile_call<V: Visit>(node: &V) -> Option<String> {
    let mut found = None;
    let _ = sqlparser::ast::visit_expressions(node, |expr| {
        if let Expr::Function(function) = expr {
            let name = function_name(&function.name);
            if VOLATILE_FUNCTIONS.contains(&name.as_str()) {
                found = Some(name);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    found
}

/// True for tables of `pg_catalog` / `information_schema`, and for unqualified `pg_*` names the
/// vschema does not know (PostgreSQL searches pg_catalog first).
fn is_catalog(name: &ObjectName, vschema: &VSchema) -> bool {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => normalize_ident(ident),
            ObjectNamePart::Function(function) => function.to_string(),
        })
        .collect();
    let schema = match parts.len() {
        2 => Some(parts[0].as_str()),
        3 => Some(parts[1].as_str()),
        _ => None,
    };
    match schema {
        Some(schema) => schema == "pg_catalog" || schema == "information_schema",
        None => {
            parts.len() == 1 && parts[0].starts_with("pg_") && vschema.table(&parts[0]).is_none()
        }
    }
}

fn unknown_table_error(key: &str, vschema: &VSchema) -> PlanError {
    PlanError::new(
        UNDEFINED_TABLE,
        format!("relation \"{key}\" does not exist"),
    )
    .with_hint(format!(
        "the gate routes only tables of keyspace {} created through it (CREATE TABLE); \
         tables created directly on a shard are not visible",
        vschema.keyspace
    ))
}

/// Checks that a table named by a utility statement (TRUNCATE) is known or a catalog table.
pub(crate) fn require_known_table(name: &ObjectName, vschema: &VSchema) -> Result<(), PlanError> {
    let key = table_key(name);
    if vschema.table(&key).is_some() {
        Ok(())
    } else {
        Err(unknown_table_error(&key, vschema))
    }
}

/// Splits a conjunction into its terms (looking through parentheses).
pub(crate) fn split_conjunction<'e>(expr: &'e Expr, terms: &mut Vec<&'e Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_conjunction(left, terms);
            split_conjunction(right, terms);
        }
        Expr::Nested(inner) => split_conjunction(inner, terms),
        other => terms.push(other),
    }
}

fn split_disjunction<'e>(expr: &'e Expr, terms: &mut Vec<&'e Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Or,
            right,
        } => {
            split_disjunction(left, terms);
            split_disjunction(right, terms);
        }
        Expr::Nested(inner) => split_disjunction(inner, terms),
        other => terms.push(other),
    }
}

/// Entry point for SELECT/INSERT/UPDATE/DELETE.
pub(crate) fn analyze_dml(statement: &Statement, vschema: &VSchema) -> Result<Analysis, PlanError> {
    let mut analyzer = Analyzer::new(vschema);
    let analysis = match statement {
        Statement::Query(query) => analyzer.analyze_select_statement(query)?,
        Statement::Insert(insert) => analyzer.analyze_insert(insert)?,
        Statement::Update(update) => analyzer.analyze_update(update)?,
        Statement::Delete(delete) => analyzer.analyze_delete(delete)?,
        _ => return Err(PlanError::unsupported("not a data statement")),
    };
    analyzer.check_census(statement)?;
    Ok(analysis)
}

impl<'v> Analyzer<'v> {
    fn new(vschema: &'v VSchema) -> Self {
        Analyzer {
            vschema,
            scopes: Vec::new(),
            instances: Vec::new(),
            direct: Vec::new(),
            edges: Vec::new(),
            unions: Vec::new(),
            scatter_blockers: Vec::new(),
            tables_seen: 0,
            queries_seen: 0,
        }
    }

    fn new_scope(&mut self, parent: Option<usize>) -> usize {
        self.scopes.push(Scope {
            parent,
            ..Scope::default()
        });
        self.scopes.len() - 1
    }

    /// Defensive check: every table reference and query of the statement went through the
    /// analysis, so none can escape routing.
    fn check_census(&self, statement: &Statement) -> Result<(), PlanError> {
        let mut census = Census::default();
        let _ = statement.visit(&mut census);
        if census.tables != self.tables_seen || census.queries != self.queries_seen {
            return Err(PlanError::unsupported(
                "the gate cannot analyse every table reference of this statement",
            )
            .with_detail(format!(
                "found {} table references and {} queries, analysed {} and {}",
                census.tables, census.queries, self.tables_seen, self.queries_seen
            )));
        }
        Ok(())
    }

    // ----- FROM clauses and scopes -------------------------------------------------------

    fn is_cte(&self, scope: Option<usize>, name: &str) -> bool {
        let mut current = scope;
        while let Some(index) = current {
            if self.scopes[index].ctes.iter().any(|cte| cte == name) {
                return true;
            }
            current = self.scopes[index].parent;
        }
        false
    }

    /// Adds a named table to `scope`; returns the sharded instance it created, if any.
    fn add_table(
        &mut self,
        name: &ObjectName,
        alias: Option<&Ident>,
        scope: usize,
        context: Context,
    ) -> Result<Option<usize>, PlanError> {
        let key = table_key(name);
        let visible = alias
            .map(normalize_ident)
            .unwrap_or_else(|| key.rsplit('.').next().unwrap_or(&key).to_string());
        if name.0.len() == 1 && self.is_cte(Some(scope), &key) {
            self.scopes[scope].relations.push(Relation {
                name: visible,
                kind: RelationKind::Opaque,
                columns: None,
            });
            return Ok(None);
        }
        if is_catalog(name, self.vschema) {
            self.scopes[scope].relations.push(Relation {
                name: visible,
                kind: RelationKind::Opaque,
                columns: None,
            });
            return Ok(None);
        }
        let info = self
            .vschema
            .table(&key)
            .ok_or_else(|| unknown_table_error(&key, self.vschema))?;
        let (kind, instance) = match &info.kind {
            TableKind::Sharded { column, family } => {
                self.instances.push(Instance {
                    table: key.clone(),
                    column: column.clone(),
                    family: *family,
                    context,
                });
                let index = self.instances.len() - 1;
                (RelationKind::Sharded(index), Some(index))
            }
            TableKind::Reference => (RelationKind::Reference, None),
        };
        self.scopes[scope].relations.push(Relation {
            name: visible,
            kind,
            columns: Some(info.columns.clone()),
        });
        Ok(instance)
    }

    fn add_opaque(&mut self, scope: usize, alias: Option<&sqlparser::ast::TableAlias>) {
        self.scopes[scope].relations.push(Relation {
            name: alias
                .map(|alias| normalize_ident(&alias.name))
                .unwrap_or_default(),
            kind: RelationKind::Opaque,
            columns: None,
        });
    }

    /// One FROM item with its joins; returns the sharded instances it contains (this block only).
    fn walk_from_item(
        &mut self,
        item: &TableWithJoins,
        scope: usize,
        context: Context,
    ) -> Result<Vec<usize>, PlanError> {
        let mut left = self.table_factor(&item.relation, scope, context)?;
        for join in &item.joins {
            let right = self.table_factor(&join.relation, scope, context)?;
            let (constraint, filters_left, filters_right, preserves_left, preserves_right) =
                match &join.join_operator {
                    JoinOperator::Join(constraint)
                    | JoinOperator::Inner(constraint)
                    | JoinOperator::CrossJoin(constraint) => {
                        (Some(constraint), true, true, false, false)
                    }
                    JoinOperator::Left(constraint) | JoinOperator::LeftOuter(constraint) => {
                        (Some(constraint), false, true, true, false)
                    }
                    JoinOperator::Right(constraint) | JoinOperator::RightOuter(constraint) => {
                        (Some(constraint), true, false, false, true)
                    }
                    JoinOperator::FullOuter(constraint) => {
                        (Some(constraint), false, false, true, true)
                    }
                    _ => {
                        return Err(PlanError::unsupported(
                            "this kind of join is not supported by PostgreSQL",
                        ));
                    }
                };
            // Rows kept by an outer join without a sharded partner would come back once per
            // shard if the statement ran on several shards.
            if context == Context::Outer
                && ((preserves_left && left.is_empty() && !right.is_empty())
                    || (preserves_right && right.is_empty() && !left.is_empty()))
            {
                self.scatter_blockers.push(
                    "an outer join keeps rows of a table that is not sharded while joining a \
                     sharded table; run on several shards it would return those rows once per shard"
                        .to_string(),
                );
            }
            let mut filtered = Vec::new();
            if filters_left {
                filtered.extend_from_slice(&left);
            }
            if filters_right {
                filtered.extend_from_slice(&right);
            }
            match constraint {
                Some(JoinConstraint::On(expr)) => {
                    self.apply_conjuncts(expr, scope, &filtered)?;
                    self.scan(expr, scope, context)?;
                }
                Some(JoinConstraint::Using(columns)) => {
                    for column in columns {
                        let column = match column.0.last() {
                            Some(ObjectNamePart::Identifier(ident)) => normalize_ident(ident),
                            _ => continue,
                        };
                        let pick = |side: &[usize], instances: &[Instance]| {
                            let matching: Vec<usize> = side
                                .iter()
                                .copied()
                                .filter(|index| instances[*index].column == column)
                                .collect();
                            (matching.len() == 1).then(|| matching[0])
                        };
                        if let (Some(a), Some(b)) =
                            (pick(&left, &self.instances), pick(&right, &self.instances))
                        {
                            self.add_equality(a, b, &filtered);
                        }
                    }
                    self.scopes[scope].merged_columns = true;
                }
                Some(JoinConstraint::Natural) => self.scopes[scope].merged_columns = true,
                Some(JoinConstraint::None) | None => {}
            }
            left.extend(right);
        }
        Ok(left)
    }

    fn table_factor(
        &mut self,
        factor: &TableFactor,
        scope: usize,
        context: Context,
    ) -> Result<Vec<usize>, PlanError> {
        match factor {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                self.tables_seen += 1;
                if args.is_some() {
                    self.scan(factor, scope, context)?;
                    self.add_opaque(scope, alias.as_ref());
                    return Ok(Vec::new());
                }
                let instance =
                    self.add_table(name, alias.as_ref().map(|a| &a.name), scope, context)?;
                Ok(instance.into_iter().collect())
            }
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                ..
            } => {
                let parent = if *lateral {
                    Some(scope)
                } else {
                    self.scopes[scope].parent
                };
                self.analyze_query(subquery, parent, Context::Derived)?;
                self.add_opaque(scope, alias.as_ref());
                Ok(Vec::new())
            }
            TableFactor::TableFunction { alias, .. }
            | TableFactor::Function { alias, .. }
            | TableFactor::UNNEST { alias, .. } => {
                self.scan(factor, scope, context)?;
                self.add_opaque(scope, alias.as_ref());
                Ok(Vec::new())
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.walk_from_item(table_with_joins, scope, context),
            _ => Err(PlanError::unsupported(
                "this kind of FROM item is not supported by the gate",
            )),
        }
    }

    // ----- expressions ----------------------------------------------------------------------

    /// Analyses the queries directly under `node` as subqueries of `scope`.
    pub(crate) fn scan<V: Visit>(
        &mut self,
        node: &V,
        scope: usize,
        context: Context,
    ) -> Result<ExpressionFacts, PlanError> {
        let mut facts = ExpressionFacts::default();
        let mut queries = Vec::new();
        visit_top_level(
            node,
            &mut |expr| {
                if let Expr::Function(function) = expr
                    && function.over.is_some()
                {
                    facts.window = true;
                }
                facts.aggregate |= is_aggregate_call(expr);
                ControlFlow::Continue(())
            },
            &mut |query| queries.push(query.clone()),
        );
        for query in &queries {
            self.analyze_query(query, Some(scope), context.nested())?;
        }
        Ok(facts)
    }

    /// Resolves a column reference to `(scope, relation index, column)`.
    pub(crate) fn resolve(&self, expr: &Expr, scope: usize) -> Option<(usize, usize, String)> {
        match expr {
            Expr::Nested(inner) => self.resolve(inner, scope),
            Expr::Identifier(ident) => self.resolve_unqualified(&normalize_ident(ident), scope),
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let column = normalize_ident(&parts[parts.len() - 1]);
                let qualifier = normalize_ident(&parts[parts.len() - 2]);
                let mut current = Some(scope);
                while let Some(index) = current {
                    let scope_data = &self.scopes[index];
                    if let Some(position) = scope_data
                        .relations
                        .iter()
                        .position(|relation| relation.name == qualifier)
                    {
                        return Some((index, position, column));
                    }
                    current = scope_data.parent;
                }
                None
            }
            _ => None,
        }
    }

    fn resolve_unqualified(&self, column: &str, scope: usize) -> Option<(usize, usize, String)> {
        let mut current = Some(scope);
        while let Some(index) = current {
            let scope_data = &self.scopes[index];
            let candidates: Vec<usize> = scope_data
                .relations
                .iter()
                .enumerate()
                .filter(|(_, relation)| {
                    relation
                        .columns
                        .as_ref()
                        .is_some_and(|columns| columns.iter().any(|c| c == column))
                })
                .map(|(position, _)| position)
                .collect();
            match candidates.len() {
                // Another relation with unknown columns may have the same name; PostgreSQL
                // then reports an ambiguity, so assuming this one never misroutes.
                1 => return Some((index, candidates[0], column.to_string())),
                0 => {
                    let has_opaque = scope_data
                        .relations
                        .iter()
                        .any(|relation| relation.columns.is_none());
                    if has_opaque {
                        return None;
                    }
                }
                _ => return None,
            }
            current = scope_data.parent;
        }
        None
    }

    /// The sharded instance whose sharding column `expr` is.
    pub(crate) fn sharding_instance(&self, expr: &Expr, scope: usize) -> Option<usize> {
        let (scope_index, relation, column) = self.resolve(expr, scope)?;
        match self.scopes[scope_index].relations[relation].kind {
            RelationKind::Sharded(instance) if self.instances[instance].column == column => {
                Some(instance)
            }
            _ => None,
        }
    }

    fn add_equality(&mut self, a: usize, b: usize, filtered: &[usize]) {
        if a == b || self.instances[a].family != self.instances[b].family {
            return;
        }
        let a_filtered = filtered.contains(&a);
        let b_filtered = filtered.contains(&b);
        if b_filtered {
            self.edges.push((a, b));
        }
        if a_filtered {
            self.edges.push((b, a));
        }
        if a_filtered || b_filtered {
            self.unions.push((a, b));
        }
    }

    /// Records restrictions and equalities of the top-level conjunction of `expr`, for the
    /// instances in `filtered` (those whose rows the expression filters).
    fn apply_conjuncts(
        &mut self,
        expr: &Expr,
        scope: usize,
        filtered: &[usize],
    ) -> Result<(), PlanError> {
        let mut terms = Vec::new();
        split_conjunction(expr, &mut terms);
        for term in terms {
            for (instance, keys) in self.restrictions(term, scope)? {
                if filtered.contains(&instance) {
                    self.direct.push((instance, keys));
                }
            }
            if let Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } = term
                && let (Some(a), Some(b)) = (
                    self.sharding_instance(left, scope),
                    self.sharding_instance(right, scope),
                )
            {
                self.add_equality(a, b, filtered);
            }
        }
        Ok(())
    }

    /// Restrictions one term implies.
    fn restrictions(&self, term: &Expr, scope: usize) -> Result<Vec<(usize, KeySet)>, PlanError> {
        match term {
            Expr::Nested(inner) => self.restrictions(inner, scope),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => {
                for (column, value) in [(left, right), (right, left)] {
                    if let Some(instance) = self.sharding_instance(column, scope)
                        && let Some(key) =
                            key_value(value, self.instances[instance].family, KeyUse::Compare)?
                    {
                        return Ok(vec![(instance, KeySet::Values(vec![key]))]);
                    }
                }
                Ok(Vec::new())
            }
            Expr::InList {
                expr,
                list,
                negated: false,
            } => {
                let Some(instance) = self.sharding_instance(expr, scope) else {
                    return Ok(Vec::new());
                };
                let family = self.instances[instance].family;
                let mut keys = Vec::with_capacity(list.len());
                for item in list {
                    match key_value(item, family, KeyUse::Compare)? {
                        Some(key) => keys.push(key),
                        None => return Ok(Vec::new()),
                    }
                }
                Ok(vec![(instance, KeySet::Values(keys))])
            }
            Expr::AnyOp {
                left,
                compare_op: BinaryOperator::Eq,
                right,
                ..
            } => {
                let Some(instance) = self.sharding_instance(left, scope) else {
                    return Ok(Vec::new());
                };
                let family = self.instances[instance].family;
                Ok(array_keys(right, family)?
                    .map(|keys| vec![(instance, keys)])
                    .unwrap_or_default())
            }
            Expr::BinaryOp {
                op: BinaryOperator::Or,
                ..
            } => {
                // Every branch must restrict the same instance; the keys are the union.
                let mut branches = Vec::new();
                split_disjunction(term, &mut branches);
                let mut per_branch: Vec<Vec<(usize, KeySet)>> = Vec::new();
                for branch in branches {
                    let mut terms = Vec::new();
                    split_conjunction(branch, &mut terms);
                    let mut found = Vec::new();
                    for term in terms {
                        found.extend(self.restrictions(term, scope)?);
                    }
                    per_branch.push(found);
                }
                let Some((first, rest)) = per_branch.split_first() else {
                    return Ok(Vec::new());
                };
                let mut result = Vec::new();
                for (instance, keys) in first {
                    let KeySet::Values(values) = keys else {
                        continue;
                    };
                    let mut union = values.clone();
                    let mut everywhere = true;
                    for branch in rest {
                        match branch.iter().find(|(other, keys)| {
                            other == instance && matches!(keys, KeySet::Values(_))
                        }) {
                            Some((_, KeySet::Values(values))) => {
                                union.extend(values.iter().cloned())
                            }
                            _ => {
                                everywhere = false;
                                break;
                            }
                        }
                    }
                    if everywhere {
                        result.push((*instance, KeySet::Values(union)));
                    }
                }
                Ok(result)
            }
            _ => Ok(Vec::new()),
        }
    }

    // ----- queries -----------------------------------------------------------------------

    /// Analyses a query; returns the scope of its SELECT block if its body is one.
    pub(crate) fn analyze_query(
        &mut self,
        query: &Query,
        parent: Option<usize>,
        context: Context,
    ) -> Result<Option<usize>, PlanError> {
        self.queries_seen += 1;
        let mut body_parent = parent;
        if let Some(with) = &query.with {
            let cte_scope = self.new_scope(parent);
            if with.recursive {
                for cte in &with.cte_tables {
                    let name = normalize_ident(&cte.alias.name);
                    self.scopes[cte_scope].ctes.push(name);
                }
            }
            for cte in &with.cte_tables {
                if matches!(
                    cte.query.body.as_ref(),
                    SetExpr::Insert(_)
                        | SetExpr::Update(_)
                        | SetExpr::Delete(_)
                        | SetExpr::Merge(_)
                ) {
                    return Err(data_modifying_with_error());
                }
                self.analyze_query(&cte.query, Some(cte_scope), Context::Derived)?;
                if !with.recursive {
                    let name = normalize_ident(&cte.alias.name);
                    self.scopes[cte_scope].ctes.push(name);
                }
            }
            body_parent = Some(cte_scope);
        }
        let top = self.set_expr(&query.body, body_parent, context)?;
        let tail_scope = match top {
            Some(scope) => scope,
            None => self.new_scope(body_parent),
        };
        if let Some(order_by) = &query.order_by {
            self.scan(order_by, tail_scope, context)?;
        }
        if let Some(limit) = &query.limit_clause {
            self.scan(limit, tail_scope, context)?;
        }
        if let Some(fetch) = &query.fetch {
            self.scan(fetch, tail_scope, context)?;
        }
        Ok(top)
    }

    fn set_expr(
        &mut self,
        body: &SetExpr,
        parent: Option<usize>,
        context: Context,
    ) -> Result<Option<usize>, PlanError> {
        match body {
            SetExpr::Select(select) => self.select(select, parent, context).map(Some),
            SetExpr::Query(query) => {
                self.analyze_query(query, parent, Context::Derived)?;
                Ok(None)
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left, parent, Context::Derived)?;
                self.set_expr(right, parent, Context::Derived)?;
                Ok(None)
            }
            SetExpr::Values(values) => {
                let scope = self.new_scope(parent);
                self.scan(values, scope, context)?;
                Ok(None)
            }
            SetExpr::Table(table) => {
                let scope = self.new_scope(parent);
                let name = match (&table.schema_name, &table.table_name) {
                    (Some(schema), Some(table)) => ObjectName::from(vec![
                        Ident::new(schema.clone()),
                        Ident::new(table.clone()),
                    ]),
                    (None, Some(table)) => ObjectName::from(vec![Ident::new(table.clone())]),
                    _ => return Err(PlanError::unsupported("TABLE without a table name")),
                };
                self.add_table(&name, None, scope, context)?;
                Ok(Some(scope))
            }
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                Err(data_modifying_with_error())
            }
        }
    }

    fn select(
        &mut self,
        select: &Select,
        parent: Option<usize>,
        context: Context,
    ) -> Result<usize, PlanError> {
        if select.into.is_some() {
            return Err(PlanError::unsupported(
                "SELECT ... INTO is not supported through the gate",
            )
            .with_hint("use CREATE TABLE, then INSERT ... SELECT"));
        }
        if !select.lateral_views.is_empty()
            || select.prewhere.is_some()
            || !select.connect_by.is_empty()
            || select.top.is_some()
        {
            return Err(PlanError::unsupported(
                "this SELECT syntax is not PostgreSQL's",
            ));
        }
        let scope = self.new_scope(parent);
        let mut block = Vec::new();
        for item in &select.from {
            block.extend(self.walk_from_item(item, scope, context)?);
        }
        if let Some(selection) = &select.selection {
            self.apply_conjuncts(selection, scope, &block)?;
            self.scan(selection, scope, context)?;
        }
        self.scan(&select.projection, scope, context)?;
        self.scan(&select.group_by, scope, context)?;
        if let Some(having) = &select.having {
            self.scan(having, scope, context)?;
        }
        if let Some(qualify) = &select.qualify {
            self.scan(qualify, scope, context)?;
        }
        self.scan(&select.named_window, scope, context)?;
        if let Some(distinct) = &select.distinct {
            self.scan(distinct, scope, context)?;
        }
        self.scan(&select.sort_by, scope, context)?;
        Ok(scope)
    }

    // ----- restriction and co-location results -----------------------------------------------

    /// The key set each instance is restricted to, after propagation along equalities.
    fn restricted_keys(&self) -> Vec<Option<KeySet>> {
        let mut keys: Vec<Option<KeySet>> = vec![None; self.instances.len()];
        for (instance, found) in &self.direct {
            let better = match (&keys[*instance], found) {
                (None, _) => true,
                (Some(KeySet::ArrayParam(_)), KeySet::Values(_)) => true,
                (Some(KeySet::Values(current)), KeySet::Values(new)) => new.len() < current.len(),
                _ => false,
            };
            if better {
                keys[*instance] = Some(found.clone());
            }
        }
        loop {
            let mut changed = false;
            for (from, to) in &self.edges {
                if keys[*to].is_none()
                    && let Some(found) = keys[*from].clone()
                {
                    keys[*to] = Some(found);
                    changed = true;
                }
            }
            if !changed {
                return keys;
            }
        }
    }

    /// When every instance is restricted by compatible keys: the family and the union of keys.
    pub(crate) fn combined_keys(&self) -> Option<(HashFamily, KeySet)> {
        let keys = self.restricted_keys();
        let family = self.instances.first()?.family;
        if self
            .instances
            .iter()
            .any(|instance| instance.family != family)
        {
            return None;
        }
        let mut combined: Option<KeySet> = None;
        for key in keys {
            let key = key?;
            combined = Some(match (combined, key) {
                (None, key) => key,
                (Some(KeySet::ArrayParam(a)), KeySet::ArrayParam(b)) if a == b => {
                    KeySet::ArrayParam(a)
                }
                (Some(KeySet::Values(mut values)), KeySet::Values(more)) => {
                    for value in more {
                        if !values.contains(&value) {
                            values.push(value);
                        }
                    }
                    KeySet::Values(values)
                }
                _ => return None,
            });
        }
        combined.map(|keys| (family, keys))
    }

    /// Fails unless running the statement on every shard and concatenating equals running it on
    /// all the data (ignoring the outermost SELECT's shape, checked by the merge planner).
    pub(crate) fn check_decomposable(&self) -> Result<(), PlanError> {
        if let Some(reason) = self.scatter_blockers.first() {
            return Err(PlanError::unsupported(format!(
                "cannot run this statement on several shards: {reason}"
            ))
            .with_hint(self.key_hint()));
        }
        if let Some(instance) = self
            .instances
            .iter()
            .find(|instance| instance.context == Context::Derived)
        {
            return Err(PlanError::unsupported(format!(
                "cannot run this statement on several shards: sharded table {} is read inside a \
                 subquery in FROM, a WITH query or a UNION/INTERSECT/EXCEPT, whose per-shard \
                 results the gate cannot combine",
                instance.table
            ))
            .with_hint(self.key_hint()));
        }
        let mut parent: Vec<usize> = (0..self.instances.len()).collect();
        fn find(parent: &mut [usize], mut index: usize) -> usize {
            while parent[index] != index {
                parent[index] = parent[parent[index]];
                index = parent[index];
            }
            index
        }
        for (a, b) in &self.unions {
            let root_a = find(&mut parent, *a);
            let root_b = find(&mut parent, *b);
            parent[root_a] = root_b;
        }
        let roots: Vec<usize> = (0..self.instances.len())
            .map(|index| find(&mut parent, index))
            .collect();
        if let Some(other) = (1..self.instances.len()).find(|index| roots[*index] != roots[0]) {
            return Err(PlanError::unsupported(format!(
                "cannot run this statement on several shards: sharded tables {} and {} are not \
                 joined on their sharding columns, so matching rows may live on different shards",
                self.instances[0].table, self.instances[other].table
            ))
            .with_hint(format!(
                "join or correlate them with {}.{} = {}.{}, or restrict both to one {}",
                self.instances[0].table,
                self.instances[0].column,
                self.instances[other].table,
                self.instances[other].column,
                self.instances[0].column
            )));
        }
        if let Some(first) = self.instances.first()
            && !self
                .instances
                .iter()
                .any(|instance| instance.context == Context::Outer)
        {
            return Err(PlanError::unsupported(format!(
                "cannot run this statement on several shards: sharded table {} is read only in a \
                 subquery, and the outer rows would be returned once per shard",
                first.table
            ))
            .with_hint(self.key_hint()));
        }
        Ok(())
    }

    fn key_hint(&self) -> String {
        match self.instances.first() {
            Some(instance) => format!(
                "restrict the statement to one {} (WHERE {} = ...) so it runs on one shard",
                instance.column, instance.column
            ),
            None => "restrict the statement to one sharding key".to_string(),
        }
    }

    // ----- statements --------------------------------------------------------------------------

    fn analyze_select_statement(&mut self, query: &Query) -> Result<Analysis, PlanError> {
        let top = self.analyze_query(query, None, Context::Outer)?;
        if self.instances.is_empty() {
            return Ok(Analysis::new(StatementKind::Select, Target::AnyShard));
        }
        match self.combined_keys() {
            Some((family, keys)) => {
                let single = matches!(&keys, KeySet::Values(values) if values.len() <= 1);
                let mut analysis = Analysis::new(StatementKind::Select, keys_target(family, keys));
                if !single {
                    match self.multi_shard_select(query, top) {
                        Ok((merge, shard_sql)) => {
                            analysis.merge = merge;
                            analysis.shard_sql = shard_sql;
                        }
                        Err(error) => analysis.multi_shard_error = Some(error),
                    }
                }
                Ok(analysis)
            }
            None => {
                let (merge, shard_sql) = self.multi_shard_select(query, top)?;
                let mut analysis = Analysis::new(StatementKind::Select, Target::Scatter);
                analysis.merge = merge;
                analysis.shard_sql = shard_sql;
                Ok(analysis)
            }
        }
    }

    fn multi_shard_select(
        &self,
        query: &Query,
        top: Option<usize>,
    ) -> Result<(Option<super::merge::MergePlan>, Option<String>), PlanError> {
        self.check_decomposable()?;
        match (query.body.as_ref(), top) {
            (SetExpr::Select(select), Some(scope)) => self.plan_merge(query, select, scope),
            _ => {
                if query.order_by.is_some() || query.limit_clause.is_some() || query.fetch.is_some()
                {
                    Err(PlanError::unsupported(
                        "ORDER BY/LIMIT on this query form cannot be merged across shards",
                    ))
                } else {
                    Ok((None, None))
                }
            }
        }
    }

    /// Target for a write to a sharded table given the analysis of its WHERE clause.
    fn sharded_write_target(&self, kind: StatementKind) -> Result<Analysis, PlanError> {
        match self.combined_keys() {
            Some((family, keys)) => {
                let single = matches!(&keys, KeySet::Values(values) if values.len() <= 1);
                let mut analysis = Analysis::new(kind, keys_target(family, keys));
                if !single {
                    analysis.multi_shard_error = self.check_decomposable().err();
                }
                Ok(analysis)
            }
            None => {
                self.check_decomposable()?;
                Ok(Analysis::new(kind, Target::Scatter))
            }
        }
    }

    /// Checks for a write to a reference table: it must compute the same rows on every shard.
    fn reference_write(
        &self,
        table: &str,
        statement_part: &dyn Fn() -> Option<String>,
        kind: StatementKind,
    ) -> Result<Analysis, PlanError> {
        if let Some(instance) = self.instances.first() {
            return Err(PlanError::unsupported(format!(
                "a write to reference table {table} cannot read sharded table {}",
                instance.table
            ))
            .with_detail("reference tables are copied to every shard and each copy must receive the same rows"));
        }
        if let Some(function) = statement_part() {
            return Err(PlanError::unsupported(format!(
                "a write to reference table {table} cannot call {function}()"
            ))
            .with_detail("reference tables are copied to every shard and each shard would compute a different value")
            .with_hint("compute the value in the application and pass it as a literal or parameter"));
        }
        Ok(Analysis::new(kind, Target::AllShards))
    }

    fn analyze_update(&mut self, update: &Update) -> Result<Analysis, PlanError> {
        if !update.order_by.is_empty() || update.limit.is_some() || update.or.is_some() {
            return Err(PlanError::unsupported(
                "this UPDATE syntax is not PostgreSQL's",
            ));
        }
        let scope = self.new_scope(None);
        let mut block = self.walk_from_item(&update.table, scope, Context::Outer)?;
        let target = self.scopes[scope].relations.first().cloned();
        let froms = match &update.from {
            Some(UpdateTableFromKind::AfterSet(items) | UpdateTableFromKind::BeforeSet(items)) => {
                items.as_slice()
            }
            None => &[],
        };
        for item in froms {
            block.extend(self.walk_from_item(item, scope, Context::Outer)?);
        }
        let target = target.ok_or_else(|| PlanError::unsupported("UPDATE without a table"))?;
        let target_table = self.target_table_name(&update.table.relation);
        if let RelationKind::Sharded(instance) = target.kind {
            let column = self.instances[instance].column.clone();
            if assigns_column(&update.assignments, &column) {
                return Err(sharding_column_change_error(&target_table, &column));
            }
        }
        for assignment in &update.assignments {
            self.scan(&assignment.value, scope, Context::Outer)?;
        }
        if let Some(selection) = &update.selection {
            self.apply_conjuncts(selection, scope, &block)?;
            self.scan(selection, scope, Context::Outer)?;
        }
        if let Some(returning) = &update.returning {
            self.scan(returning, scope, Context::Outer)?;
        }
        match target.kind {
            RelationKind::Sharded(_) => self.sharded_write_target(StatementKind::Update),
            RelationKind::Reference => self.reference_write(
                &target_table,
                &|| {
                    first_volatile_call(&update.assignments)
                        .or_else(|| update.selection.as_ref().and_then(first_volatile_call))
                },
                StatementKind::Update,
            ),
            RelationKind::Opaque => Err(catalog_write_error(&target_table)),
        }
    }

    fn target_table_name(&self, factor: &TableFactor) -> String {
        match factor {
            TableFactor::Table { name, .. } => table_key(name),
            _ => String::from("?"),
        }
    }

    fn analyze_delete(&mut self, delete: &Delete) -> Result<Analysis, PlanError> {
        if !delete.tables.is_empty() || !delete.order_by.is_empty() || delete.limit.is_some() {
            return Err(PlanError::unsupported(
                "this DELETE syntax is not PostgreSQL's",
            ));
        }
        let items = match &delete.from {
            FromTable::WithFromKeyword(items) | FromTable::WithoutKeyword(items) => items,
        };
        let (first, rest) = items
            .split_first()
            .ok_or_else(|| PlanError::unsupported("DELETE without a table"))?;
        let scope = self.new_scope(None);
        let mut block = self.walk_from_item(first, scope, Context::Outer)?;
        let target = self.scopes[scope]
            .relations
            .first()
            .cloned()
            .ok_or_else(|| PlanError::unsupported("DELETE without a table"))?;
        for item in rest.iter().chain(delete.using.iter().flatten()) {
            block.extend(self.walk_from_item(item, scope, Context::Outer)?);
        }
        if let Some(selection) = &delete.selection {
            self.apply_conjuncts(selection, scope, &block)?;
            self.scan(selection, scope, Context::Outer)?;
        }
        if let Some(returning) = &delete.returning {
            self.scan(returning, scope, Context::Outer)?;
        }
        let target_table = self.target_table_name(&first.relation);
        match target.kind {
            RelationKind::Sharded(_) => self.sharded_write_target(StatementKind::Delete),
            RelationKind::Reference => self.reference_write(
                &target_table,
                &|| delete.selection.as_ref().and_then(first_volatile_call),
                StatementKind::Delete,
            ),
            RelationKind::Opaque => Err(catalog_write_error(&target_table)),
        }
    }

    fn analyze_insert(&mut self, insert: &Insert) -> Result<Analysis, PlanError> {
        let TableObject::TableName(name) = &insert.table else {
            return Err(PlanError::unsupported(
                "INSERT INTO a table function is not supported",
            ));
        };
        let key = table_key(name);
        if is_catalog(name, self.vschema) {
            return Err(catalog_write_error(&key));
        }
        let info = self
            .vschema
            .table(&key)
            .ok_or_else(|| unknown_table_error(&key, self.vschema))?
            .clone();
        // Scope in which ON CONFLICT and RETURNING see the target table (not as an instance: the
        // target's rows are the inserted ones, placed by the routing below).
        let target_scope = self.new_scope(None);
        self.scopes[target_scope].relations.push(Relation {
            name: insert
                .table_alias
                .as_ref()
                .map(|alias| normalize_ident(&alias.alias))
                .unwrap_or_else(|| key.rsplit('.').next().unwrap_or(&key).to_string()),
            kind: RelationKind::Opaque,
            columns: Some(info.columns.clone()),
        });
        if let Some(OnInsert::OnConflict(on_conflict)) = &insert.on {
            if let (Some((column, _)), OnConflictAction::DoUpdate(update)) =
                (info.sharding(), &on_conflict.action)
                && assigns_column(&update.assignments, column)
            {
                return Err(sharding_column_change_error(&key, column));
            }
            self.scan(on_conflict, target_scope, Context::Outer)?;
        } else if insert.on.is_some() {
            return Err(PlanError::unsupported(
                "this INSERT syntax is not PostgreSQL's",
            ));
        }
        if let Some(returning) = &insert.returning {
            self.scan(returning, target_scope, Context::Outer)?;
        }
        let Some((column, family)) = info.sharding() else {
            if let Some(source) = &insert.source {
                self.analyze_query(source, None, Context::Outer)?;
            }
            return self.reference_write(
                &key,
                &|| {
                    insert
                        .source
                        .as_ref()
                        .and_then(first_volatile_call)
                        .or_else(|| insert.on.as_ref().and_then(first_volatile_call))
                },
                StatementKind::Insert,
            );
        };
        let column = column.to_string();
        let position = if insert.columns.is_empty() {
            info.columns.iter().position(|c| *c == column)
        } else {
            insert
                .columns
                .iter()
                .position(|name| last_ident(name).as_deref() == Some(column.as_str()))
        };
        let missing_key = || {
            PlanError::new(
                UNDEFINED_COLUMN,
                format!("INSERT into sharded table {key} must set the sharding column {column}"),
            )
            .with_hint(format!(
                "list {column} in the column list and give it a value in every row"
            ))
        };
        let position = position.ok_or_else(missing_key)?;
        let source = insert.source.as_ref().ok_or_else(missing_key)?;
        match source.body.as_ref() {
            SetExpr::Values(values) => {
                if source.with.is_some()
                    || source.order_by.is_some()
                    || source.limit_clause.is_some()
                    || source.fetch.is_some()
                {
                    return Err(PlanError::unsupported(
                        "INSERT ... VALUES with WITH, ORDER BY or LIMIT is not supported",
                    ));
                }
                self.queries_seen += 1;
                let values_scope = self.new_scope(None);
                self.scan(values, values_scope, Context::Outer)?;
                if let Some(instance) = self.instances.first() {
                    return Err(PlanError::unsupported(format!(
                        "INSERT ... VALUES into sharded table {key} cannot read sharded table {}",
                        instance.table
                    ))
                    .with_hint(
                        "read the value first, or use INSERT ... SELECT restricted to one key",
                    ));
                }
                let mut rows = Vec::with_capacity(values.rows.len());
                for (row_number, row) in values.rows.iter().enumerate() {
                    let expr = row.content.get(position).ok_or_else(missing_key)?;
                    let value = key_value(expr, family, KeyUse::Assign)?.ok_or_else(|| {
                        PlanError::unsupported(format!(
                            "the value of sharding column {column} in VALUES row {} must be a constant or a parameter",
                            row_number + 1
                        ))
                        .with_detail(format!("found: {expr}"))
                    })?;
                    rows.push(value);
                }
                Ok(Analysis::new(
                    StatementKind::Insert,
                    Target::InsertRows { family, rows },
                ))
            }
            SetExpr::Select(select) => {
                let top = self.analyze_query(source, None, Context::Outer)?;
                let scope = top.ok_or_else(|| PlanError::unsupported("INSERT ... SELECT form"))?;
                self.insert_select_target(&key, &column, family, position, source, select, scope)
            }
            _ => Err(PlanError::unsupported(format!(
                "this INSERT source is not supported for sharded table {key}"
            ))
            .with_hint("use INSERT ... VALUES or a plain INSERT ... SELECT")),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_select_target(
        &self,
        table: &str,
        column: &str,
        family: HashFamily,
        position: usize,
        source: &Query,
        select: &Select,
        scope: usize,
    ) -> Result<Analysis, PlanError> {
        let unsupported = || {
            PlanError::unsupported(format!(
                "INSERT ... SELECT into sharded table {table} needs the value of {column} to be a \
                 constant, a parameter, or the sharding column of the selected sharded table"
            ))
        };
        let mut expressions = Vec::new();
        for item in &select.projection {
            match item {
                SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } => {
                    expressions.push(expr)
                }
                _ => return Err(unsupported().with_detail("the select list uses *")),
            }
        }
        let expr = expressions.get(position).ok_or_else(unsupported)?;
        if let Some(value) = key_value(expr, family, KeyUse::Assign)? {
            if self.instances.is_empty() {
                return Ok(Analysis::new(
                    StatementKind::Insert,
                    Target::InsertRows {
                        family,
                        rows: vec![value],
                    },
                ));
            }
            return match self.combined_keys() {
                Some((_, KeySet::Values(values))) if values == vec![value.clone()] => {
                    Ok(Analysis::new(
                        StatementKind::Insert,
                        Target::InsertRows {
                            family,
                            rows: vec![value],
                        },
                    ))
                }
                _ => Err(PlanError::unsupported(format!(
                    "INSERT ... SELECT into sharded table {table} reads sharded rows that may live \
                     on other shards than the inserted rows"
                ))
                .with_hint(format!(
                    "restrict every sharded table read to the same {column} value as the inserted rows"
                ))),
            };
        }
        let Some(instance) = self.sharding_instance(expr, scope) else {
            return Err(unsupported());
        };
        if self.instances[instance].family != family
            || self.instances[instance].context != Context::Outer
        {
            return Err(unsupported());
        }
        // Each shard inserts rows whose key comes from its own rows: they stay on that shard.
        let shape = self.check_select_decomposes(source, select, scope);
        match self.combined_keys() {
            Some((key_family, keys)) if key_family == family => {
                let single = matches!(&keys, KeySet::Values(values) if values.len() <= 1);
                let mut analysis = Analysis::new(StatementKind::Insert, keys_target(family, keys));
                if !single {
                    analysis.multi_shard_error = self.check_decomposable().and(shape.clone()).err();
                }
                Ok(analysis)
            }
            _ => {
                self.check_decomposable()?;
                shape?;
                Ok(Analysis::new(StatementKind::Insert, Target::Scatter))
            }
        }
    }
}

fn keys_target(family: HashFamily, keys: KeySet) -> Target {
    match keys {
        KeySet::Values(values) => Target::Keys { family, values },
        KeySet::ArrayParam(param) => Target::KeysArrayParam { family, param },
    }
}

/// Keys of the right side of `column = ANY(...)`.
fn array_keys(expr: &Expr, family: HashFamily) -> Result<Option<KeySet>, PlanError> {
    match expr {
        Expr::Nested(inner) => array_keys(inner, family),
        Expr::Cast { expr: inner, .. } => {
            // `$1::bigint[]`: the element type must be the family's (checked by the decoder at
            // routing time); other casts of literals are evaluated below.
            array_keys(inner, family)
        }
        Expr::Array(array) => {
            let mut values = Vec::with_capacity(array.elem.len());
            for element in &array.elem {
                match key_value(element, family, KeyUse::Compare)? {
                    Some(value) => values.push(value),
                    None => return Ok(None),
                }
            }
            Ok(Some(KeySet::Values(values)))
        }
        Expr::Value(value) => {
            if let Some(index) = placeholder_index(expr) {
                return Ok(Some(KeySet::ArrayParam(index)));
            }
            match string_content(&value.value) {
                Some(text) => {
                    let mut values = Vec::new();
                    for element in super::keys::parse_text_array(text)? {
                        values.push(match element {
                            Some(element) => text_key(&element, family)?,
                            None => KeyValue::Null,
                        });
                    }
                    Ok(Some(KeySet::Values(values)))
                }
                None if matches!(value.value, Value::Null) => {
                    Ok(Some(KeySet::Values(vec![KeyValue::Null])))
                }
                None => Ok(None),
            }
        }
        _ => Ok(None),
    }
}

fn last_ident(name: &ObjectName) -> Option<String> {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(ident)) => Some(normalize_ident(ident)),
        _ => None,
    }
}

/// Whether any `SET` target of `assignments` is `column`.
fn assigns_column(assignments: &[Assignment], column: &str) -> bool {
    assignments.iter().any(|assignment| {
        let names: &[ObjectName] = match &assignment.target {
            AssignmentTarget::ColumnName(name) => std::slice::from_ref(name),
            AssignmentTarget::Tuple(names) => names,
        };
        names
            .iter()
            .any(|name| last_ident(name).as_deref() == Some(column))
    })
}

fn sharding_column_change_error(table: &str, column: &str) -> PlanError {
    PlanError::unsupported(format!(
        "cannot change sharding column {column} of table {table}"
    ))
    .with_detail("the row would have to move to another shard")
    .with_hint("DELETE the row and INSERT it with the new value")
}

fn catalog_write_error(table: &str) -> PlanError {
    PlanError::unsupported(format!("cannot write to {table} through the gate"))
        .with_detail("system catalogs and WITH queries are not writable tables")
}

fn data_modifying_with_error() -> PlanError {
    PlanError::unsupported(
        "data-modifying statements inside WITH or a subquery are not supported through the gate",
    )
    .with_hint("run the INSERT/UPDATE/DELETE as its own statement")
}
