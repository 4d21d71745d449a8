//! Literal templates: the plan-cache key of a simple-protocol query whose constants vary.
//!
//! Clients of the simple protocol (pgbench `-M simple`, many ORMs with client-side
//! interpolation) send `... WHERE aid = 4711` with a new literal each time, so the exact-text
//! plan cache misses on every query and the gate parses every statement. Here a small scanner
//! (no allocation once its buffers have grown) replaces every numeric and plain string constant
//! by `$n`, giving a template such as `... WHERE aid = $1`. The template is planned once like a
//! prepared statement; each query then only scans, looks the template up and routes with the
//! literals as text parameters.
//!
//! The scanner gives up (and the caller falls back to exact-text planning) on anything it does
//! not fully understand: `$` (dollar quotes, parameters), prefixed strings (`E'..'`, `B'..'`,
//! `U&'..'`), nested or unterminated comments, numbers glued to letters. A template is only
//! used for a route when the result provably matches what planning the exact text would give;
//! see [`template_route`].

use std::sync::Arc;

use bytes::BytesMut;
use tessera_wire::statement::SqlKey;

use super::bindable::Bindable;
use super::plan::{KeyValue, StatementKind, StatementPlan, Target};
use super::route::{Params, Route, route};
use super::shardmap::{ShardIndex, ShardMap};
use super::vschema::HashFamily;

/// Most literals a template may have: their values are routed from a stack array.
pub const MAX_LITERALS: usize = 32;

/// What kind of constant a `$n` of the template replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiteralKind {
    /// Unsigned decimal digits only (`4711`).
    Integer,
    /// Any other number (`1.5`, `1e3`, `.5`).
    Number,
    /// `'text'` without `''` or backslashes: the value is the text between the quotes.
    PlainString,
    /// A string with `''` or a backslash (its value needs unescaping).
    EscapedString,
}

/// One replaced constant: bytes `start..end` of the query (for strings, without the quotes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Literal {
    pub start: usize,
    pub end: usize,
    pub kind: LiteralKind,
}

/// PostgreSQL's types for constants: what a literal of each kind is typed as.
const INT4: u32 = 23;
const INT8: u32 = 20;
const NUMERIC: u32 = 1700;
/// An untyped parameter, typed from context like an untyped string literal.
const UNSPECIFIED: u32 = 0;

/// A cached template: its plan and where its constants may be bound on the server.
#[derive(Debug)]
pub struct TemplatePlan {
    pub plan: Arc<StatementPlan>,
    pub bindable: Bindable,
    /// The template text's part of its server statement's key (hashed once, not per query).
    pub sql_key: SqlKey,
}

impl TemplatePlan {
    pub fn new(plan: Arc<StatementPlan>) -> TemplatePlan {
        let bindable = Bindable::of(&plan.ast, plan.param_count);
        let sql_key = SqlKey::of(&plan.sql);
        TemplatePlan {
            plan,
            bindable,
            sql_key,
        }
    }
}

/// A query's template and its constants. Reused across queries (buffers keep their capacity).
#[derive(Debug, Default)]
pub struct Template {
    pub text: String,
    pub literals: Vec<Literal>,
}

fn is_identifier_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || byte >= 0x80
}

