//! Sharding values: turning SQL literals and parameter bytes into the values the hash vindex
//! takes, with PostgreSQL's input rules (so the gate hashes exactly what the shard stores).

use sqlparser::ast::{DataType, Expr, UnaryOperator, Value};

use super::error::{INVALID_TEXT_REPRESENTATION, NUMERIC_VALUE_OUT_OF_RANGE, PlanError};
use super::plan::KeyValue;
use super::vschema::HashFamily;

/// How a literal meets the sharding column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyUse {
    /// `column = literal` in a WHERE clause: PostgreSQL compares, so a non-integral number equals
    /// no integer row (matches nothing) and an unparsable form just means "no key".
    Compare,
    /// The value stored by an INSERT: it must be exactly computable or the INSERT is refused.
    Assign,
}

/// The sharding value of `expr` for a column of `family`, or `None` when `expr` is not a
/// constant or parameter the gate can evaluate (the statement then cannot be keyed by it).
pub(crate) fn key_value(
    expr: &Expr,
    family: HashFamily,
    key_use: KeyUse,
) -> Result<Option<KeyValue>, PlanError> {
    match expr {
        Expr::Nested(inner) => key_value(inner, family, key_use),
        Expr::Value(value) => literal_key(&value.value, family, key_use, false),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr: inner,
        } => match inner.as_ref() {
            Expr::Value(value) => literal_key(&value.value, family, key_use, true),
            _ => Ok(None),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr: inner,
        } => key_value(inner, family, key_use),
        Expr::Cast {
            expr: inner,
            data_type,
            ..
        } => {
            if type_family(data_type) == Some(family) {
                key_value(inner, family, key_use)
            } else {
                Ok(None)
            }
        }
        Expr::TypedString(typed) => {
            if type_family(&typed.data_type) != Some(family) {
                return Ok(None);
            }
            match string_content(&typed.value.value) {
                Some(text) => text_key(text, family).map(Some),
                None => Ok(None),
            }
        }
        _ => Ok(None),
    }
}

/// Hash family of a cast target type (`::bigint`, `::text`, `::uuid`).
pub(crate) fn type_family(data_type: &DataType) -> Option<HashFamily> {
    HashFamily::for_sql_type(&data_type.to_string())
}

/// The 0-based index of a `$n` placeholder.
pub(crate) fn placeholder_index(expr: &Expr) -> Option<usize> {
    match expr {
        Expr::Value(value) => match &value.value {
            Value::Placeholder(text) => text
                .strip_prefix('$')
                .and_then(|digits| digits.parse::<usize>().ok())
                .and_then(|number| number.checked_sub(1)),
            _ => None,
        },
        Expr::Nested(inner) => placeholder_index(inner),
        _ => None,
    }
}

/// Content of a string literal of any quoting style.
pub(crate) fn string_content(value: &Value) -> Option<&str> {
    match value {
        Value::SingleQuotedString(text)
        | Value::EscapedStringLiteral(text)
        | Value::UnicodeStringLiteral(text)
        | Value::NationalStringLiteral(text) => Some(text),
        Value::DollarQuotedString(dollar) => Some(&dollar.value),
        _ => None,
    }
}

fn literal_key(
    value: &Value,
    family: HashFamily,
    key_use: KeyUse,
    negative: bool,
) -> Result<Option<KeyValue>, PlanError> {
    if let Value::Number(digits, _) = value {
        return number_key(digits, negative, family, key_use);
    }
    if negative {
        return Ok(None);
    }
    match value {
        Value::Null => Ok(Some(KeyValue::Null)),
        Value::Placeholder(_) => {
            Ok(placeholder_index(&Expr::value(value.clone())).map(KeyValue::Param))
        }
        other => match string_content(other) {
            // An untyped string literal takes the column's type, with that type's input rules.
            Some(text) => text_key(text, family).map(Some),
            None => Ok(None),
        },
    }
}

