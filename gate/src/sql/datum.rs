//! Decoding, comparing and adding column values of scatter results, in both wire formats.
//!
//! Only what merging needs: ordering (ORDER BY, DISTINCT, GROUP BY) and exact addition (count,
//! sum). Types the gate cannot order or add correctly are refused with `0A000` naming the type
//! OID, never compared by their bytes.

use std::cmp::Ordering;

use super::error::{FEATURE_NOT_SUPPORTED, INTERNAL_ERROR, NUMERIC_VALUE_OUT_OF_RANGE, PlanError};

pub(crate) const BOOL: u32 = 16;
pub(crate) const BYTEA: u32 = 17;
pub(crate) const CHAR: u32 = 18;
pub(crate) const NAME: u32 = 19;
pub(crate) const INT8: u32 = 20;
pub(crate) const INT2: u32 = 21;
pub(crate) const INT4: u32 = 23;
pub(crate) const TEXT: u32 = 25;
pub(crate) const OID: u32 = 26;
pub(crate) const FLOAT4: u32 = 700;
pub(crate) const FLOAT8: u32 = 701;
pub(crate) const BPCHAR: u32 = 1042;
pub(crate) const VARCHAR: u32 = 1043;
pub(crate) const DATE: u32 = 1082;
pub(crate) const TIME: u32 = 1083;
pub(crate) const TIMESTAMP: u32 = 1114;
pub(crate) const TIMESTAMPTZ: u32 = 1184;
pub(crate) const NUMERIC: u32 = 1700;
pub(crate) const UUID: u32 = 2950;

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// A decoded value, comparable with values of the same column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Datum<'a> {
    Bool(bool),
    Int(i64),
    Float(f64),
    Numeric(Numeric),
    /// Compared byte-wise (text in the C collation, uuid, bytea, char).
    Bytes(&'a [u8]),
    /// Days (date) or microseconds (time, timestamp, timestamptz as UTC); i128 because
    /// PostgreSQL's range (to 294276 AD) overflows i64 microseconds counted from 1970.
    Instant(i128),
}

impl Datum<'_> {
    /// Total order within one column: PostgreSQL's (NaN sorts above every number).
    pub(crate) fn compare(&self, other: &Datum<'_>) -> Ordering {
        match (self, other) {
            (Datum::Bool(a), Datum::Bool(b)) => a.cmp(b),
            (Datum::Int(a), Datum::Int(b)) => a.cmp(b),
            (Datum::Float(a), Datum::Float(b)) => compare_floats(*a, *b),
            (Datum::Numeric(a), Datum::Numeric(b)) => a.compare(b),
            (Datum::Bytes(a), Datum::Bytes(b)) => a.cmp(b),
            (Datum::Instant(a), Datum::Instant(b)) => a.cmp(b),
            // One column always decodes to one variant.
            _ => Ordering::Equal,
        }
    }
}