impl Template {
    /// Scans `sql` into this template. `false` when the query has no constants or something the
    /// scanner does not handle (the template is then meaningless).
    pub fn scan(&mut self, sql: &str) -> bool {
        self.text.clear();
        self.literals.clear();
        let bytes = sql.as_bytes();
        let mut copied = 0;
        let mut index = 0;
        while index < bytes.len() {
            let byte = bytes[index];
            let previous = index.checked_sub(1).map(|i| bytes[i]);
            let after_identifier = previous.is_some_and(is_identifier_byte);
            match byte {
                b'$' => return false,
                b'-' if bytes.get(index + 1) == Some(&b'-') => {
                    index = match bytes[index..].iter().position(|b| *b == b'\n') {
                        Some(offset) => index + offset + 1,
                        None => bytes.len(),
                    };
                }
                b'/' if bytes.get(index + 1) == Some(&b'*') => {
                    // PostgreSQL nests block comments; the scanner does not.
                    let rest = &sql[index + 2..];
                    let Some(close) = rest.find("*/") else {
                        return false;
                    };
                    if rest[..close].contains("/*") {
                        return false;
                    }
                    index += close + 4;
                }
                b'"' => {
                    let Some(close) = sql[index + 1..].find('"') else {
                        return false;
                    };
                    // A doubled `""` continues the identifier; both halves are skipped alike.
                    index += close + 2;
                }
                b'\'' => {
                    if after_identifier || previous == Some(b'&') {
                        // E'..', B'..', X'..', N'..', U&'..': not a plain string.
                        return false;
                    }
                    let start = index + 1;
                    let mut end = start;
                    let mut kind = LiteralKind::PlainString;
                    loop {
                        match bytes.get(end) {
                            None => return false,
                            Some(b'\'') if bytes.get(end + 1) == Some(&b'\'') => {
                                kind = LiteralKind::EscapedString;
                                end += 2;
                            }
                            Some(b'\'') => break,
                            Some(b'\\') => {
                                kind = LiteralKind::EscapedString;
                                end += 1;
                            }
                            Some(_) => end += 1,
                        }
                    }
                    if !self.replace(sql, &mut copied, index, end + 1, start, end, kind) {
                        return false;
                    }
                    index = end + 1;
                }
                b'0'..=b'9' | b'.'
                    if !after_identifier
                        && (byte != b'.'
                            || (bytes.get(index + 1).is_some_and(u8::is_ascii_digit)
                                && !previous.is_some_and(|p| p.is_ascii_digit()))) =>
                {
                    let (end, kind) = number_end(bytes, index);
                    if bytes
                        .get(end)
                        .is_some_and(|b| is_identifier_byte(*b) || *b == b'.')
                    {
                        return false;
                    }
                    if !self.replace(sql, &mut copied, index, end, index, end, kind) {
                        return false;
                    }
                    index = end;
                }
                _ => index += 1,
            }
        }
        if self.literals.is_empty() {
            return false;
        }
        self.text.push_str(&sql[copied..]);
        true
    }

    /// Fills `types` with the parameter types that make the template, bound to this query's
    /// constants, mean exactly what the query's text means (see [`super::bindable`]); `false`
    /// if some constant cannot be bound. Numbers get PostgreSQL's type for the literal: `int4`
    /// if the digits fit, else `int8`, else `numeric`; fractions and exponents are `numeric`.
    /// Strings are untyped; those with backslashes are refused, since their value depends on
    /// `standard_conforming_strings`.
    pub fn bind_types(&self, sql: &str, bindable: &Bindable, types: &mut Vec<u32>) -> bool {
        types.clear();
        for (index, literal) in self.literals.iter().enumerate() {
            let value = &sql.as_bytes()[literal.start..literal.end];
            let (number, ty) = match literal.kind {
                LiteralKind::Integer => {
                    let ty = integer_type(value);
                    // `-2147483648` is one int4 constant to PostgreSQL, `-$1` an int8.
                    if bindable.is_negated(index) && ty != integer_type_negated(value) {
                        return false;
                    }
                    (true, ty)
                }
                LiteralKind::Number => (true, NUMERIC),
                LiteralKind::PlainString => (false, UNSPECIFIED),
                LiteralKind::EscapedString if !value.contains(&b'\\') => (false, UNSPECIFIED),
                LiteralKind::EscapedString => return false,
            };
            if !bindable.allows(index, number) {
                return false;
            }
            types.push(ty);
        }
        true
    }

