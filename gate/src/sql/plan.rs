//! Statement plans: what a statement is, where it must run, and what the gate must do with the
//! results. A plan is computed once per distinct statement text (see [`super::cache`]) and then
//! resolved per execution by the pure [`super::route::route`].

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, CreateTable, DataType, Expr, ObjectName,
    ObjectNamePart, ObjectType, Reset, ResetStatement, Set, Statement, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::analyze;
pub use super::error::PlanError;
use super::error::{INSUFFICIENT_PRIVILEGE, SYNTAX_ERROR};
pub use super::merge::MergePlan;
use super::vschema::{HashFamily, TableInfo, TableKind, VSchema};

/// The analysed form of one SQL statement.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementPlan {
    /// Text to send to the shard(s): the client's text of this one statement.
    pub sql: Arc<str>,
    /// What kind of statement this is (drives transaction handling and command tags).
    pub kind: StatementKind,
    /// Where the statement must run, before parameter values are known.
    pub target: Target,
    /// How to combine results when the statement runs on more than one shard and plain
    /// concatenation is not enough (aggregates, ORDER BY, LIMIT/OFFSET, DISTINCT). `Some` only
    /// for SELECTs whose target can reach several shards (`Scatter`, `Keys`, `KeysArrayParam`);
    /// the executor uses it whenever the route has more than one shard.
    pub merge: Option<MergePlan>,
    /// Text to send to the shards instead of `sql` when the statement runs on more than one shard
    /// and merging needs different input (e.g. `LIMIT n+offset` without `OFFSET`). A single-shard
    /// route always uses `sql`.
    pub shard_sql: Option<Arc<str>>,
    /// Change to the vschema to apply after the DDL succeeded on every shard.
    pub effect: Option<SchemaEffect>,
    /// Number of `$n` parameters the statement uses (highest n).
    pub param_count: usize,
    /// The parsed statement, kept for rewrites such as splitting an INSERT across shards.
    pub ast: Arc<Statement>,
    /// True for `SET LOCAL ...` and `SET TRANSACTION ...`: the setting lasts only until the end
    /// of the current transaction and must not be remembered for the session.
    pub set_local: bool,
    /// Set when the statement is correct on one shard but not across several (e.g. a window
    /// function with `tenant_id IN (1, 2)`): [`super::route::route`] returns this error if the
    /// parameter values spread the statement over more than one shard.
    pub multi_shard_error: Option<PlanError>,
}

/// What kind of statement a plan is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    /// CREATE/ALTER/DROP/COMMENT/GRANT/REVOKE/TRUNCATE and other schema changes.
    Ddl,
    Begin,
    Commit,
    Rollback,
    /// SAVEPOINT, RELEASE, ROLLBACK TO.
    Savepoint,
    /// `SET name = value`. `value` is the SQL text of the value list as sqlparser prints it
    /// (`'UTC'` keeps its quotes, `a, "B"` stays a list), so `SET {name} = {value}` replays it.
    /// `SET TIME ZONE x` is `timezone`, `SET NAMES x` is `client_encoding`, `SET ROLE x` is
    /// `role`, `SET SESSION AUTHORIZATION x` is `session_authorization`, and
    /// `SET TRANSACTION modes` is name `transaction` with the modes as value (replay as
    /// `SET TRANSACTION {value}`; `set_local` is true).
    Set {
        name: String,
        value: String,
    },
    /// `RESET name`; `None` = `RESET ALL`.
    Reset {
        name: Option<String>,
    },
    /// `SHOW name`: routed to one shard (target `AnyShard`), which answers with the session's
    /// settings replayed by the executor.
    Show,
    /// Anything else (EXPLAIN, VACUUM, ANALYZE, LOCK, DISCARD, DEALLOCATE, empty statement).
    Other,
}

/// A sharding value as written in the statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValue {
    Int(i64),
    Text(String),
    Uuid([u8; 16]),
    /// SQL NULL: equal to nothing (a NULL key in an INSERT is an error at routing time).
    Null,
    /// The statement parameter with this 0-based index (`$1` = 0).
    Param(usize),
}

