//! Which constants of a literal template may travel as bound parameters of a statement prepared
//! on the server, without changing what the query means or returns.
//!
//! A simple query such as `SELECT abalance FROM accounts WHERE aid = 4711` can run on the
//! server as the prepared template `... WHERE aid = $1` bound to `4711`: PostgreSQL then skips
//! parse and plan, as it does for extended-protocol clients. That is only correct where a
//! parameter and the literal it replaces are the same thing to PostgreSQL:
//!
//! - A number is bound with exactly the type PostgreSQL gives the literal (`int4`, `int8` or
//!   `numeric`, see [`super::template::Template::bind_types`]), so any expression position
//!   is the same. The positions where a bare number is not an expression (`ORDER BY 1`,
//!   `GROUP BY 1` and `DISTINCT ON (1)` are column ordinals; type modifiers such as
//!   `numeric(10, 2)`) are never listed below.
//! - A string literal is untyped until context types it, and an untyped parameter is typed by
//!   the same rules, but only where the context has a type: beside a column or a cast in a
//!   comparison, `IN` or `BETWEEN`, as a `LIKE` pattern, under a cast, as an `INSERT` value or
//!   an `UPDATE ... SET` value. Elsewhere (`SELECT 'x'`, `'a' = 'b'`, function arguments with
//!   overloads) the literal and the parameter can differ, so the query keeps the simple
//!   protocol.
//!
//! Anything not recognised here is simply not bindable: the query then runs as text.

use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, CastKind, Expr, LimitClause, Query, SetExpr, Statement, UnaryOperator, Value,
    Visit, Visitor,
};

use super::template::MAX_LITERALS;

/// Where each parameter of a template may be bound; bit `i` stands for `$i+1`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bindable {
    /// A number literal here may be bound (typed as PostgreSQL types the literal).
    pub numbers: u32,
    /// A string literal here may be bound (untyped, typed by its context).
    pub strings: u32,
    /// The parameter is the operand of a unary minus: PostgreSQL folds `-2147483648` into one
    /// `int4` constant, while `-$1` keeps the type of `2147483648` (`int8`), so the two
    /// boundary values stay text.
    pub negated: u32,
}

impl Bindable {
    /// Analyses a template's statement with `param_count` parameters; nothing is bindable
    /// unless every parameter was found exactly where listed above.
    pub fn of(statement: &Statement, param_count: usize) -> Bindable {
        if param_count == 0 || param_count > MAX_LITERALS {
            return Bindable::default();
        }
        let mut finder = Finder::default();
        let _ = statement.visit(&mut finder);
        if let Statement::Insert(insert) = statement
            && let Some(source) = &insert.source
            && let SetExpr::Values(values) = &*source.body
        {
            for row in &values.rows {
                for value in &row.content {
                    finder.assignment(value);
                }
            }
        }
        if let Statement::Update(update) = statement {
            for assignment in &update.assignments {
                finder.assignment(&assignment.value);
            }
        }
        let all = if param_count == 32 {
            u32::MAX
        } else {
            (1u32 << param_count) - 1
        };
        if finder.seen != all || finder.twice {
            return Bindable::default();
        }
        finder.found
    }

    /// May a literal of this kind at parameter `index` be bound?
    pub fn allows(&self, index: usize, number: bool) -> bool {
        let mask = if number { self.numbers } else { self.strings };
        index < MAX_LITERALS && mask & (1 << index) != 0
    }

    pub fn is_negated(&self, index: usize) -> bool {
        index < MAX_LITERALS && self.negated & (1 << index) != 0
    }
}

#[derive(Default)]
struct Finder {
    found: Bindable,
    /// Every parameter met anywhere in an expression.
    seen: u32,
    /// A parameter number occurred twice (templates number each constant once).
    twice: bool,
}

/// `$n` as a zero-based index.
fn placeholder(expr: &Expr) -> Option<usize> {
    let Expr::Value(value) = expr else {
        return None;
    };
    let Value::Placeholder(name) = &value.value else {
        return None;
    };
    let number: usize = name.strip_prefix('$')?.parse().ok()?;
    (1..=MAX_LITERALS).contains(&number).then(|| number - 1)
}

/// A cast of a plain parameter (`$1::date`, `CAST($1 AS date)`): its type is the cast's.
fn cast_placeholder(expr: &Expr) -> Option<usize> {
    match expr {
        Expr::Cast {
            kind: CastKind::Cast | CastKind::DoubleColon,
            expr,
            format: None,
            ..
        } => placeholder(expr),
        _ => None,
    }
}

/// An expression whose type is known without looking at its neighbour: a column (or a
/// parameterless SQL function such as `current_date`) or a cast.
fn typed(expr: &Expr) -> bool {
    matches!(
        expr,
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Cast { .. }
    )
}

fn bit(index: usize) -> u32 {
    1 << index
}

impl Finder {
    /// A parameter compared with `other` (`=`, `IN`, `BETWEEN`, `LIKE`).
    fn compared(&mut self, operand: &Expr, other: &Expr) {
        if let Some(index) = placeholder(operand) {
            self.found.numbers |= bit(index);
            if typed(other) {
                self.found.strings |= bit(index);
            }
        } else {
            self.arithmetic(operand);
        }
    }