    /// Appends the value of constant `index` as a text parameter (`''` becomes `'`).
    pub fn write_value(&self, sql: &str, index: usize, out: &mut BytesMut) {
        let literal = self.literals[index];
        let value = &sql.as_bytes()[literal.start..literal.end];
        if literal.kind != LiteralKind::EscapedString {
            out.extend_from_slice(value);
            return;
        }
        let mut rest = value;
        while let Some(quote) = rest.iter().position(|b| *b == b'\'') {
            out.extend_from_slice(&rest[..=quote]);
            // The scanner only accepts doubled quotes inside a string.
            rest = &rest[(quote + 2).min(rest.len())..];
        }
        out.extend_from_slice(rest);
    }

    /// Replaces `sql[from..to]` by the next `$n`, remembering the value bytes `start..end`.
    #[allow(clippy::too_many_arguments)]
    fn replace(
        &mut self,
        sql: &str,
        copied: &mut usize,
        from: usize,
        to: usize,
        start: usize,
        end: usize,
        kind: LiteralKind,
    ) -> bool {
        if self.literals.len() == MAX_LITERALS {
            return false;
        }
        self.text.push_str(&sql[*copied..from]);
        self.literals.push(Literal { start, end, kind });
        self.text.push('$');
        push_decimal(&mut self.text, self.literals.len());
        *copied = to;
        true
    }
}

/// Appends `value` in decimal without going through the formatting machinery.
fn push_decimal(out: &mut String, value: usize) {
    let mut digits = [0u8; 20];
    let mut position = digits.len();
    let mut rest = value;
    loop {
        position -= 1;
        digits[position] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for digit in &digits[position..] {
        out.push(char::from(*digit));
    }
}

/// PostgreSQL's type for an unsigned integer literal of these digits.
fn integer_type(digits: &[u8]) -> u32 {
    match digits_value(digits) {
        Some(value) if value <= i32::MAX as u128 => INT4,
        Some(value) if value <= i64::MAX as u128 => INT8,
        _ => NUMERIC,
    }
}

/// PostgreSQL's type for the folded constant `-digits`.
fn integer_type_negated(digits: &[u8]) -> u32 {
    match digits_value(digits) {
        Some(value) if value <= 1 << 31 => INT4,
        Some(value) if value <= 1 << 63 => INT8,
        _ => NUMERIC,
    }
}

/// The value of ASCII digits, `None` beyond `u128` (certainly `numeric`).
fn digits_value(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |value, digit| {
        value.checked_mul(10)?.checked_add(u128::from(digit - b'0'))
    })
}

/// End of the number starting at `start`, and whether it is a plain integer.
fn number_end(bytes: &[u8], start: usize) -> (usize, LiteralKind) {
    let mut end = start;
    let mut kind = LiteralKind::Integer;
    while bytes.get(end).is_some_and(u8::is_ascii_digit) {
        end += 1;
    }
    if bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_none_or(|b| *b != b'.') {
        kind = LiteralKind::Number;
        end += 1;
        while bytes.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
    }
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        let mut exponent = end + 1;
        if matches!(bytes.get(exponent), Some(b'+' | b'-')) {
            exponent += 1;
        }
        if bytes.get(exponent).is_some_and(u8::is_ascii_digit) {
            kind = LiteralKind::Number;
            end = exponent;
            while bytes.get(end).is_some_and(u8::is_ascii_digit) {
                end += 1;
            }
        }
    }
    (end, kind)
}

/// Whether a plan made from a template may route queries of that template: a data statement
/// keyed only by template parameters. Everything else (gate commands, DDL, scatter, constant
/// keys) is planned from the exact text as before.
pub fn is_routable_template(plan: &StatementPlan) -> bool {
    let keyed_by_params = |values: &[KeyValue]| {
        !values.is_empty()
            && values
                .iter()
                .all(|value| matches!(value, KeyValue::Param(_)))
    };
    matches!(
        plan.kind,
        StatementKind::Select
            | StatementKind::Insert
            | StatementKind::Update
            | StatementKind::Delete
    ) && match &plan.target {
        Target::Keys { values, .. } => keyed_by_params(values),
        Target::InsertRows { rows, .. } => keyed_by_params(rows),
        _ => false,
    }
}