/// Where a statement must run, independent of parameter values and of the shard map.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Reads no sharded data (SELECT 1, SHOW, catalog and reference-table reads): any one shard.
    AnyShard,
    /// `=` / `IN` on the sharding column: the shards owning these values.
    Keys {
        family: HashFamily,
        values: Vec<KeyValue>,
    },
    /// `sharding_column = ANY($n)`: the shards owning the elements of the array parameter.
    KeysArrayParam { family: HashFamily, param: usize },
    /// INSERT: one sharding value per VALUES row, in row order.
    InsertRows {
        family: HashFamily,
        rows: Vec<KeyValue>,
    },
    /// Every shard; results concatenated or merged with `merge`; writes made atomic.
    Scatter,
    /// DDL and reference-table writes: every shard, atomically.
    AllShards,
    /// Handled by the gate itself (transaction control, SET/RESET, DISCARD, DEALLOCATE).
    Gate,
}

/// A change of the vschema caused by a DDL statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaEffect {
    CreateTable {
        name: String,
        info: TableInfo,
        if_not_exists: bool,
    },
    DropTable {
        names: Vec<String>,
        if_exists: bool,
    },
    /// ALTER TABLE ... ADD/DROP/RENAME COLUMN, RENAME TO. `columns` is the new full column list
    /// when it changed.
    AlterTable {
        name: String,
        new_name: Option<String>,
        columns: Option<Vec<String>>,
    },
}

/// Message shared by every attempt to change `synchronous_commit`.
const SYNCHRONOUS_COMMIT_MESSAGE: &str =
    "Tessera manages synchronous_commit for durability; it cannot be changed";

/// The error for any attempt to change `synchronous_commit`.
pub(crate) fn synchronous_commit_error() -> PlanError {
    PlanError::new(INSUFFICIENT_PRIVILEGE, SYNCHRONOUS_COMMIT_MESSAGE).with_hint(
        "commits are acknowledged only once the shard's durability policy is met; \
         choose a different durability policy with `tessera policy set` instead",
    )
}

/// Parse + analyse a whole simple-query string: one plan per statement, in order.
///
/// Statements are planned in sequence against a working copy of the vschema to which earlier
/// DDL effects of the same string are applied, so `CREATE TABLE t ...; INSERT INTO t ...` in one
/// query string plans the INSERT against the new table.
pub fn plan_query(sql: &str, vschema: &VSchema) -> Result<Vec<Arc<StatementPlan>>, PlanError> {
    let segments = split_statements(sql)?;
    let mut plans = Vec::with_capacity(segments.len());
    let mut working: Cow<'_, VSchema> = Cow::Borrowed(vschema);
    for segment in segments {
        for plan in plan_segment(segment, &working)? {
            if let Some(effect) = &plan.effect {
                working.to_mut().apply(effect);
            }
            plans.push(Arc::new(plan));
        }
    }
    Ok(plans)
}

/// Parse + analyse an extended-protocol statement: exactly one statement.
///
/// Several statements give 42601 "cannot insert multiple commands into a prepared statement";
/// an empty string gives a plan of kind `Other` with target `AnyShard` and empty `sql` (the
/// executor answers it with EmptyQueryResponse).
pub fn plan_statement(sql: &str, vschema: &VSchema) -> Result<Arc<StatementPlan>, PlanError> {
    let segments = split_statements(sql)?;
    match segments.as_slice() {
        [] => Ok(Arc::new(empty_plan())),
        [segment] => {
            let mut plans = plan_segment(segment, vschema)?;
            match plans.len() {
                0 => Ok(Arc::new(empty_plan())),
                1 => Ok(Arc::new(plans.remove(0))),
                _ => Err(multiple_commands_error()),
            }
        }
        _ => Err(multiple_commands_error()),
    }
}

/// Checks a statement that sqlparser could not parse before the gate forwards it verbatim (for
/// example inside a transaction pinned to one shard): rejects any text that mentions
/// `synchronous_commit` (`ALTER SYSTEM`, `ALTER DATABASE ... SET`, `SET` variants sqlparser does
/// not know), because the gate cannot prove such a statement leaves the setting alone.
pub fn check_unparsed(sql: &str) -> Result<(), PlanError> {
    if sql.to_ascii_lowercase().contains("synchronous_commit") {
        return Err(synchronous_commit_error());
    }
    Ok(())
}

