//! THE routing function: a plan + bound parameter values + the shard map -> the shards to run on.
//!
//! Pure and allocation-free for the common single-key case, so that a cached plan routes a
//! repeated prepared statement without touching the heap.

use tessera_proto::vindex::{hash_int8, hash_text, hash_uuid};

use super::error::{
    INDETERMINATE_DATATYPE, INVALID_TEXT_REPRESENTATION, NOT_NULL_VIOLATION, PROTOCOL_VIOLATION,
    PlanError,
};
use super::keys::{parse_int8, parse_text_array, parse_uuid};
use super::plan::{KeyValue, StatementPlan, Target};
use super::shardmap::{ShardIndex, ShardMap};
use super::vschema::HashFamily;

const INT2_OID: u32 = 21;
const INT4_OID: u32 = 23;
const INT8_OID: u32 = 20;
const TEXT_OID: u32 = 25;
const VARCHAR_OID: u32 = 1043;
const NAME_OID: u32 = 19;
const UNKNOWN_OID: u32 = 705;
const UUID_OID: u32 = 2950;

/// Bound parameter values, as in a Bind message. `Default` = no parameters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Params<'a> {
    /// One entry per parameter; `None` = SQL NULL.
    pub values: &'a [Option<&'a [u8]>],
    /// Bind semantics: no entries = all text, one entry = applies to all, n entries = per
    /// parameter. 0 = text, 1 = binary.
    pub formats: &'a [i16],
    /// Parameter type OIDs from Parse (0 = unspecified); may be shorter than `values`.
    pub types: &'a [u32],
}

impl Params<'static> {
    /// No parameters (simple query protocol).
    pub const NONE: Params<'static> = Params {
        values: &[],
        formats: &[],
        types: &[],
    };
}

/// Where one execution of a statement runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Handled by the gate itself.
    Gate,
    /// Exactly one shard; results are relayed as they are.
    Single(ShardIndex),
    /// Several shards (sorted, deduplicated, at least 2); results merged with the plan's merge.
    Shards(Vec<ShardIndex>),
    /// Every shard of the map.
    All,
    /// An INSERT whose rows go to different shards: per shard, the 0-based VALUES row indexes
    /// (sorted by shard, at least 2 entries). Rewrite with [`super::rewrite::rewrite_insert`].
    InsertSplit(Vec<(ShardIndex, Vec<usize>)>),
}

/// Resolves `plan` for one execution.
///
/// - `Keys`: each value is hashed with the table's family; a NULL value matches nothing, so a
///   statement whose every key is NULL goes to shard 0 (and finds nothing there).
/// - Parameters are decoded per format and type: int2/int4/int8 by OID 21/23/20 or by binary
///   length 2/4/8 when the OID is 0; text/varchar/unknown as text; uuid 16 binary bytes or text.
/// - `KeysArrayParam` decodes a binary array or a text `{...}` literal.
/// - Values that do not fit the family fail with 22P02 (never a panic).
/// - `Scatter` -> `All` (or `Single(0)` when the map has one shard), `AllShards` -> `All`,
///   `AnyShard` -> `Single(0)`, `Gate` -> `Gate`.
/// - If the plan has a `multi_shard_error` and the route spans several shards, that error.
pub fn route(plan: &StatementPlan, params: &Params, shards: &ShardMap) -> Result<Route, PlanError> {
    let route = match &plan.target {
        Target::Gate => Route::Gate,
        Target::AnyShard => Route::Single(0),
        Target::AllShards => Route::All,
        Target::Scatter => {
            if shards.len() == 1 {
                Route::Single(0)
            } else {
                Route::All
            }
        }
        Target::Keys { family, values } => match values.as_slice() {
            [value] => Route::Single(
                value_keyspace_id(value, *family, params)?
                    .map_or(0, |keyspace_id| shards.shard_for(keyspace_id)),
            ),
            values => {
                let mut indexes = Vec::with_capacity(values.len());
                for value in values {
                    if let Some(keyspace_id) = value_keyspace_id(value, *family, params)? {
                        indexes.push(shards.shard_for(keyspace_id));
                    }
                }
                route_for_indexes(indexes)
            }
        },
        Target::KeysArrayParam { family, param } => {
            let indexes = match param_value(params, *param)? {
                None => Vec::new(),
                Some(bytes) => array_keyspace_ids(params, *param, bytes, *family)?
                    .into_iter()
                    .map(|keyspace_id| shards.shard_for(keyspace_id))
                    .collect(),
            };
            route_for_indexes(indexes)
        }
        Target::InsertRows { family, rows } => insert_route(rows, *family, params, shards)?,
    };
    if let Some(error) = &plan.multi_shard_error {
        let spans_several = match &route {
            Route::Shards(_) | Route::InsertSplit(_) => true,
            Route::All => shards.len() > 1,
            Route::Gate | Route::Single(_) => false,
        };
        if spans_several {
            return Err(error.clone());
        }
    }
    Ok(route)
}