/// PostgreSQL float order: -0 = 0, NaN equal to itself and greater than everything else.
fn compare_floats(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

fn unsupported_type(type_oid: u32, what: &str) -> PlanError {
    PlanError::new(
        FEATURE_NOT_SUPPORTED,
        format!("cannot {what} values of type OID {type_oid} across shards"),
    )
    .with_hint("restrict the query to one sharding key, or cast the column to text, bigint, numeric or timestamptz")
}

fn malformed(type_oid: u32, why: &str) -> PlanError {
    PlanError::new(
        INTERNAL_ERROR,
        format!("a shard returned a malformed value of type OID {type_oid}: {why}"),
    )
}

fn text_of(bytes: &[u8], type_oid: u32) -> Result<&str, PlanError> {
    std::str::from_utf8(bytes).map_err(|_| malformed(type_oid, "not UTF-8"))
}

fn be_bytes<const N: usize>(bytes: &[u8], type_oid: u32) -> Result<[u8; N], PlanError> {
    bytes
        .try_into()
        .map_err(|_| malformed(type_oid, "wrong binary length"))
}

/// Decodes a non-NULL value of `type_oid` in `format` (0 text, 1 binary) for comparison.
pub(crate) fn decode(bytes: &[u8], type_oid: u32, format: i16) -> Result<Datum<'_>, PlanError> {
    let binary = format == 1;
    match type_oid {
        BOOL => match (binary, bytes) {
            (false, b"t") | (true, [1]) => Ok(Datum::Bool(true)),
            (false, b"f") | (true, [0]) => Ok(Datum::Bool(false)),
            _ => Err(malformed(type_oid, "not a boolean")),
        },
        INT2 | INT4 | INT8 | OID => Ok(Datum::Int(decode_integer(bytes, type_oid, binary)?)),
        FLOAT4 | FLOAT8 => Ok(Datum::Float(decode_float(bytes, type_oid, binary)?)),
        NUMERIC => Ok(Datum::Numeric(if binary {
            Numeric::from_binary(bytes)?
        } else {
            Numeric::parse(text_of(bytes, type_oid)?)
                .ok_or_else(|| malformed(type_oid, "not a numeric"))?
        })),
        TEXT | VARCHAR | NAME | CHAR | UUID => Ok(Datum::Bytes(bytes)),
        // bpchar ignores trailing spaces when comparing.
        BPCHAR => {
            let end = bytes
                .iter()
                .rposition(|byte| *byte != b' ')
                .map_or(0, |position| position + 1);
            Ok(Datum::Bytes(&bytes[..end]))
        }
        BYTEA => {
            if binary {
                Ok(Datum::Bytes(bytes))
            } else if bytes.starts_with(b"\\x") {
                // Hex digits of each byte keep the byte order (lower-case, fixed width).
                Ok(Datum::Bytes(&bytes[2..]))
            } else {
                Err(unsupported_type(type_oid, "compare escape-format bytea")
                    .with_hint("set bytea_output = 'hex'"))
            }
        }
        DATE => {
            if binary {
                Ok(Datum::Instant(i128::from(i32::from_be_bytes(be_bytes(
                    bytes, type_oid,
                )?))))
            } else {
                parse_date_text(text_of(bytes, type_oid)?)
                    .map(Datum::Instant)
                    .ok_or_else(|| datestyle_error(type_oid))
            }
        }
        TIME | TIMESTAMP | TIMESTAMPTZ => {
            if binary {
                Ok(Datum::Instant(i128::from(i64::from_be_bytes(be_bytes(
                    bytes, type_oid,
                )?))))
            } else {
                let text = text_of(bytes, type_oid)?;
                let parsed = match type_oid {
                    TIME => parse_time(text).map(|(micros, _)| i128::from(micros)),
                    _ => parse_timestamp_text(text, type_oid == TIMESTAMPTZ),
                };
                parsed
                    .map(Datum::Instant)
                    .ok_or_else(|| datestyle_error(type_oid))
            }
        }
        other => Err(unsupported_type(other, "compare")),
    }
}

fn datestyle_error(type_oid: u32) -> PlanError {
    PlanError::unsupported(format!(
        "cannot compare values of type OID {type_oid} across shards in this DateStyle"
    ))
    .with_hint("SET DateStyle = 'ISO', or request binary results")
}

fn decode_integer(bytes: &[u8], type_oid: u32, binary: bool) -> Result<i64, PlanError> {
    if binary {
        return match (type_oid, bytes.len()) {
            (INT2, 2) => Ok(i64::from(i16::from_be_bytes(be_bytes(bytes, type_oid)?))),
            (INT4, 4) => Ok(i64::from(i32::from_be_bytes(be_bytes(bytes, type_oid)?))),
            (OID, 4) => Ok(i64::from(u32::from_be_bytes(be_bytes(bytes, type_oid)?))),
            (INT8, 8) => Ok(i64::from_be_bytes(be_bytes(bytes, type_oid)?)),
            _ => Err(malformed(type_oid, "wrong binary length")),
        };
    }
    text_of(bytes, type_oid)?
        .parse()
        .map_err(|_| malformed(type_oid, "not an integer"))
}