/// The single shard a query runs on, routed from its template's plan and its literals, when
/// that is provably the shard planning the exact text would pick; `None` otherwise (the caller
/// then plans the exact text).
///
/// Why it matches: the analyser treats `column = $n` exactly like `column = literal` except in
/// how the value becomes a sharding key. A plain string literal and a text parameter both go
/// through the column type's input function; an unsigned integer literal and a text parameter
/// of the same digits give the same bigint. Other combinations (numbers against text or uuid
/// columns, escaped strings, fractions, out-of-range values) are refused here or fail routing,
/// and so fall back. Several shards also fall back: merging needs the exact plan.
pub fn template_route(
    template_plan: &TemplatePlan,
    template: &Template,
    sql: &str,
    shards: &ShardMap,
) -> Option<ShardIndex> {
    let plan = &template_plan.plan;
    let (family, keys) = match &plan.target {
        Target::Keys { family, values } => (*family, values),
        Target::InsertRows { family, rows } => (*family, rows),
        _ => return None,
    };
    if template.literals.len() > MAX_LITERALS || plan.param_count != template.literals.len() {
        return None;
    }
    for key in keys {
        let KeyValue::Param(index) = key else {
            return None;
        };
        let literal = template.literals.get(*index)?;
        let usable = match literal.kind {
            LiteralKind::PlainString => true,
            LiteralKind::Integer => family == HashFamily::Int,
            LiteralKind::Number | LiteralKind::EscapedString => false,
        };
        if !usable {
            return None;
        }
    }
    let mut values: [Option<&[u8]>; MAX_LITERALS] = [None; MAX_LITERALS];
    for (slot, literal) in values.iter_mut().zip(&template.literals) {
        *slot = Some(&sql.as_bytes()[literal.start..literal.end]);
    }
    let params = Params {
        values: &values[..template.literals.len()],
        formats: &[],
        types: &[],
    };
    match route(plan, &params, shards) {
        Ok(Route::Single(shard)) => Some(shard),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(sql: &str) -> Option<(String, Vec<(String, LiteralKind)>)> {
        let mut template = Template::default();
        template.scan(sql).then(|| {
            let literals = template
                .literals
                .iter()
                .map(|l| (sql[l.start..l.end].to_string(), l.kind))
                .collect();
            (template.text.clone(), literals)
        })
    }

    /// Goal: constants become numbered parameters and identifiers with digits stay intact.
    #[test]
    fn replaces_numbers_and_strings() {
        let (text, literals) =
            scan("UPDATE t1 SET x = x + -12, name = 'bob' WHERE aid = 4711 AND f = 1.5e3;")
                .expect("scans");
        assert_eq!(
            text,
            "UPDATE t1 SET x = x + -$1, name = $2 WHERE aid = $3 AND f = $4;"
        );
        assert_eq!(
            literals,
            vec![
                ("12".to_string(), LiteralKind::Integer),
                ("bob".to_string(), LiteralKind::PlainString),
                ("4711".to_string(), LiteralKind::Integer),
                ("1.5e3".to_string(), LiteralKind::Number),
            ]
        );
    }

    /// Goal: comments and quoted identifiers are copied, not scanned for constants.
    #[test]
    fn skips_comments_and_quoted_identifiers() {
        let (text, literals) =
            scan("SELECT \"col 1\" /* 2 */ FROM t -- 3\nWHERE k = '4''5'").expect("scans");
        assert_eq!(text, "SELECT \"col 1\" /* 2 */ FROM t -- 3\nWHERE k = $1");
        assert_eq!(
            literals,
            vec![("4''5".to_string(), LiteralKind::EscapedString)]
        );
    }

    fn vschema() -> crate::sql::VSchema {
        use crate::sql::TableInfo;
        let mut vschema = crate::sql::VSchema::new("app", "k");
        let columns = &["k", "v", "name"][..];
        vschema.tables.insert(
            "ints".into(),
            TableInfo::sharded("k", HashFamily::Int, columns),
        );
        vschema.tables.insert(
            "texts".into(),
            TableInfo::sharded("k", HashFamily::Text, columns),
        );
        vschema.tables.insert(
            "uuids".into(),
            TableInfo::sharded("k", HashFamily::Uuid, columns),
        );
        vschema
            .tables
            .insert("refs".into(), TableInfo::reference(columns));
        vschema
    }

    /// Goal: whenever a query is routed through its template, the shard is the one planning its
    /// exact text picks; and the common keyed statements do take the template route.
    #[test]
    fn template_routes_agree_with_exact_plans() {
        let vschema = vschema();
        let shards = ShardMap::from_range_names(&["-40", "40-80", "80-c0", "c0-"]).expect("map");
        let uuid = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        let mut queries: Vec<(String, bool)> = Vec::new();
        for key in [0i64, 1, 7, 42, 4711, 99_999, 1 << 40, i64::MAX] {
            for (sql, expect_template) in [
                (format!("SELECT v FROM ints WHERE k = {key}"), true),
                (format!("SELECT v FROM ints WHERE k = {key};"), true),
                (format!("SELECT v FROM ints WHERE k = '{key}'"), true),
                (format!("SELECT v FROM ints WHERE k = ' {key}'"), true),
                (format!("SELECT v FROM ints WHERE k = {key}.0"), false),
                (format!("SELECT v FROM ints WHERE k = -{key}"), false),
                (format!("SELECT v FROM ints WHERE k = {key}::bigint"), true),
                (
                    format!("SELECT v FROM ints WHERE k = {key} ORDER BY 1 LIMIT 5"),
                    true,
                ),
                (
                    format!("SELECT v FROM ints WHERE k IN ({key}, {key})"),
                    true,
                ),
                (format!("UPDATE ints SET v = v + -5 WHERE k = {key}"), true),
                (format!("DELETE FROM ints WHERE k = {key}"), true),
                (
                    format!("INSERT INTO ints (k, v, name) VALUES ({key}, 1, 'x''y')"),
                    true,
                ),
                (
                    format!("INSERT INTO ints (k, v) VALUES ({key}, 1), ({key}, 2)"),
                    true,
                ),
                (format!("SELECT v FROM texts WHERE k = '{key}'"), true),
                (format!("SELECT v FROM texts WHERE k = {key}"), false),
                (format!("INSERT INTO texts (k, v) VALUES ({key}, 1)"), false),
                (
                    format!("INSERT INTO texts (k, v) VALUES ('0{key}', 1)"),
                    true,
                ),
                (
                    format!("SELECT v FROM texts WHERE k = 'it''s {key}'"),
                    false,
                ),
                (format!("SELECT v FROM ints WHERE v = {key}"), false),
                (format!("SELECT count(*) FROM ints WHERE k < {key}"), false),
                (format!("SELECT v FROM refs WHERE k = {key}"), false),
                (format!("SELECT {key}"), false),
            ] {
                queries.push((sql, expect_template));
            }
        }
        queries.push((format!("SELECT v FROM uuids WHERE k = '{uuid}'"), true));
        queries.push((
            format!("SELECT v FROM uuids WHERE k = '{}'", uuid.to_uppercase()),
            true,
        ));
        queries.push(("SELECT v FROM uuids WHERE k = 'not a uuid'".into(), false));
        queries.push((
            "SELECT v FROM ints WHERE k = 99999999999999999999".into(),
            false,
        ));
        let mut template = Template::default();
        for (sql, expect_template) in &queries {
            let exact = super::super::plan::plan_statement(sql, &vschema)
                .ok()
                .and_then(|plan| route(&plan, &Params::NONE, &shards).ok());
            let via_template = template
                .scan(sql)
                .then(|| super::super::plan::plan_statement(&template.text, &vschema).ok())
                .flatten()
                .filter(|plan| is_routable_template(plan))
                .and_then(|plan| template_route(&TemplatePlan::new(plan), &template, sql, &shards));
            if let Some(shard) = via_template {
                assert_eq!(exact, Some(Route::Single(shard)), "{sql}");
            }
            assert_eq!(via_template.is_some(), *expect_template, "{sql}: {exact:?}");
        }
    }

    /// Goal: what the scanner does not understand is refused, never guessed.
    #[test]
    fn refuses_what_it_does_not_understand() {
        for sql in [
            "SELECT $1",
            "SELECT $$x$$",
            "SELECT E'a\\n'",
            "SELECT U&'d\\0061t'",
            "SELECT x'1f'",
            "SELECT 1 /* /* nested */ */",
            "SELECT 'unterminated",
            "SELECT 12abc",
            "SELECT * FROM t",
        ] {
            assert_eq!(scan(sql), None, "{sql}");
        }
    }

    /// Goal: constants are bound with exactly PostgreSQL's literal types, or not at all.
    #[test]
    fn binds_constants_with_the_literal_types_postgres_gives_them() {
        let vschema = vschema();
        let types_of = |sql: &str| {
            let mut template = Template::default();
            assert!(template.scan(sql), "{sql}");
            let plan = super::super::plan::plan_statement(&template.text, &vschema).expect(sql);
            let bindable = Bindable::of(&plan.ast, plan.param_count);
            let mut types = Vec::new();
            template
                .bind_types(sql, &bindable, &mut types)
                .then_some(types)
        };
        let point = "SELECT v FROM ints WHERE k = ";
        assert_eq!(types_of(&format!("{point}5")), Some(vec![INT4]));
        assert_eq!(types_of(&format!("{point}2147483647")), Some(vec![INT4]));
        assert_eq!(types_of(&format!("{point}2147483648")), Some(vec![INT8]));
        assert_eq!(types_of(&format!("{point}007")), Some(vec![INT4]));
        assert_eq!(
            types_of(&format!("{point}99999999999999999999")),
            Some(vec![NUMERIC])
        );
        assert_eq!(types_of(&format!("{point}1.5")), Some(vec![NUMERIC]));
        assert_eq!(types_of(&format!("{point}1e3")), Some(vec![NUMERIC]));
        assert_eq!(types_of(&format!("{point}'5'")), Some(vec![UNSPECIFIED]));
        assert_eq!(
            types_of(&format!("{point}'it''s'")),
            Some(vec![UNSPECIFIED])
        );
        assert_eq!(types_of(&format!("{point}'a\\b'")), None);
        // A folded negative constant: `-2147483648` is int4, `-$1` of 2147483648 is int8.
        assert_eq!(types_of(&format!("{point}-2147483647")), Some(vec![INT4]));
        assert_eq!(types_of(&format!("{point}-2147483648")), None);
        assert_eq!(types_of(&format!("{point}-2147483649")), Some(vec![INT8]));
        assert_eq!(types_of(&format!("{point}-9223372036854775808")), None);
        // A string where only a number binds.
        assert_eq!(types_of(&format!("{point}5 LIMIT '3'")), None);
        assert_eq!(
            types_of(&format!("{point}5 LIMIT 3")),
            Some(vec![INT4, INT4])
        );
    }

    /// Goal: a bound string carries the literal's value, quotes undoubled.
    #[test]
    fn writes_literal_values_as_parameter_text() {
        let sql = "SELECT v FROM ints WHERE k = 42 AND name IN ('it''s', '''', 'plain', '')";
        let mut template = Template::default();
        assert!(template.scan(sql));
        let values: Vec<String> = (0..template.literals.len())
            .map(|index| {
                let mut out = BytesMut::new();
                template.write_value(sql, index, &mut out);
                String::from_utf8(out.to_vec()).expect("utf-8")
            })
            .collect();
        assert_eq!(values, ["42", "it's", "'", "plain", ""]);
    }
}