fn multiple_commands_error() -> PlanError {
    PlanError::new(
        SYNTAX_ERROR,
        "cannot insert multiple commands into a prepared statement",
    )
}

/// The statement kept as `ast` of an empty query: a query that returns nothing, so code that
/// inspects the AST sees a harmless SELECT.
static EMPTY_STATEMENT: LazyLock<Arc<Statement>> = LazyLock::new(|| {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, "SELECT 1 WHERE false")
        .expect("a constant statement parses");
    Arc::new(statements.remove(0))
});

fn empty_plan() -> StatementPlan {
    StatementPlan {
        sql: Arc::from(""),
        kind: StatementKind::Other,
        target: Target::AnyShard,
        merge: None,
        shard_sql: None,
        effect: None,
        param_count: 0,
        ast: EMPTY_STATEMENT.clone(),
        set_local: false,
        multi_shard_error: None,
    }
}

/// Splits a query string into the text of each statement at top-level semicolons, using the
/// PostgreSQL tokenizer so semicolons inside strings, dollar quotes, comments and quoted
/// identifiers do not split. Segments holding only whitespace and comments are dropped.
fn split_statements(sql: &str) -> Result<Vec<&str>, PlanError> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .with_unescape(false)
        .tokenize_with_location()
        .map_err(|error| PlanError::syntax(error.to_string()))?;
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(offset, _)| offset + 1))
        .collect();
    // Tokenizer locations are 1-based (line, character column); convert to a byte offset.
    let byte_offset = |line: u64, column: u64| -> usize {
        let line_start = usize::try_from(line.saturating_sub(1))
            .ok()
            .and_then(|index| line_starts.get(index).copied())
            .unwrap_or(sql.len());
        let rest = &sql[line_start..];
        let column = usize::try_from(column.saturating_sub(1)).unwrap_or(usize::MAX);
        rest.char_indices()
            .nth(column)
            .map(|(offset, _)| line_start + offset)
            .unwrap_or(sql.len())
    };
    let mut segments = Vec::new();
    let mut start = 0;
    let mut has_content = false;
    for token in &tokens {
        match &token.token {
            Token::SemiColon => {
                let end = byte_offset(token.span.start.line, token.span.start.column);
                if has_content {
                    segments.push(sql[start..end].trim());
                }
                start = (end + 1).min(sql.len());
                has_content = false;
            }
            Token::Whitespace(_) | Token::EOF => {}
            _ => has_content = true,
        }
    }
    if has_content {
        segments.push(sql[start..].trim());
    }
    Ok(segments)
}

/// Parses and plans the text of one statement (the parser may still find several).
fn plan_segment(segment: &str, vschema: &VSchema) -> Result<Vec<StatementPlan>, PlanError> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, segment)
        .map_err(|error| PlanError::syntax(parser_message(&error)))?;
    let single = statements.len() == 1;
    statements
        .into_iter()
        .map(|statement| {
            let sql: Arc<str> = if single {
                Arc::from(segment)
            } else {
                Arc::from(statement.to_string())
            };
            plan_parsed(sql, statement, vschema)
        })
        .collect()
}

/// sqlparser prefixes its messages with "sql parser error: "; clients expect PostgreSQL's style.
fn parser_message(error: &sqlparser::parser::ParserError) -> String {
    let text = error.to_string();
    match text.strip_prefix("sql parser error: ") {
        Some(rest) => format!("syntax error: {rest}"),
        None => text,
    }
}

/// Routing facts about one statement, before they are packed into a [`StatementPlan`].
pub(crate) struct Analysis {
    pub kind: StatementKind,
    pub target: Target,
    pub merge: Option<MergePlan>,
    pub shard_sql: Option<String>,
    pub effect: Option<SchemaEffect>,
    pub set_local: bool,
    pub multi_shard_error: Option<PlanError>,
}

impl Analysis {
    pub(crate) fn new(kind: StatementKind, target: Target) -> Self {
        Analysis {
            kind,
            target,
            merge: None,
            shard_sql: None,
            effect: None,
            set_local: false,
            multi_shard_error: None,
        }
    }
}