fn decode_float(bytes: &[u8], type_oid: u32, binary: bool) -> Result<f64, PlanError> {
    if binary {
        return match bytes.len() {
            4 => Ok(f64::from(f32::from_be_bytes(be_bytes(bytes, type_oid)?))),
            8 => Ok(f64::from_be_bytes(be_bytes(bytes, type_oid)?)),
            _ => Err(malformed(type_oid, "wrong binary length")),
        };
    }
    match text_of(bytes, type_oid)? {
        "NaN" => Ok(f64::NAN),
        "Infinity" => Ok(f64::INFINITY),
        "-Infinity" => Ok(f64::NEG_INFINITY),
        text => text.parse().map_err(|_| malformed(type_oid, "not a float")),
    }
}

/// Sums values of a count/sum column; `None` when every value is NULL.
pub(crate) fn sum_values(
    values: &[&[u8]],
    type_oid: u32,
    format: i16,
) -> Result<Option<Vec<u8>>, PlanError> {
    if values.is_empty() {
        return Ok(None);
    }
    let binary = format == 1;
    match type_oid {
        INT2 | INT4 | INT8 => {
            let mut total: i128 = 0;
            for value in values {
                total += i128::from(decode_integer(value, type_oid, binary)?);
            }
            let (minimum, maximum, name) = match type_oid {
                INT2 => (i128::from(i16::MIN), i128::from(i16::MAX), "smallint"),
                INT4 => (i128::from(i32::MIN), i128::from(i32::MAX), "integer"),
                _ => (i128::from(i64::MIN), i128::from(i64::MAX), "bigint"),
            };
            if total < minimum || total > maximum {
                return Err(PlanError::new(
                    NUMERIC_VALUE_OUT_OF_RANGE,
                    format!("{name} out of range"),
                ));
            }
            // The range check above makes these conversions lossless.
            let total = total as i64;
            Ok(Some(if binary {
                match type_oid {
                    INT2 => (total as i16).to_be_bytes().to_vec(),
                    INT4 => (total as i32).to_be_bytes().to_vec(),
                    _ => total.to_be_bytes().to_vec(),
                }
            } else {
                total.to_string().into_bytes()
            }))
        }
        FLOAT4 | FLOAT8 => {
            let mut total = 0f64;
            for value in values {
                total += decode_float(value, type_oid, binary)?;
            }
            Ok(Some(match (type_oid, binary) {
                (FLOAT4, true) => (total as f32).to_be_bytes().to_vec(),
                (_, true) => total.to_be_bytes().to_vec(),
                (FLOAT4, false) => format_float(f64::from(total as f32), true).into_bytes(),
                (_, false) => format_float(total, false).into_bytes(),
            }))
        }
        NUMERIC => {
            let mut total = Numeric::zero();
            for value in values {
                let value = if binary {
                    Numeric::from_binary(value)?
                } else {
                    Numeric::parse(text_of(value, type_oid)?)
                        .ok_or_else(|| malformed(type_oid, "not a numeric"))?
                };
                total = total.add(&value);
            }
            Ok(Some(if binary {
                total.to_binary()
            } else {
                total.to_string().into_bytes()
            }))
        }
        other => Err(unsupported_type(other, "add")),
    }
}