/// A numeric literal (digits as written, sign separate) against a column of `family`.
fn number_key(
    digits: &str,
    negative: bool,
    family: HashFamily,
    key_use: KeyUse,
) -> Result<Option<KeyValue>, PlanError> {
    let shown = if negative {
        format!("-{digits}")
    } else {
        digits.to_string()
    };
    // Integral value of the literal, if it has one: "12", "12.000".
    let integral: Option<&str> = match digits.split_once('.') {
        None if !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit()) => {
            Some(digits)
        }
        Some((whole, fraction))
            if !whole.is_empty()
                && whole.bytes().all(|byte| byte.is_ascii_digit())
                && fraction.bytes().all(|byte| byte == b'0') =>
        {
            Some(whole)
        }
        _ => None,
    };
    let is_plain_integer = !digits.contains('.') && integral.is_some();
    let value: Option<i64> = integral.and_then(|whole| {
        let magnitude: i128 = whole.parse().ok()?;
        let signed = if negative { -magnitude } else { magnitude };
        i64::try_from(signed).ok()
    });
    match family {
        HashFamily::Int => match (value, key_use) {
            (Some(value), _) => Ok(Some(KeyValue::Int(value))),
            // `bigint_column = 1.5` or `= 1e30` is a numeric comparison no integer row satisfies.
            (None, KeyUse::Compare) if integral.is_some() || is_fractional_decimal(digits) => {
                Ok(Some(KeyValue::Null))
            }
            (None, KeyUse::Compare) => Ok(None),
            (None, KeyUse::Assign) if integral.is_some() => Err(PlanError::new(
                NUMERIC_VALUE_OUT_OF_RANGE,
                format!("value {shown} is out of range for type bigint"),
            )),
            (None, KeyUse::Assign) => Err(PlanError::unsupported(format!(
                "sharding value {shown} is not an integer"
            ))
            .with_hint("write the sharding value as an integer literal or a parameter")),
        },
        // An integer assigned to a text column is stored in its canonical output form.
        HashFamily::Text => match (value, key_use, is_plain_integer) {
            (Some(value), KeyUse::Assign, true) => Ok(Some(KeyValue::Text(value.to_string()))),
            (_, KeyUse::Compare, _) => Ok(None),
            _ => Err(PlanError::unsupported(format!(
                "cannot compute the text sharding value of the number {shown}"
            ))
            .with_hint("write the sharding value as a string literal")),
        },
        HashFamily::Uuid => match key_use {
            KeyUse::Compare => Ok(None),
            KeyUse::Assign => Err(PlanError::new(
                INVALID_TEXT_REPRESENTATION,
                format!("invalid input syntax for type uuid: \"{shown}\""),
            )),
        },
    }
}

/// `digits.digits` with a non-zero fraction.
fn is_fractional_decimal(digits: &str) -> bool {
    match digits.split_once('.') {
        Some((whole, fraction)) => {
            whole.bytes().all(|byte| byte.is_ascii_digit())
                && !fraction.is_empty()
                && fraction.bytes().all(|byte| byte.is_ascii_digit())
        }
        None => false,
    }
}

/// A string's value for a column of `family` (PostgreSQL input function rules).
pub(crate) fn text_key(text: &str, family: HashFamily) -> Result<KeyValue, PlanError> {
    match family {
        HashFamily::Int => parse_int8(text.as_bytes()).map(KeyValue::Int),
        HashFamily::Text => Ok(KeyValue::Text(text.to_string())),
        HashFamily::Uuid => parse_uuid(text.as_bytes()).map(KeyValue::Uuid),
    }
}