fn plan_parsed(
    sql: Arc<str>,
    statement: Statement,
    vschema: &VSchema,
) -> Result<StatementPlan, PlanError> {
    analyze::check_set_config(&statement)?;
    let analysis = analyze_statement(&statement, vschema)?;
    Ok(StatementPlan {
        sql,
        kind: analysis.kind,
        target: analysis.target,
        merge: analysis.merge,
        shard_sql: analysis.shard_sql.map(Arc::from),
        effect: analysis.effect,
        param_count: analyze::param_count(&statement),
        ast: Arc::new(statement),
        set_local: analysis.set_local,
        multi_shard_error: analysis.multi_shard_error,
    })
}

/// Classifies one parsed statement.
pub(crate) fn analyze_statement(
    statement: &Statement,
    vschema: &VSchema,
) -> Result<Analysis, PlanError> {
    use StatementKind as Kind;
    let gate = |kind| Ok(Analysis::new(kind, Target::Gate));
    let all_shards = |kind| Ok(Analysis::new(kind, Target::AllShards));
    match statement {
        Statement::Query(_)
        | Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_) => analyze::analyze_dml(statement, vschema),

        Statement::StartTransaction {
            statements,
            exception,
            ..
        } => {
            if !statements.is_empty() || exception.is_some() {
                return Err(PlanError::unsupported(
                    "BEGIN ... END blocks are not supported by the gate",
                ));
            }
            gate(Kind::Begin)
        }
        Statement::Commit { .. } => gate(Kind::Commit),
        Statement::Rollback { savepoint, .. } => gate(if savepoint.is_some() {
            Kind::Savepoint
        } else {
            Kind::Rollback
        }),
        Statement::Savepoint { .. } | Statement::ReleaseSavepoint { .. } => gate(Kind::Savepoint),
        Statement::Set(set) => analyze_set(set),
        Statement::Reset(ResetStatement { reset }) => match reset {
            Reset::ALL => gate(Kind::Reset { name: None }),
            Reset::SessionAuthorization => gate(Kind::Reset {
                name: Some("session_authorization".to_string()),
            }),
            Reset::ConfigurationParameter(name) => gate(Kind::Reset {
                name: Some(setting_name(name)),
            }),
        },
        Statement::ShowVariable { .. } => Ok(Analysis::new(Kind::Show, Target::AnyShard)),
        Statement::Discard { .. } | Statement::Deallocate { .. } => gate(Kind::Other),

        Statement::CreateTable(create) => analyze_create_table(create, vschema),
        Statement::AlterTable(alter) => {
            reject_synchronous_commit_text(statement)?;
            analyze_alter_table(&alter.name, &alter.operations, vschema)
        }
        Statement::Drop {
            object_type,
            if_exists,
            names,
            ..
        } => match object_type {
            ObjectType::Table => {
                let mut analysis = Analysis::new(Kind::Ddl, Target::AllShards);
                analysis.effect = Some(SchemaEffect::DropTable {
                    names: names.iter().map(table_key).collect(),
                    if_exists: *if_exists,
                });
                Ok(analysis)
            }
            ObjectType::Database => Err(PlanError::unsupported(
                "DROP DATABASE is not supported through the gate; keyspaces are managed with the tessera admin CLI",
            )),
            _ => all_shards(Kind::Ddl),
        },
        Statement::CreateView(view) => Err(PlanError::unsupported(format!(
            "CREATE {}VIEW is not supported through the gate",
            if view.materialized {
                "MATERIALIZED "
            } else {
                ""
            }
        ))
        .with_detail("a view over a sharded table would be evaluated on one shard's rows only")
        .with_hint("query the tables directly")),
        Statement::AlterView { .. } => Err(PlanError::unsupported(
            "ALTER VIEW is not supported through the gate",
        )),
        Statement::CreateIndex(_)
        | Statement::AlterIndex { .. }
        | Statement::CreateSequence { .. }
        | Statement::CreateSchema { .. }
        | Statement::AlterSchema(_)
        | Statement::CreateExtension(_)
        | Statement::DropExtension(_)
        | Statement::CreateType { .. }
        | Statement::AlterType(_)
        | Statement::CreateDomain(_)
        | Statement::DropDomain(_)
        | Statement::CreateFunction(_)
        | Statement::AlterFunction(_)
        | Statement::DropFunction(_)
        | Statement::CreateProcedure { .. }
        | Statement::DropProcedure { .. }
        | Statement::CreateTrigger(_)
        | Statement::DropTrigger(_)
        | Statement::CreatePolicy(_)
        | Statement::AlterPolicy(_)
        | Statement::DropPolicy(_)
        | Statement::CreateRole(_)
        | Statement::AlterRole { .. }
        | Statement::CreateUser(_)
        | Statement::AlterUser(_)
        | Statement::CreateCollation(_)
        | Statement::AlterCollation(_)
        | Statement::Comment { .. }
        | Statement::Grant(_)
        | Statement::Revoke(_) => {
            reject_synchronous_commit_text(statement)?;
            all_shards(Kind::Ddl)
        }
        Statement::Truncate(truncate) => {
            for target in &truncate.table_names {
                analyze::require_known_table(&target.name, vschema)?;
            }
            all_shards(Kind::Ddl)
        }
        Statement::Vacuum(_) | Statement::Analyze(_) => all_shards(Kind::Other),
        Statement::Lock(_) => all_shards(Kind::Other),
        Statement::Explain {
            statement: inner, ..
        } => analyze_explain(inner, vschema),

        Statement::Prepare { .. } | Statement::Execute { .. } => Err(PlanError::unsupported(
            "SQL-level PREPARE/EXECUTE is not supported through the gate",
        )
        .with_hint("use the extended query protocol (your driver's prepared statements)")),
        Statement::LISTEN { .. } | Statement::UNLISTEN { .. } | Statement::NOTIFY { .. } => Err(
            PlanError::unsupported("LISTEN/NOTIFY is not supported through the gate")
                .with_detail("the gate pools server connections per transaction"),
        ),
        Statement::Declare { .. } | Statement::Fetch { .. } | Statement::Close { .. } => Err(
            PlanError::unsupported("cursors are not supported through the gate yet"),
        ),
        Statement::Copy { .. } => Err(PlanError::unsupported(
            "COPY is not supported through the gate yet",
        )
        .with_hint("use INSERT with multiple VALUES rows")),
        Statement::Call(_) => Err(PlanError::unsupported(
            "CALL is not supported through the gate: the gate cannot know which shards a procedure touches",
        )),
        Statement::Merge(_) => Err(PlanError::unsupported(
            "MERGE is not supported through the gate yet",
        )
        .with_hint("use INSERT ... ON CONFLICT")),
        Statement::CreateDatabase { .. } => Err(PlanError::unsupported(
            "CREATE DATABASE is not supported through the gate; keyspaces are managed with the tessera admin CLI",
        )),
        other => Err(PlanError::unsupported(format!(
            "statement not supported through the gate: {}",
            statement_head(other)
        ))),
    }
}