/// PostgreSQL's float output (shortest exact digits; exponent form outside [1e-4, 1e15) for
/// float8 and [1e-4, 1e6) for float4).
pub(crate) fn format_float(value: f64, single: bool) -> String {
    if value.is_nan() {
        return "NaN".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    if value == 0.0 {
        return if value.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let scientific = if single {
        format!("{:e}", value as f32)
    } else {
        format!("{value:e}")
    };
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let limit = if single { 6 } else { 15 };
    let mut output = String::new();
    if negative {
        output.push('-');
    }
    if exponent < -4 || exponent >= limit {
        output.push_str(&digits[..1]);
        if digits.len() > 1 {
            output.push('.');
            output.push_str(&digits[1..]);
        }
        output.push('e');
        output.push(if exponent < 0 { '-' } else { '+' });
        output.push_str(&format!("{:02}", exponent.abs()));
    } else if exponent < 0 {
        output.push_str("0.");
        for _ in 0..(-exponent - 1) {
            output.push('0');
        }
        output.push_str(&digits);
    } else {
        let integer_digits = (exponent + 1) as usize;
        if digits.len() <= integer_digits {
            output.push_str(&digits);
            for _ in digits.len()..integer_digits {
                output.push('0');
            }
        } else {
            output.push_str(&digits[..integer_digits]);
            output.push('.');
            output.push_str(&digits[integer_digits..]);
        }
    }
    output
}

// ----- numeric ----------------------------------------------------------------------------

/// An exact decimal as PostgreSQL's numeric: value = ±(integer digits).(fraction digits), with
/// the display scale (digits after the point) kept as PostgreSQL keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Numeric {
    NaN,
    PositiveInfinity,
    NegativeInfinity,
    Finite {
        negative: bool,
        /// Decimal digits before the point, most significant first, no leading zeros.
        integer: Vec<u8>,
        /// Decimal digits after the point; exactly `scale` of them.
        fraction: Vec<u8>,
    },
}

impl Numeric {
    pub(crate) fn zero() -> Self {
        Numeric::Finite {
            negative: false,
            integer: Vec::new(),
            fraction: Vec::new(),
        }
    }

    /// Parses PostgreSQL's numeric text output (also accepts a leading `+` and an exponent-free
    /// decimal).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "NaN" => return Some(Numeric::NaN),
            "Infinity" => return Some(Numeric::PositiveInfinity),
            "-Infinity" => return Some(Numeric::NegativeInfinity),
            _ => {}
        }
        let (negative, unsigned) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        if (integer.is_empty() && fraction.is_empty())
            || !integer.bytes().all(|b| b.is_ascii_digit())
            || !fraction.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let integer: Vec<u8> = integer
            .bytes()
            .map(|b| b - b'0')
            .skip_while(|digit| *digit == 0)
            .collect();
        let fraction: Vec<u8> = fraction.bytes().map(|b| b - b'0').collect();
        Some(Numeric::finite(negative, integer, fraction))
    }

    fn finite(negative: bool, integer: Vec<u8>, fraction: Vec<u8>) -> Self {
        let is_zero = integer
            .iter()
            .chain(fraction.iter())
            .all(|digit| *digit == 0);
        Numeric::Finite {
            negative: negative && !is_zero,
            integer,
            fraction,
        }
    }

    /// Decodes the binary (`numeric_send`) form: base-10000 digits with a weight and scale.
    pub(crate) fn from_binary(bytes: &[u8]) -> Result<Self, PlanError> {
        let bad = || malformed(NUMERIC, "bad binary numeric");
        let field = |index: usize| -> Result<[u8; 2], PlanError> {
            bytes
                .get(index * 2..index * 2 + 2)
                .and_then(|slice| slice.try_into().ok())
                .ok_or_else(bad)
        };
        let digit_count = usize::try_from(i16::from_be_bytes(field(0)?)).map_err(|_| bad())?;
        let weight = i32::from(i16::from_be_bytes(field(1)?));
        let sign = u16::from_be_bytes(field(2)?);
        let scale = usize::from(u16::from_be_bytes(field(3)?));
        match sign {
            0xC000 => return Ok(Numeric::NaN),
            0xD000 => return Ok(Numeric::PositiveInfinity),
            0xF000 => return Ok(Numeric::NegativeInfinity),
            0x0000 | 0x4000 => {}
            _ => return Err(bad()),
        }
        if bytes.len() != 8 + digit_count * 2 {
            return Err(bad());
        }
        let mut groups = Vec::with_capacity(digit_count);
        for index in 0..digit_count {
            let group = i16::from_be_bytes(field(4 + index)?);
            if !(0..10_000).contains(&group) {
                return Err(bad());
            }
            groups.push(group as u16);
        }
        // Group i has weight `weight - i`: weights >= 0 are integer groups.
        let mut integer = Vec::new();
        let mut fraction = Vec::new();
        if weight >= 0 {
            for position in 0..=weight {
                let group = groups.get(position as usize).copied().unwrap_or(0);
                integer.extend_from_slice(&group_digits(group));
            }
        }
        for (index, group) in groups.iter().enumerate() {
            let group_weight = weight - index as i32;
            if group_weight < 0 {
                // Fill missing fraction groups between the point and this group with zeros.
                let start = (-group_weight - 1) as usize * 4;
                while fraction.len() < start {
                    fraction.push(0);
                }
                fraction.extend_from_slice(&group_digits(*group));
            }
        }
        fraction.resize(scale, 0);
        let integer: Vec<u8> = integer
            .into_iter()
            .skip_while(|digit| *digit == 0)
            .collect();
        Ok(Numeric::finite(sign == 0x4000, integer, fraction))
    }

    /// Encodes the binary (`numeric_send`) form.
    pub(crate) fn to_binary(&self) -> Vec<u8> {
        let header = |digits: i16, weight: i16, sign: u16, scale: u16| {
            let mut out = Vec::with_capacity(8);
            out.extend_from_slice(&digits.to_be_bytes());
            out.extend_from_slice(&weight.to_be_bytes());
            out.extend_from_slice(&sign.to_be_bytes());
            out.extend_from_slice(&scale.to_be_bytes());
            out
        };
        let (negative, integer, fraction) = match self {
            Numeric::NaN => return header(0, 0, 0xC000, 0),
            Numeric::PositiveInfinity => return header(0, 0, 0xD000, 0),
            Numeric::NegativeInfinity => return header(0, 0, 0xF000, 0),
            Numeric::Finite {
                negative,
                integer,
                fraction,
            } => (*negative, integer, fraction),
        };
        let scale = fraction.len() as u16;
        // Left-pad the integer and right-pad the fraction to whole base-10000 groups.
        let integer_groups = integer.len().div_ceil(4);
        let mut digits = vec![0u8; integer_groups * 4 - integer.len()];
        digits.extend_from_slice(integer);
        digits.extend_from_slice(fraction);
        digits.resize(digits.len().div_ceil(4) * 4, 0);
        let mut groups: Vec<i16> = digits
            .chunks(4)
            .map(|chunk| {
                chunk
                    .iter()
                    .fold(0i16, |acc, digit| acc * 10 + i16::from(*digit))
            })
            .collect();
        let mut weight = integer_groups as i32 - 1;
        while groups.first() == Some(&0) {
            groups.remove(0);
            weight -= 1;
        }
        while groups.last() == Some(&0) {
            groups.pop();
        }
        if groups.is_empty() {
            weight = 0;
        }
        let mut out = header(
            groups.len() as i16,
            weight as i16,
            if negative { 0x4000 } else { 0 },
            scale,
        );
        for group in groups {
            out.extend_from_slice(&group.to_be_bytes());
        }
        out
    }

    /// PostgreSQL order: -Infinity < finite < Infinity < NaN.
    pub(crate) fn compare(&self, other: &Numeric) -> Ordering {
        fn rank(value: &Numeric) -> u8 {
            match value {
                Numeric::NegativeInfinity => 0,
                Numeric::Finite { .. } => 1,
                Numeric::PositiveInfinity => 2,
                Numeric::NaN => 3,
            }
        }
        match (self, other) {
            (
                Numeric::Finite {
                    negative: a_negative,
                    integer: a_integer,
                    fraction: a_fraction,
                },
                Numeric::Finite {
                    negative: b_negative,
                    integer: b_integer,
                    fraction: b_fraction,
                },
            ) => match (a_negative, b_negative) {
                (false, true) => Ordering::Greater,
                (true, false) => Ordering::Less,
                (false, false) => compare_magnitude(a_integer, a_fraction, b_integer, b_fraction),
                (true, true) => compare_magnitude(b_integer, b_fraction, a_integer, a_fraction),
            },
            _ => rank(self).cmp(&rank(other)),
        }
    }

    /// Exact sum; the scale is the larger of the two, as in PostgreSQL.
    pub(crate) fn add(&self, other: &Numeric) -> Numeric {
        use Numeric::*;
        match (self, other) {
            (NaN, _) | (_, NaN) => NaN,
            (PositiveInfinity, NegativeInfinity) | (NegativeInfinity, PositiveInfinity) => NaN,
            (PositiveInfinity, _) | (_, PositiveInfinity) => PositiveInfinity,
            (NegativeInfinity, _) | (_, NegativeInfinity) => NegativeInfinity,
            (
                Finite {
                    negative: a_negative,
                    integer: a_integer,
                    fraction: a_fraction,
                },
                Finite {
                    negative: b_negative,
                    integer: b_integer,
                    fraction: b_fraction,
                },
            ) => {
                let scale = a_fraction.len().max(b_fraction.len());
                let width = a_integer.len().max(b_integer.len()) + 1;
                let a = aligned(a_integer, a_fraction, width, scale);
                let b = aligned(b_integer, b_fraction, width, scale);
                let (negative, digits) = if a_negative == b_negative {
                    (*a_negative, add_digits(&a, &b))
                } else if a >= b {
                    (*a_negative, subtract_digits(&a, &b))
                } else {
                    (*b_negative, subtract_digits(&b, &a))
                };
                let split = digits.len() - scale;
                let integer: Vec<u8> = digits[..split]
                    .iter()
                    .copied()
                    .skip_while(|digit| *digit == 0)
                    .collect();
                Numeric::finite(negative, integer, digits[split..].to_vec())
            }
        }
    }
}