/// `int8in`: optional surrounding whitespace, optional sign, decimal digits.
pub(crate) fn parse_int8(bytes: &[u8]) -> Result<i64, PlanError> {
    let invalid = || {
        PlanError::new(
            INVALID_TEXT_REPRESENTATION,
            format!(
                "invalid input syntax for type bigint: \"{}\"",
                String::from_utf8_lossy(bytes)
            ),
        )
    };
    let text = std::str::from_utf8(bytes).map_err(|_| invalid())?;
    let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let (negative, digits) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid());
    }
    let mut value: i64 = 0;
    for byte in digits.bytes() {
        let digit = i64::from(byte - b'0');
        // Accumulate negatively so i64::MIN parses.
        value = value
            .checked_mul(10)
            .and_then(|value| value.checked_sub(digit))
            .ok_or_else(|| {
                PlanError::new(
                    NUMERIC_VALUE_OUT_OF_RANGE,
                    format!("value \"{trimmed}\" is out of range for type bigint"),
                )
            })?;
    }
    if negative {
        Ok(value)
    } else {
        value.checked_neg().ok_or_else(|| {
            PlanError::new(
                NUMERIC_VALUE_OUT_OF_RANGE,
                format!("value \"{trimmed}\" is out of range for type bigint"),
            )
        })
    }
}

/// `uuid_in`: 32 hex digits, a hyphen allowed after any group of four, optional braces.
pub(crate) fn parse_uuid(bytes: &[u8]) -> Result<[u8; 16], PlanError> {
    let invalid = || {
        PlanError::new(
            INVALID_TEXT_REPRESENTATION,
            format!(
                "invalid input syntax for type uuid: \"{}\"",
                String::from_utf8_lossy(bytes)
            ),
        )
    };
    let hex = |byte: u8| -> Option<u8> {
        match byte {
            b'0'..=b'9' => Some(byte - b'0'),
            b'a'..=b'f' => Some(byte - b'a' + 10),
            b'A'..=b'F' => Some(byte - b'A' + 10),
            _ => None,
        }
    };
    let mut position = 0;
    let braces = bytes.first() == Some(&b'{');
    if braces {
        position = 1;
    }
    let mut uuid = [0u8; 16];
    for (index, slot) in uuid.iter_mut().enumerate() {
        let high = bytes
            .get(position)
            .copied()
            .and_then(hex)
            .ok_or_else(invalid)?;
        let low = bytes
            .get(position + 1)
            .copied()
            .and_then(hex)
            .ok_or_else(invalid)?;
        *slot = (high << 4) | low;
        position += 2;
        if bytes.get(position) == Some(&b'-') && index % 2 == 1 && index < 15 {
            position += 1;
        }
    }
    if braces {
        if bytes.get(position) != Some(&b'}') {
            return Err(invalid());
        }
        position += 1;
    }
    if position != bytes.len() {
        return Err(invalid());
    }
    Ok(uuid)
}