/// First words of a statement for error messages (never the whole text: it may hold data).
fn statement_head(statement: &Statement) -> String {
    let text = statement.to_string();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// DDL and role statements can carry settings (`ALTER ROLE x SET ...`, `CREATE FUNCTION ...
/// SET ...`); any mention of synchronous_commit in them is refused.
fn reject_synchronous_commit_text(statement: &Statement) -> Result<(), PlanError> {
    check_unparsed(&statement.to_string())
}

/// Normalised GUC name: lower case (GUC names are case-insensitive), parts joined with dots.
fn setting_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => ident.value.to_ascii_lowercase(),
            ObjectNamePart::Function(function) => function.to_string().to_ascii_lowercase(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn join_values(values: &[Expr]) -> String {
    values
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn analyze_set(set: &Set) -> Result<Analysis, PlanError> {
    let set_kind = |name: String, value: String, local: bool| {
        if name == "synchronous_commit" {
            return Err(synchronous_commit_error());
        }
        let mut analysis = Analysis::new(StatementKind::Set { name, value }, Target::Gate);
        analysis.set_local = local;
        Ok(analysis)
    };
    match set {
        Set::SingleAssignment {
            scope,
            variable,
            values,
            ..
        } => {
            let local = matches!(scope, Some(sqlparser::ast::ContextModifier::Local));
            set_kind(setting_name(variable), join_values(values), local)
        }
        Set::ParenthesizedAssignments { variables, .. } => {
            if variables
                .iter()
                .any(|variable| setting_name(variable) == "synchronous_commit")
            {
                return Err(synchronous_commit_error());
            }
            Err(PlanError::unsupported(
                "SET of several settings at once is not supported",
            ))
        }
        Set::MultipleAssignments { assignments } => {
            if assignments
                .iter()
                .any(|assignment| setting_name(&assignment.name) == "synchronous_commit")
            {
                return Err(synchronous_commit_error());
            }
            Err(PlanError::unsupported(
                "SET of several settings at once is not supported",
            ))
        }
        Set::SetTimeZone { local, value } => {
            set_kind("timezone".to_string(), value.to_string(), *local)
        }
        Set::SetNames { charset_name, .. } => set_kind(
            "client_encoding".to_string(),
            format!("'{}'", charset_name.value.replace('\'', "''")),
            false,
        ),
        Set::SetNamesDefault {} => {
            set_kind("client_encoding".to_string(), "DEFAULT".to_string(), false)
        }
        Set::SetRole {
            context_modifier,
            role_name,
        } => set_kind(
            "role".to_string(),
            role_name
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "NONE".to_string()),
            matches!(
                context_modifier,
                Some(sqlparser::ast::ContextModifier::Local)
            ),
        ),
        Set::SetSessionAuthorization(parameter) => set_kind(
            "session_authorization".to_string(),
            parameter.to_string(),
            false,
        ),
        Set::SetTransaction {
            modes,
            snapshot,
            session,
        } => {
            if *session || snapshot.is_some() {
                return Err(PlanError::unsupported(
                    "SET SESSION CHARACTERISTICS and SET TRANSACTION SNAPSHOT are not supported through the gate",
                )
                .with_hint("use SET default_transaction_isolation = '...'"));
            }
            set_kind(
                "transaction".to_string(),
                modes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                true,
            )
        }
        Set::SetSessionParam(_) => Err(PlanError::unsupported(
            "this SET form is not supported by PostgreSQL",
        )),
    }
}

/// Normalised key of a table name in the vschema: PostgreSQL identifier folding, `public.`
/// dropped, other schemas kept as `schema.table`.
pub(crate) fn table_key(name: &ObjectName) -> String {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => analyze::normalize_ident(ident),
            ObjectNamePart::Function(function) => function.to_string(),
        })
        .collect();
    match parts.as_slice() {
        [table] => table.clone(),
        [schema, table] if schema == "public" => table.clone(),
        [schema, table] => format!("{schema}.{table}"),
        // database.schema.table: the database is the keyspace itself.
        [_, schema, table] if schema == "public" => table.clone(),
        [_, schema, table] => format!("{schema}.{table}"),
        _ => parts.join("."),
    }
}