    /// A parameter that is an operand of arithmetic: numbers only, possibly negated.
    fn arithmetic(&mut self, operand: &Expr) {
        if let Some(index) = placeholder(operand) {
            self.found.numbers |= bit(index);
        } else if let Expr::UnaryOp {
            op: UnaryOperator::Minus | UnaryOperator::Plus,
            expr,
        } = operand
            && let Some(index) = placeholder(expr)
        {
            self.found.numbers |= bit(index);
            self.found.negated |= bit(index);
        }
    }

    /// An `INSERT ... VALUES` item or `UPDATE ... SET` value: typed by its target column.
    fn assignment(&mut self, value: &Expr) {
        if let Some(index) = placeholder(value) {
            self.found.numbers |= bit(index);
            self.found.strings |= bit(index);
        } else {
            self.arithmetic(value);
        }
    }
}

impl Visitor for Finder {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(LimitClause::LimitOffset { limit, offset, .. }) = &query.limit_clause {
            for value in limit.iter().chain(offset.iter().map(|o| &o.value)) {
                if let Some(index) = placeholder(value) {
                    self.found.numbers |= bit(index);
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Some(index) = placeholder(expr) {
            self.twice |= self.seen & bit(index) != 0;
            self.seen |= bit(index);
            return ControlFlow::Continue(());
        }
        if let Some(index) = cast_placeholder(expr) {
            self.found.numbers |= bit(index);
            self.found.strings |= bit(index);
            return ControlFlow::Continue(());
        }
        match expr {
            Expr::BinaryOp { left, op, right } => match op {
                BinaryOperator::Eq
                | BinaryOperator::NotEq
                | BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq => {
                    self.compared(left, right);
                    self.compared(right, left);
                }
                BinaryOperator::Plus
                | BinaryOperator::Minus
                | BinaryOperator::Multiply
                | BinaryOperator::Divide
                | BinaryOperator::Modulo => {
                    self.arithmetic(left);
                    self.arithmetic(right);
                }
                _ => {}
            },
            Expr::InList { expr, list, .. } => {
                for item in list {
                    self.compared(item, expr);
                }
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                self.compared(low, expr);
                self.compared(high, expr);
            }
            Expr::Like { expr, pattern, .. } | Expr::ILike { expr, pattern, .. } => {
                self.compared(pattern, expr);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    use super::*;

    fn of(sql: &str, params: usize) -> Bindable {
        let statement = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .expect("parses")
            .remove(0);
        Bindable::of(&statement, params)
    }

    /// Goal: comparisons with columns, VALUES and SET accept numbers and strings; arithmetic
    /// and LIMIT accept numbers only.
    #[test]
    fn lists_the_positions_where_literals_bind() {
        let point = of("SELECT abalance FROM a WHERE aid = $1", 1);
        assert!(point.allows(0, true) && point.allows(0, false));
        let update = of("UPDATE a SET abalance = abalance + -$1 WHERE aid = $2", 2);
        assert!(update.allows(0, true) && !update.allows(0, false));
        assert!(update.is_negated(0) && !update.is_negated(1));
        assert!(update.allows(1, false));
        let insert = of(
            "INSERT INTO h (a, b, c) VALUES ($1, $2, CURRENT_TIMESTAMP)",
            2,
        );
        assert!(insert.allows(0, false) && insert.allows(1, true));
        let limit = of("SELECT v FROM t WHERE k IN ($1, $2) LIMIT $3", 3);
        assert!(limit.allows(1, false) && limit.allows(2, true) && !limit.allows(2, false));
        let cast = of("SELECT v FROM t WHERE k = $1 AND d > $2::date", 2);
        assert!(cast.allows(1, false));
        let like = of("SELECT v FROM t WHERE k = $1 AND name LIKE $2", 2);
        assert!(like.allows(1, false));
    }

    /// Goal: positions where a literal is not an expression, or is untyped without context,
    /// make the whole template unbindable.
    #[test]
    fn refuses_ordinals_untyped_strings_and_unknown_positions() {
        for (sql, params) in [
            ("SELECT v FROM t WHERE k = $1 ORDER BY $2", 2),
            ("SELECT v FROM t WHERE k = $1 GROUP BY $2", 2),
            ("SELECT $2, v FROM t WHERE k = $1", 2),
            ("SELECT v FROM t WHERE k = $1 AND f(v, $2)", 2),
            ("SELECT v FROM t WHERE k = $1 AND v = ($2)", 2),
        ] {
            let bindable = of(sql, params);
            assert!(bindable.allows(0, true), "{sql}");
            assert!(
                !bindable.allows(1, true) && !bindable.allows(1, false),
                "{sql}"
            );
        }
        // A string compared with something untyped stays text; a number is typed anyway.
        let untyped = of("SELECT v FROM t WHERE k = $1 AND $2 = lower(v)", 2);
        assert!(untyped.allows(1, true) && !untyped.allows(1, false));
        // The analysis must see every parameter it is told about.
        assert_eq!(of("SELECT v FROM t WHERE k = $1", 2), Bindable::default());
    }
}