/// Elements of a PostgreSQL array literal in text form (`{1,2,NULL,"a b"}`), flattened across
/// dimensions; `None` is a NULL element. Dimension decorations (`[1:2]={...}`) are refused.
pub(crate) fn parse_text_array(text: &str) -> Result<Vec<Option<String>>, PlanError> {
    let invalid = |why: &str| {
        PlanError::new(
            INVALID_TEXT_REPRESENTATION,
            format!("malformed array literal: \"{text}\""),
        )
        .with_detail(why.to_string())
    };
    let bytes = text.trim().as_bytes();
    if bytes.first() != Some(&b'{') {
        return Err(invalid("array value must start with \"{\""));
    }
    let mut elements = Vec::new();
    let mut depth = 0usize;
    let mut position = 0;
    // Expecting an element (or a closing brace right after an opening one).
    let mut expect_element = true;
    while position < bytes.len() {
        let byte = bytes[position];
        match byte {
            b'{' => {
                depth += 1;
                position += 1;
                expect_element = true;
            }
            b'}' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| invalid("unbalanced braces"))?;
                position += 1;
                expect_element = false;
                if depth == 0 {
                    break;
                }
            }
            b',' => {
                position += 1;
                expect_element = true;
            }
            byte if byte.is_ascii_whitespace() => position += 1,
            b'"' => {
                if !expect_element {
                    return Err(invalid("unexpected quote"));
                }
                position += 1;
                let mut element = Vec::new();
                loop {
                    match bytes.get(position) {
                        None => return Err(invalid("unterminated quoted element")),
                        Some(b'"') => {
                            position += 1;
                            break;
                        }
                        Some(b'\\') => {
                            let escaped = bytes
                                .get(position + 1)
                                .ok_or_else(|| invalid("unterminated escape"))?;
                            element.push(*escaped);
                            position += 2;
                        }
                        Some(other) => {
                            element.push(*other);
                            position += 1;
                        }
                    }
                }
                let element =
                    String::from_utf8(element).map_err(|_| invalid("element is not UTF-8"))?;
                elements.push(Some(element));
                expect_element = false;
            }
            _ => {
                if !expect_element || depth == 0 {
                    return Err(invalid("unexpected character"));
                }
                let start = position;
                let mut element = Vec::new();
                while let Some(&next) = bytes.get(position) {
                    if next == b',' || next == b'}' || next == b'{' || next == b'"' {
                        break;
                    }
                    if next == b'\\' {
                        let escaped = bytes
                            .get(position + 1)
                            .ok_or_else(|| invalid("unterminated escape"))?;
                        element.push(*escaped);
                        position += 2;
                        continue;
                    }
                    element.push(next);
                    position += 1;
                }
                let raw = &bytes[start..position];
                let element =
                    String::from_utf8(element).map_err(|_| invalid("element is not UTF-8"))?;
                let trimmed = element.trim_end().to_string();
                if raw.eq_ignore_ascii_case(b"null") || trimmed.eq_ignore_ascii_case("null") {
                    elements.push(None);
                } else {
                    elements.push(Some(trimmed));
                }
                expect_element = false;
            }
        }
    }
    if depth != 0
        || bytes[position..]
            .iter()
            .any(|byte| !byte.is_ascii_whitespace())
    {
        return Err(invalid("junk after closing right brace"));
    }
    Ok(elements)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: int8 text input follows PostgreSQL (whitespace, signs, extremes, junk rejected).
    #[test]
    fn parse_int8_follows_postgres_rules() {
        assert_eq!(parse_int8(b" 42 ").ok(), Some(42));
        assert_eq!(parse_int8(b"+7").ok(), Some(7));
        assert_eq!(parse_int8(b"-9223372036854775808").ok(), Some(i64::MIN));
        assert_eq!(parse_int8(b"9223372036854775807").ok(), Some(i64::MAX));
        assert_eq!(
            parse_int8(b"9223372036854775808").map_err(|e| e.sqlstate),
            Err(NUMERIC_VALUE_OUT_OF_RANGE)
        );
        for bad in [&b"abc"[..], b"", b"1.5", b"- 1", b"1e3", b"\xff"] {
            assert_eq!(
                parse_int8(bad).map_err(|e| e.sqlstate),
                Err(INVALID_TEXT_REPRESENTATION),
                "{bad:?}"
            );
        }
    }

    /// Goal: uuid text input accepts PostgreSQL's forms and rejects malformed ones.
    #[test]
    fn parse_uuid_accepts_postgres_forms() {
        let expected = [
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ];
        for good in [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
            "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
        ] {
            assert_eq!(parse_uuid(good.as_bytes()).ok(), Some(expected), "{good}");
        }
        for bad in [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
            "a0eebc9-99c0b-4ef8-bb6d-6bb9bd380a11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
            " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ] {
            assert!(parse_uuid(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    /// Goal: array literals are split into elements with quoting, escapes and NULLs.
    #[test]
    fn parse_text_array_handles_quotes_nulls_and_nesting() {
        let elements = parse_text_array(r#"{1, "a,b" ,NULL,"NULL",x\,y,{3}}"#).expect("parses");
        assert_eq!(
            elements,
            vec![
                Some("1".to_string()),
                Some("a,b".to_string()),
                None,
                Some("NULL".to_string()),
                Some("x,y".to_string()),
                Some("3".to_string()),
            ]
        );
        assert_eq!(
            parse_text_array("{}").expect("empty"),
            Vec::<Option<String>>::new()
        );
        for bad in ["1,2", "{1,2", "{1}x", "[1:2]={1,2}"] {
            assert!(parse_text_array(bad).is_err(), "{bad}");
        }
    }
}