/// Hash family of a column type, using the vindex's list of shardable types.
fn family_of_type(data_type: &DataType) -> Option<HashFamily> {
    HashFamily::for_sql_type(&data_type.to_string())
}

fn analyze_create_table(create: &CreateTable, vschema: &VSchema) -> Result<Analysis, PlanError> {
    let name = table_key(&create.name);
    if create.temporary {
        return Err(PlanError::unsupported(
            "temporary tables are not supported through the gate",
        )
        .with_detail("the gate pools server connections per transaction, so a temporary table would vanish or appear in other sessions"));
    }
    if create.query.is_some() {
        return Err(PlanError::unsupported(
            "CREATE TABLE ... AS is not supported through the gate",
        )
        .with_hint("create the table, then INSERT ... SELECT"));
    }
    if create.like.is_some() || create.clone.is_some() {
        return Err(PlanError::unsupported(
            "CREATE TABLE ... LIKE is not supported through the gate",
        )
        .with_hint("list the columns explicitly"));
    }
    if create.inherits.is_some() || create.partition_of.is_some() {
        return Err(PlanError::unsupported(
            "table inheritance and partitions are not supported through the gate",
        ));
    }
    let columns: Vec<String> = create
        .columns
        .iter()
        .map(|column| analyze::normalize_ident(&column.name))
        .collect();
    let sharding = create
        .columns
        .iter()
        .find(|column| analyze::normalize_ident(&column.name) == vschema.sharding_column);
    let kind = match sharding {
        Some(column) => {
            let family = family_of_type(&column.data_type).ok_or_else(|| {
                PlanError::unsupported(format!(
                    "sharding column {} of table {} has type {}, which Tessera cannot shard by",
                    vschema.sharding_column, name, column.data_type
                ))
                .with_hint("use smallint, integer, bigint, text, varchar or uuid")
            })?;
            TableKind::Sharded {
                column: vschema.sharding_column.clone(),
                family,
            }
        }
        None => TableKind::Reference,
    };
    let mut analysis = Analysis::new(StatementKind::Ddl, Target::AllShards);
    analysis.effect = Some(SchemaEffect::CreateTable {
        name,
        info: TableInfo { kind, columns },
        if_not_exists: create.if_not_exists,
    });
    Ok(analysis)
}