fn route_for_indexes(mut indexes: Vec<ShardIndex>) -> Route {
    indexes.sort_unstable();
    indexes.dedup();
    match indexes.as_slice() {
        [] => Route::Single(0),
        [only] => Route::Single(*only),
        _ => Route::Shards(indexes),
    }
}

fn insert_route(
    rows: &[KeyValue],
    family: HashFamily,
    params: &Params,
    shards: &ShardMap,
) -> Result<Route, PlanError> {
    let shard_of_row = |row_index: usize, value: &KeyValue| -> Result<ShardIndex, PlanError> {
        match value_keyspace_id(value, family, params)? {
            Some(keyspace_id) => Ok(shards.shard_for(keyspace_id)),
            None => Err(PlanError::new(
                NOT_NULL_VIOLATION,
                format!(
                    "the sharding column of INSERT row {} is NULL; every row needs a sharding key to be placed on a shard",
                    row_index + 1
                ),
            )),
        }
    };
    let Some((first, rest)) = rows.split_first() else {
        return Ok(Route::Single(0));
    };
    let first_shard = shard_of_row(0, first)?;
    // Fast path: every row on the first row's shard needs no allocation.
    let mut split_at = None;
    for (offset, value) in rest.iter().enumerate() {
        let shard = shard_of_row(offset + 1, value)?;
        if shard != first_shard {
            split_at = Some(offset + 1);
            break;
        }
    }
    let Some(split_at) = split_at else {
        return Ok(Route::Single(first_shard));
    };
    let mut groups: Vec<(ShardIndex, Vec<usize>)> = vec![(first_shard, (0..split_at).collect())];
    for (row_index, value) in rows.iter().enumerate().skip(split_at) {
        let shard = shard_of_row(row_index, value)?;
        match groups.iter_mut().find(|(index, _)| *index == shard) {
            Some((_, members)) => members.push(row_index),
            None => groups.push((shard, vec![row_index])),
        }
    }
    groups.sort_unstable_by_key(|(shard, _)| *shard);
    Ok(Route::InsertSplit(groups))
}

/// Keyspace ID of a key value; `None` for NULL (matches no row).
fn value_keyspace_id(
    value: &KeyValue,
    family: HashFamily,
    params: &Params,
) -> Result<Option<u64>, PlanError> {
    match value {
        KeyValue::Int(value) => Ok(Some(hash_int8(*value))),
        KeyValue::Text(value) => Ok(Some(hash_text(value.as_bytes()))),
        KeyValue::Uuid(value) => Ok(Some(hash_uuid(value))),
        KeyValue::Null => Ok(None),
        KeyValue::Param(index) => match param_value(params, *index)? {
            None => Ok(None),
            Some(bytes) => {
                let binary = param_format(params, *index)? == 1;
                let type_oid = params.types.get(*index).copied().unwrap_or(0);
                bytes_keyspace_id(bytes, binary, type_oid, family).map(Some)
            }
        },
    }
}

fn param_value<'a>(params: &Params<'a>, index: usize) -> Result<Option<&'a [u8]>, PlanError> {
    params.values.get(index).copied().ok_or_else(|| {
        PlanError::new(
            PROTOCOL_VIOLATION,
            format!(
                "bind message supplies {} parameters, but the statement uses ${}",
                params.values.len(),
                index + 1
            ),
        )
    })
}

fn param_format(params: &Params, index: usize) -> Result<i16, PlanError> {
    let format = match params.formats {
        [] => 0,
        [all] => *all,
        formats => *formats.get(index).ok_or_else(|| {
            PlanError::new(
                PROTOCOL_VIOLATION,
                format!(
                    "bind message has {} parameter formats but {} parameters",
                    formats.len(),
                    params.values.len()
                ),
            )
        })?,
    };
    match format {
        0 | 1 => Ok(format),
        other => Err(PlanError::new(
            PROTOCOL_VIOLATION,
            format!("unsupported format code: {other}"),
        )),
    }
}