impl std::fmt::Display for Numeric {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Numeric::NaN => formatter.write_str("NaN"),
            Numeric::PositiveInfinity => formatter.write_str("Infinity"),
            Numeric::NegativeInfinity => formatter.write_str("-Infinity"),
            Numeric::Finite {
                negative,
                integer,
                fraction,
            } => {
                if *negative {
                    formatter.write_str("-")?;
                }
                if integer.is_empty() {
                    formatter.write_str("0")?;
                }
                for digit in integer {
                    write!(formatter, "{digit}")?;
                }
                if !fraction.is_empty() {
                    formatter.write_str(".")?;
                    for digit in fraction {
                        write!(formatter, "{digit}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

fn group_digits(group: u16) -> [u8; 4] {
    [
        (group / 1000) as u8,
        (group / 100 % 10) as u8,
        (group / 10 % 10) as u8,
        (group % 10) as u8,
    ]
}

/// Digits of integer.fraction, left-padded to `width` integer digits and right-padded to
/// `scale` fraction digits, so equal-length vectors compare and add position by position.
fn aligned(integer: &[u8], fraction: &[u8], width: usize, scale: usize) -> Vec<u8> {
    let mut digits = vec![0u8; width - integer.len()];
    digits.extend_from_slice(integer);
    digits.extend_from_slice(fraction);
    digits.resize(width + scale, 0);
    digits
}

fn compare_magnitude(
    a_integer: &[u8],
    a_fraction: &[u8],
    b_integer: &[u8],
    b_fraction: &[u8],
) -> Ordering {
    let width = a_integer.len().max(b_integer.len());
    let scale = a_fraction.len().max(b_fraction.len());
    aligned(a_integer, a_fraction, width, scale).cmp(&aligned(b_integer, b_fraction, width, scale))
}

fn add_digits(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut result = vec![0u8; a.len()];
    let mut carry = 0;
    for index in (0..a.len()).rev() {
        let sum = a[index] + b[index] + carry;
        result[index] = sum % 10;
        carry = sum / 10;
    }
    result
}

/// `a - b` for `a >= b`.
fn subtract_digits(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut result = vec![0u8; a.len()];
    let mut borrow = 0;
    for index in (0..a.len()).rev() {
        let mut difference = a[index] as i8 - b[index] as i8 - borrow;
        borrow = 0;
        if difference < 0 {
            difference += 10;
            borrow = 1;
        }
        result[index] = difference as u8;
    }
    result
}

// ----- dates and times (ISO DateStyle text) -----------------------------------------------------

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year numbering).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// `YYYY-MM-DD` (year may be longer than 4 digits) with the era applied (year Y BC is
/// astronomical year 1 - Y); returns (days since 1970-01-01, rest of the text).
fn parse_date_part(text: &str, bc: bool) -> Option<(i64, &str)> {
    let mut parts = text.splitn(3, '-');
    let year = ascii_number(parts.next()?.as_bytes())?;
    let month = ascii_number(parts.next()?.as_bytes())?;
    let rest = parts.next()?;
    let day_length = rest.bytes().take_while(u8::is_ascii_digit).count();
    if day_length != 2 || !(1..=12).contains(&month) {
        return None;
    }
    let day = ascii_number(&rest.as_bytes()[..2])?;
    // PostgreSQL's range is 4713 BC to 5874897 AD; anything far beyond is not a real value.
    if !(0..=10_000_000).contains(&year) {
        return None;
    }
    let year = if bc { 1 - year } else { year };
    Some((days_from_civil(year, month, day), &rest[2..]))
}

/// Value of a run of ASCII digits.
fn ascii_number(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() || bytes.len() > 18 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        bytes
            .iter()
            .fold(0, |acc, digit| acc * 10 + i64::from(digit - b'0')),
    )
}

/// `HH:MM:SS[.ffffff]`; returns (microseconds, rest).
fn parse_time(text: &str) -> Option<(i64, &str)> {
    let bytes = text.as_bytes();
    if bytes.len() < 8 || bytes[2] != b':' || bytes[5] != b':' {
        return None;
    }
    let hours = ascii_number(&bytes[0..2])?;
    let minutes = ascii_number(&bytes[3..5])?;
    let seconds = ascii_number(&bytes[6..8])?;
    let mut micros = ((hours * 60 + minutes) * 60 + seconds) * MICROS_PER_SECOND;
    // Bytes 0..8 are ASCII, so 8 is a character boundary.
    let mut rest = &text[8..];
    if let Some(after_point) = rest.strip_prefix('.') {
        let length = after_point.bytes().take_while(u8::is_ascii_digit).count();
        if length == 0 || length > 6 {
            return None;
        }
        let fraction = ascii_number(&after_point.as_bytes()[..length])?;
        micros += fraction * 10i64.pow(6 - length as u32);
        rest = &after_point[length..];
    }
    Some((micros, rest))
}

/// Applies a trailing " BC": year Y BC is astronomical year 1 - Y.
fn strip_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (text, false),
    }
}

fn parse_date_text(text: &str) -> Option<i128> {
    match text {
        "infinity" => return Some(i128::MAX),
        "-infinity" => return Some(i128::MIN),
        _ => {}
    }
    let (text, bc) = strip_bc(text);
    let (days, rest) = parse_date_part(text, bc)?;
    rest.is_empty().then_some(i128::from(days))
}

/// ISO timestamp[tz] text to microseconds since 1970-01-01 UTC.
fn parse_timestamp_text(text: &str, with_zone: bool) -> Option<i128> {
    match text {
        "infinity" => return Some(i128::MAX),
        "-infinity" => return Some(i128::MIN),
        _ => {}
    }
    let (text, bc) = strip_bc(text);
    let (date, time) = text.split_once(' ')?;
    let (days, date_rest) = parse_date_part(date, bc)?;
    if !date_rest.is_empty() {
        return None;
    }
    let (micros, rest) = parse_time(time)?;
    let offset_seconds = if with_zone {
        let sign = match rest.as_bytes().first()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let mut fields = rest[1..].split(':');
        let hours = ascii_number(fields.next()?.as_bytes())?;
        let minutes = fields
            .next()
            .map_or(Some(0), |f| ascii_number(f.as_bytes()))?;
        let seconds = fields
            .next()
            .map_or(Some(0), |f| ascii_number(f.as_bytes()))?;
        if hours > 99 || minutes > 59 || seconds > 59 {
            return None;
        }
        sign * (hours * 3600 + minutes * 60 + seconds)
    } else {
        if !rest.is_empty() {
            return None;
        }
        0
    };
    Some(
        i128::from(days) * i128::from(MICROS_PER_DAY) + i128::from(micros)
            - i128::from(offset_seconds) * i128::from(MICROS_PER_SECOND),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: numeric text parse/print keeps PostgreSQL's display scale and sign rules.
    #[test]
    fn numeric_text_round_trip() {
        for text in [
            "0",
            "1",
            "-1",
            "12.50",
            "0.001",
            "-0.5",
            "123456789012345678901234567890.123",
            "NaN",
            "Infinity",
            "-Infinity",
        ] {
            let value = Numeric::parse(text).expect("parses");
            assert_eq!(value.to_string(), text);
        }
        assert_eq!(
            Numeric::parse("-0.00").map(|n| n.to_string()),
            Some("0.00".to_string())
        );
        assert!(Numeric::parse("1e5").is_none());
        assert!(Numeric::parse("").is_none());
    }

    /// Goal: exact numeric addition carries, borrows, changes sign and keeps the larger scale.
    #[test]
    fn numeric_add_is_exact() {
        let sum = |a: &str, b: &str| {
            Numeric::parse(a)
                .expect("a")
                .add(&Numeric::parse(b).expect("b"))
                .to_string()
        };
        assert_eq!(sum("9999.99", "0.01"), "10000.00");
        assert_eq!(sum("1.5", "-2.25"), "-0.75");
        assert_eq!(sum("-1.5", "1.5"), "0.0");
        assert_eq!(sum("99999999999999999999", "1"), "100000000000000000000");
        assert_eq!(sum("Infinity", "5"), "Infinity");
        assert_eq!(sum("Infinity", "-Infinity"), "NaN");
    }

    /// Goal: binary numeric decodes and re-encodes to the bytes PostgreSQL sends.
    #[test]
    fn numeric_binary_round_trip() {
        // 12345.678 = groups [1, 2345, 6780], weight 1, scale 3.
        let bytes = [0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1a, 0x7c];
        let value = Numeric::from_binary(&bytes).expect("decodes");
        assert_eq!(value.to_string(), "12345.678");
        assert_eq!(value.to_binary(), bytes.to_vec());
        // 0.0001 = group [1], weight -1, scale 4.
        let small = [0, 1, 0xff, 0xff, 0, 0, 0, 4, 0, 1];
        let value = Numeric::from_binary(&small).expect("decodes");
        assert_eq!(value.to_string(), "0.0001");
        assert_eq!(value.to_binary(), small.to_vec());
        for text in ["0", "-7", "100000000", "0.00000001", "-123.40"] {
            let value = Numeric::parse(text).expect("parses");
            assert_eq!(
                Numeric::from_binary(&value.to_binary()).expect("round trip"),
                value
            );
        }
    }

    /// Goal: float output matches PostgreSQL 15 (values taken from a real server).
    #[test]
    fn float_output_matches_postgres() {
        assert_eq!(format_float(1e15, false), "1e+15");
        assert_eq!(format_float(1e14, false), "100000000000000");
        assert_eq!(format_float(123456.0, true), "123456");
        assert_eq!(format_float(1234567.0, true), "1.234567e+06");
        assert_eq!(format_float(0.0001, false), "0.0001");
        assert_eq!(format_float(0.00001, false), "1e-05");
        assert_eq!(format_float(1.5e300, false), "1.5e+300");
        assert_eq!(format_float(1.0 / 3.0, false), "0.3333333333333333");
        assert_eq!(
            format_float(123456789012345678.0, false),
            "1.2345678901234568e+17"
        );
        assert_eq!(format_float(-0.0, false), "-0");
        assert_eq!(format_float(f64::NAN, false), "NaN");
        assert_eq!(format_float(-2.5, false), "-2.5");
    }

    /// Goal: ISO timestamps with different UTC offsets and BC dates order by instant.
    #[test]
    fn timestamps_compare_by_instant() {
        let instant = |text: &str| parse_timestamp_text(text, true).expect(text);
        // 02:15+01 is 01:15 UTC; 02:30+02 is 00:30 UTC.
        assert!(instant("2024-10-27 02:15:00+01") > instant("2024-10-27 02:30:00+02"));
        assert!(instant("2024-01-01 00:00:00.5+00") > instant("2024-01-01 00:00:00+00"));
        assert!(instant("0044-03-15 12:00:00+00 BC") < instant("0001-01-01 00:00:00+00"));
        assert!(instant("10000-01-01 00:00:00+00") > instant("9999-12-31 23:59:59+00"));
        assert!(instant("infinity") > instant("294276-01-01 00:00:00+00"));
        assert_eq!(parse_date_text("1970-01-02"), Some(1));
        assert_eq!(parse_date_text("2000-01-01"), Some(10_957));
        assert!(parse_date_text("01/02/2000").is_none());
        assert_eq!(
            parse_time("12:00:00.25").map(|(m, _)| m),
            Some(43_200_250_000)
        );
    }
}