fn analyze_alter_table(
    name: &ObjectName,
    operations: &[AlterTableOperation],
    vschema: &VSchema,
) -> Result<Analysis, PlanError> {
    let key = table_key(name);
    let mut analysis = Analysis::new(StatementKind::Ddl, Target::AllShards);
    let Some(info) = vschema.table(&key) else {
        // Not created through the gate: PostgreSQL reports whether it exists; nothing to track.
        return Ok(analysis);
    };
    let sharding_column = info.sharding().map(|(column, _)| column.to_string());
    let protect = |column: &str, action: &str| -> Result<(), PlanError> {
        if sharding_column.as_deref() == Some(column) {
            return Err(PlanError::unsupported(format!(
                "cannot {action} sharding column {column} of table {key}"
            ))
            .with_detail("every row's shard is computed from this column"));
        }
        Ok(())
    };
    let mut columns = info.columns.clone();
    let mut columns_changed = false;
    let mut new_name = None;
    for operation in operations {
        match operation {
            AlterTableOperation::AddColumn {
                if_not_exists,
                column_def,
                ..
            } => {
                let column = analyze::normalize_ident(&column_def.name);
                if !(*if_not_exists && columns.contains(&column)) {
                    columns.push(column);
                    columns_changed = true;
                }
            }
            AlterTableOperation::DropColumn { column_names, .. } => {
                for column in column_names {
                    let column = analyze::normalize_ident(column);
                    protect(&column, "drop")?;
                    columns.retain(|existing| existing != &column);
                    columns_changed = true;
                }
            }
            AlterTableOperation::RenameColumn {
                old_column_name,
                new_column_name,
            } => {
                let old = analyze::normalize_ident(old_column_name);
                protect(&old, "rename")?;
                let new = analyze::normalize_ident(new_column_name);
                for column in columns.iter_mut() {
                    if *column == old {
                        *column = new.clone();
                    }
                }
                columns_changed = true;
            }
            AlterTableOperation::RenameTable { table_name } => {
                let renamed = match table_name {
                    sqlparser::ast::RenameTableNameKind::As(name)
                    | sqlparser::ast::RenameTableNameKind::To(name) => table_key(name),
                };
                // RENAME TO keeps the schema of the table.
                new_name = Some(match key.split_once('.') {
                    Some((schema, _)) if !renamed.contains('.') => format!("{schema}.{renamed}"),
                    _ => renamed,
                });
            }
            AlterTableOperation::AlterColumn { column_name, op } => {
                if matches!(op, AlterColumnOperation::SetDataType { .. }) {
                    protect(&analyze::normalize_ident(column_name), "change the type of")?;
                }
            }
            AlterTableOperation::ChangeColumn { old_name, .. }
            | AlterTableOperation::ModifyColumn {
                col_name: old_name, ..
            } => {
                protect(&analyze::normalize_ident(old_name), "change")?;
            }
            _ => {}
        }
    }
    if columns_changed || new_name.is_some() {
        analysis.effect = Some(SchemaEffect::AlterTable {
            name: key,
            new_name,
            columns: columns_changed.then_some(columns),
        });
    }
    Ok(analysis)
}