fn wrong_binary(type_oid: u32, family: HashFamily, length: usize) -> PlanError {
    PlanError::new(
        INDETERMINATE_DATATYPE,
        format!(
            "cannot route on a binary parameter of type OID {type_oid} ({length} bytes) for a {} sharding column",
            match family {
                HashFamily::Int => "integer",
                HashFamily::Text => "text",
                HashFamily::Uuid => "uuid",
            }
        ),
    )
    .with_hint("send the parameter in text format or with the column's type")
}

/// Keyspace ID of one parameter (or array element) value.
fn bytes_keyspace_id(
    bytes: &[u8],
    binary: bool,
    type_oid: u32,
    family: HashFamily,
) -> Result<u64, PlanError> {
    let textual = matches!(type_oid, TEXT_OID | VARCHAR_OID | UNKNOWN_OID | NAME_OID);
    match family {
        HashFamily::Int => {
            let value = if !binary || textual {
                parse_int8(bytes)?
            } else {
                match (type_oid, bytes.len()) {
                    (INT2_OID | 0, 2) => i64::from(i16::from_be_bytes([bytes[0], bytes[1]])),
                    (INT4_OID | 0, 4) => {
                        i64::from(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
                    }
                    (INT8_OID | 0, 8) => i64::from_be_bytes([
                        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6],
                        bytes[7],
                    ]),
                    _ => return Err(wrong_binary(type_oid, family, bytes.len())),
                }
            };
            Ok(hash_int8(value))
        }
        HashFamily::Text => {
            if binary && !textual && type_oid != 0 {
                return Err(wrong_binary(type_oid, family, bytes.len()));
            }
            Ok(hash_text(bytes))
        }
        HashFamily::Uuid => {
            let uuid = if !binary || textual {
                parse_uuid(bytes)?
            } else {
                match (type_oid, <[u8; 16]>::try_from(bytes)) {
                    (UUID_OID | 0, Ok(uuid)) => uuid,
                    _ => return Err(wrong_binary(type_oid, family, bytes.len())),
                }
            };
            Ok(hash_uuid(&uuid))
        }
    }
}

fn malformed_array(why: &str) -> PlanError {
    PlanError::new(
        INVALID_TEXT_REPRESENTATION,
        format!("malformed array parameter: {why}"),
    )
}

/// Keyspace IDs of the non-NULL elements of an array parameter.
fn array_keyspace_ids(
    params: &Params,
    index: usize,
    bytes: &[u8],
    family: HashFamily,
) -> Result<Vec<u64>, PlanError> {
    if param_format(params, index)? == 0 {
        let text = std::str::from_utf8(bytes).map_err(|_| malformed_array("not UTF-8"))?;
        return parse_text_array(text)?
            .into_iter()
            .flatten()
            .map(|element| bytes_keyspace_id(element.as_bytes(), false, 0, family))
            .collect();
    }
    // array_send: ndim, has-nulls flag, element type, (size, lower bound) per dimension, then
    // (length, bytes) per element with length -1 for NULL.
    let mut reader = Reader { bytes, position: 0 };
    let dimensions = reader.i32()?;
    let _has_nulls = reader.i32()?;
    let element_type = reader.i32()? as u32;
    if !(0..=6).contains(&dimensions) {
        return Err(malformed_array("bad number of dimensions"));
    }
    let mut count: usize = if dimensions == 0 { 0 } else { 1 };
    for _ in 0..dimensions {
        let size = usize::try_from(reader.i32()?).map_err(|_| malformed_array("negative size"))?;
        let _lower_bound = reader.i32()?;
        count = count
            .checked_mul(size)
            .ok_or_else(|| malformed_array("too many elements"))?;
    }
    let mut ids = Vec::with_capacity(count.min(bytes.len() / 4));
    for _ in 0..count {
        let length = reader.i32()?;
        if length < 0 {
            continue;
        }
        let element = reader.take(length as usize)?;
        ids.push(bytes_keyspace_id(element, true, element_type, family)?);
    }
    if reader.position != bytes.len() {
        return Err(malformed_array("trailing bytes"));
    }
    Ok(ids)
}

struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], PlanError> {
        let end = self
            .position
            .checked_add(length)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| malformed_array("truncated"))?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    fn i32(&mut self) -> Result<i32, PlanError> {
        let slice = self.take(4)?;
        Ok(i32::from_be_bytes([slice[0], slice[1], slice[2], slice[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::plan::plan_statement;
    use crate::sql::vschema::{TableInfo, VSchema};

    fn vschema() -> VSchema {
        let mut vschema = VSchema::new("app", "tenant_id");
        for (name, family) in [
            ("t", HashFamily::Int),
            ("u", HashFamily::Uuid),
            ("s", HashFamily::Text),
        ] {
            vschema.tables.insert(
                name.to_string(),
                TableInfo::sharded("tenant_id", family, &["tenant_id", "x"]),
            );
        }
        vschema
    }

    /// `count` equal ranges.
    fn shards(count: u64) -> ShardMap {
        let start = |index: u64| ((u128::from(index) << 64) / u128::from(count)) as u64;
        ShardMap::new(
            (0..count)
                .map(|index| {
                    let end = (index + 1 < count).then(|| start(index + 1));
                    (format!("s{index}"), start(index), end)
                })
                .collect(),
        )
        .expect("valid map")
    }

    /// All-text parameters.
    fn text_params<'a>(values: &'a [Option<&'a [u8]>]) -> Params<'a> {
        Params {
            values,
            formats: &[],
            types: &[],
        }
    }

    fn route_sql(sql: &str, params: &Params, shard_count: u64) -> Result<Route, PlanError> {
        let plan = plan_statement(sql, &vschema()).expect("plans");
        route(&plan, params, &shards(shard_count))
    }

    fn binary_int8_array(elements: &[Option<i64>]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&1i32.to_be_bytes());
        bytes.extend_from_slice(&i32::from(elements.contains(&None)).to_be_bytes());
        bytes.extend_from_slice(&20u32.to_be_bytes());
        bytes.extend_from_slice(&(elements.len() as i32).to_be_bytes());
        bytes.extend_from_slice(&1i32.to_be_bytes());
        for element in elements {
            match element {
                Some(value) => {
                    bytes.extend_from_slice(&8i32.to_be_bytes());
                    bytes.extend_from_slice(&value.to_be_bytes());
                }
                None => bytes.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        bytes
    }

    /// Goal: a binary int8[] parameter routes like the same keys written as literals.
    #[test]
    fn binary_array_parameter_routes_like_literal_keys() {
        for keys in [vec![1, 2, 3, 4, 5, 6, 7], vec![42], vec![-1, 0]] {
            let mut elements: Vec<Option<i64>> = keys.iter().copied().map(Some).collect();
            elements.push(None);
            let array = binary_int8_array(&elements);
            let values = [Some(array.as_slice())];
            let params = Params {
                values: &values,
                formats: &[1],
                types: &[1016],
            };
            let literal = format!(
                "SELECT * FROM t WHERE tenant_id IN ({})",
                keys.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            assert_eq!(
                route_sql("SELECT * FROM t WHERE tenant_id = ANY($1)", &params, 8),
                route_sql(&literal, &Params::NONE, 8),
                "{keys:?}"
            );
        }
    }

    /// Goal: a text array parameter routes like literal keys; an empty or NULL array finds nothing.
    #[test]
    fn text_array_parameter_routes_like_literal_keys() {
        let values = [Some(&b"{3, 9,NULL}"[..])];
        let params = text_params(&values);
        assert_eq!(
            route_sql("SELECT * FROM t WHERE tenant_id = ANY($1)", &params, 8),
            route_sql(
                "SELECT * FROM t WHERE tenant_id IN (3, 9)",
                &Params::NONE,
                8
            )
        );
        for empty in [Some(&b"{}"[..]), None] {
            let values = [empty];
            let params = text_params(&values);
            assert_eq!(
                route_sql("SELECT * FROM t WHERE tenant_id = ANY($1)", &params, 8),
                Ok(Route::Single(0))
            );
        }
        let values = [Some(&b"{1,x}"[..])];
        let params = text_params(&values);
        assert_eq!(
            route_sql("SELECT * FROM t WHERE tenant_id = ANY($1)", &params, 8)
                .map_err(|e| e.sqlstate),
            Err(INVALID_TEXT_REPRESENTATION)
        );
    }

    /// Goal: binary parameters that do not fit the column's family are refused, not misread.
    #[test]
    fn unfit_binary_parameters_are_refused() {
        let cases: [(&str, &[u8], u32, &str); 4] = [
            (
                "SELECT * FROM t WHERE tenant_id = $1",
                &[0, 0, 1],
                0,
                INDETERMINATE_DATATYPE,
            ),
            (
                "SELECT * FROM t WHERE tenant_id = $1",
                &[0; 8],
                1700,
                INDETERMINATE_DATATYPE,
            ),
            (
                "SELECT * FROM u WHERE tenant_id = $1",
                &[0; 15],
                2950,
                INDETERMINATE_DATATYPE,
            ),
            (
                "SELECT * FROM s WHERE tenant_id = $1",
                &[0; 4],
                23,
                INDETERMINATE_DATATYPE,
            ),
        ];
        for (sql, bytes, type_oid, sqlstate) in cases {
            let values = [Some(bytes)];
            let types = [type_oid];
            let params = Params {
                values: &values,
                formats: &[1],
                types: &types,
            };
            assert_eq!(
                route_sql(sql, &params, 4).map_err(|e| e.sqlstate),
                Err(sqlstate),
                "{sql} {type_oid}"
            );
        }
    }

    /// Goal: a uuid routes the same whether sent as 16 binary bytes or as text.
    #[test]
    fn uuid_binary_and_text_parameters_agree() {
        let text = b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        let binary = parse_uuid(text).expect("uuid");
        for shard_count in [2, 4, 16] {
            let text_values = [Some(&text[..])];
            let binary_values = [Some(&binary[..])];
            let as_text = route_sql(
                "SELECT * FROM u WHERE tenant_id = $1",
                &Params {
                    values: &text_values,
                    formats: &[0],
                    types: &[2950],
                },
                shard_count,
            );
            let as_binary = route_sql(
                "SELECT * FROM u WHERE tenant_id = $1",
                &Params {
                    values: &binary_values,
                    formats: &[1],
                    types: &[2950],
                },
                shard_count,
            );
            assert_eq!(as_text, as_binary);
            assert!(as_text.is_ok());
        }
    }

    /// Goal: format codes follow Bind (none = text, one = all, n = each); bad counts/codes fail.
    #[test]
    fn format_codes_follow_bind_semantics() {
        let sql = "INSERT INTO t (tenant_id, x) VALUES ($1, 1), ($2, 2)";
        let seven_binary = 7i64.to_be_bytes();
        let text_seven = b"7";
        let expected = route_sql(
            "INSERT INTO t (tenant_id, x) VALUES (7, 1), (7, 2)",
            &Params::NONE,
            16,
        )
        .expect("routes");
        let both_binary = [Some(&seven_binary[..]), Some(&seven_binary[..])];
        let mixed = [Some(&text_seven[..]), Some(&seven_binary[..])];
        assert_eq!(
            route_sql(
                sql,
                &Params {
                    values: &both_binary,
                    formats: &[1],
                    types: &[]
                },
                16
            ),
            Ok(expected.clone())
        );
        assert_eq!(
            route_sql(
                sql,
                &Params {
                    values: &mixed,
                    formats: &[0, 1],
                    types: &[]
                },
                16
            ),
            Ok(expected)
        );
        let short = [
            Some(&text_seven[..]),
            Some(&text_seven[..]),
            Some(&text_seven[..]),
        ];
        assert_eq!(
            route_sql(
                "INSERT INTO t (tenant_id, x) VALUES ($1, 1), ($2, 2), ($3, 3)",
                &Params {
                    values: &short,
                    formats: &[0, 0],
                    types: &[]
                },
                16
            )
            .map_err(|e| e.sqlstate),
            Err(PROTOCOL_VIOLATION)
        );
        assert_eq!(
            route_sql(
                sql,
                &Params {
                    values: &mixed,
                    formats: &[2],
                    types: &[]
                },
                16
            )
            .map_err(|e| e.sqlstate),
            Err(PROTOCOL_VIOLATION)
        );
    }

    /// Goal: with one shard, a scatter runs as a single-shard statement (results relayed as is).
    #[test]
    fn scatter_on_one_shard_is_single() {
        assert_eq!(
            route_sql("SELECT count(*) FROM t", &Params::NONE, 1),
            Ok(Route::Single(0))
        );
        assert_eq!(
            route_sql("SELECT count(*) FROM t", &Params::NONE, 2),
            Ok(Route::All)
        );
    }
}