/// EXPLAIN runs where its statement would run; plan rows from several shards are concatenated.
fn analyze_explain(inner: &Statement, vschema: &VSchema) -> Result<Analysis, PlanError> {
    let inner_analysis = analyze_statement(inner, vschema)?;
    let target = match inner_analysis.target {
        Target::InsertRows { ref rows, .. } if rows.len() > 1 => {
            return Err(PlanError::unsupported(
                "EXPLAIN of a multi-row INSERT is not supported through the gate",
            )
            .with_hint("EXPLAIN a single-row INSERT"));
        }
        Target::Gate => {
            return Err(PlanError::unsupported(
                "EXPLAIN of this statement is not supported",
            ));
        }
        target => target,
    };
    let mut analysis = Analysis::new(StatementKind::Other, target);
    analysis.multi_shard_error = inner_analysis.multi_shard_error;
    Ok(analysis)
}

/// True when `expr` is a string literal equal (case-insensitively) to `text`.
pub(crate) fn is_string_literal(expr: &Expr, text: &str) -> bool {
    match expr {
        Expr::Value(value) => match &value.value {
            Value::SingleQuotedString(content)
            | Value::EscapedStringLiteral(content)
            | Value::NationalStringLiteral(content) => content.trim().eq_ignore_ascii_case(text),
            Value::DollarQuotedString(dollar) => dollar.value.trim().eq_ignore_ascii_case(text),
            _ => false,
        },
        Expr::Cast { expr, .. } | Expr::Nested(expr) => is_string_literal(expr, text),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a query string splits at top-level semicolons only, keeping each statement's text.
    #[test]
    fn query_string_splits_into_statement_texts() {
        let vschema = VSchema::new("app", "tenant_id");
        let plans = plan_query(
            "SELECT ';' AS a; SELECT $x$ ; $x$ ;\n-- comment; with semicolon\nSELECT \"a;b\" FROM (SELECT 1 AS \"a;b\") s;;  ",
            &vschema,
        )
        .expect("plans");
        let texts: Vec<&str> = plans.iter().map(|plan| &*plan.sql).collect();
        assert_eq!(
            texts,
            vec![
                "SELECT ';' AS a",
                "SELECT $x$ ; $x$",
                "-- comment; with semicolon\nSELECT \"a;b\" FROM (SELECT 1 AS \"a;b\") s",
            ]
        );
    }

    /// Goal: empty and comment-only strings give no plans (simple) or one empty plan (extended).
    #[test]
    fn empty_strings_plan_to_nothing() {
        let vschema = VSchema::new("app", "tenant_id");
        for text in ["", "  ;  ; ", "-- nothing\n", "/* nothing */"] {
            assert!(
                plan_query(text, &vschema).expect("plans").is_empty(),
                "{text:?}"
            );
            let plan = plan_statement(text, &vschema).expect("plans");
            assert_eq!(
                (&*plan.sql, &plan.kind, &plan.target),
                ("", &StatementKind::Other, &Target::AnyShard)
            );
        }
    }

    /// Goal: SET LOCAL and SET TRANSACTION are marked transaction-local; plain SET is not.
    #[test]
    fn set_local_is_flagged() {
        let vschema = VSchema::new("app", "tenant_id");
        let local = |sql: &str| plan_statement(sql, &vschema).expect("plans").set_local;
        assert!(local("SET LOCAL statement_timeout = 5"));
        assert!(local("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"));
        assert!(!local("SET statement_timeout = 5"));
        assert!(!local("SET SESSION statement_timeout = 5"));
    }

    /// Goal: text the parser cannot read is refused if it could touch synchronous_commit.
    #[test]
    fn unparsed_text_mentioning_synchronous_commit_is_refused() {
        assert!(check_unparsed("ALTER SYSTEM SET Synchronous_Commit = off").is_err());
        assert!(check_unparsed("ALTER DATABASE app SET synchronous_commit TO local").is_err());
        assert!(check_unparsed("VACUUM (ANALYZE) customers").is_ok());
    }

    /// Goal: the parameter count is the highest $n used.
    #[test]
    fn param_count_is_highest_placeholder() {
        let vschema = VSchema::new("app", "tenant_id");
        let plan = plan_statement("SELECT $3::int, $1::text", &vschema).expect("plans");
        assert_eq!(plan.param_count, 3);
    }
}
