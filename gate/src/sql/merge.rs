//! Combining the DataRow bodies of a statement that ran on several shards.
//!
//! Rows stay in wire form: a row that passes through (concatenation, ORDER BY, LIMIT, DISTINCT)
//! is returned as the same bytes; only the columns a step needs are decoded, and only aggregate
//! results are re-encoded, in the column's own format.

use std::cmp::Ordering;

use bytes::{BufMut, Bytes, BytesMut};

use super::datum::{Datum, decode, sum_values};
use super::error::{INTERNAL_ERROR, PlanError};

/// Type and format of one result column, from the shards' RowDescription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldDesc {
    /// PostgreSQL type OID.
    pub type_oid: u32,
    /// 0 = text, 1 = binary.
    pub format: i16,
}

/// How one output column combines across shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnMerge {
    /// Passes through (group key, plain column, constant).
    Key,
    /// Partial counts are added.
    Count,
    /// Partial sums are added (exactly for integers and numeric).
    Sum,
    /// Smallest partial minimum.
    Min,
    /// Largest partial maximum.
    Max,
}

/// One ORDER BY term, on an output column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    /// 0-based output column.
    pub column: usize,
    pub descending: bool,
    pub nulls_first: bool,
}

/// How to combine the results of a statement that ran on several shards.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MergePlan {
    /// Per output column; columns beyond the end of this list are `Key`.
    pub columns: Vec<ColumnMerge>,
    /// Output columns that form the group key when `aggregate` (empty = one group).
    pub group_by: Vec<usize>,
    /// Applied after aggregation and DISTINCT.
    pub order_by: Vec<SortKey>,
    pub limit: Option<u64>,
    pub offset: u64,
    /// Remove duplicate rows (after aggregation).
    pub distinct: bool,
    /// Combine rows of equal group keys with the column merges.
    pub aggregate: bool,
}

/// A DataRow body split into its cells (zero-copy slices of the body).
struct Row {
    body: Bytes,
    cells: Vec<Option<Bytes>>,
}

fn malformed_row(why: &str) -> PlanError {
    PlanError::new(
        INTERNAL_ERROR,
        format!("a shard returned a malformed DataRow: {why}"),
    )
}

fn parse_row(body: Bytes, expected_columns: usize) -> Result<Row, PlanError> {
    let count_bytes: [u8; 2] = body
        .get(0..2)
        .and_then(|slice| slice.try_into().ok())
        .ok_or_else(|| malformed_row("missing column count"))?;
    let count = i16::from_be_bytes(count_bytes);
    let count = usize::try_from(count).map_err(|_| malformed_row("negative column count"))?;
    if count != expected_columns {
        return Err(malformed_row(&format!(
            "{count} columns where the row description has {expected_columns}"
        )));
    }
    let mut cells = Vec::with_capacity(count);
    let mut position = 2;
    for _ in 0..count {
        let length_bytes: [u8; 4] = body
            .get(position..position + 4)
            .and_then(|slice| slice.try_into().ok())
            .ok_or_else(|| malformed_row("truncated column length"))?;
        position += 4;
        let length = i32::from_be_bytes(length_bytes);
        if length < 0 {
            cells.push(None);
            continue;
        }
        let end = position + length as usize;
        if end > body.len() {
            return Err(malformed_row("truncated column value"));
        }
        cells.push(Some(body.slice(position..end)));
        position = end;
    }
    if position != body.len() {
        return Err(malformed_row("trailing bytes"));
    }
    Ok(Row { body, cells })
}

fn encode_row(cells: &[Option<Bytes>]) -> Bytes {
    let size = 2 + cells
        .iter()
        .map(|cell| 4 + cell.as_ref().map_or(0, Bytes::len))
        .sum::<usize>();
    let mut body = BytesMut::with_capacity(size);
    body.put_i16(cells.len() as i16);
    for cell in cells {
        match cell {
            None => body.put_i32(-1),
            Some(value) => {
                body.put_i32(value.len() as i32);
                body.put_slice(value);
            }
        }
    }
    body.freeze()
}

/// Decoded values of the given columns of a row.
fn decode_columns<'r>(
    row: &'r Row,
    columns: &[usize],
    fields: &[FieldDesc],
) -> Result<Vec<Option<Datum<'r>>>, PlanError> {
    columns
        .iter()
        .map(|column| match &row.cells[*column] {
            None => Ok(None),
            Some(bytes) => {
                let field = fields[*column];
                decode(bytes, field.type_oid, field.format).map(Some)
            }
        })
        .collect()
}

/// Equality-and-order of key tuples where NULLs are equal to each other and sort last (for
/// grouping and DISTINCT, where only a consistent total order matters).
fn compare_keys(a: &[Option<Datum<'_>>], b: &[Option<Datum<'_>>]) -> Ordering {
    for (left, right) in a.iter().zip(b) {
        let ordering = match (left, right) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(left), Some(right)) => left.compare(right),
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    Ordering::Equal
}

/// Combine results of a statement that ran on several shards.
///
/// `rows` holds, per shard, the DataRow message bodies (everything after the 'D' tag and
/// length). Output rows are bodies in the same format, with the same per-column formats.
pub fn merge(
    plan: &MergePlan,
    fields: &[FieldDesc],
    rows: Vec<Vec<Bytes>>,
) -> Result<Vec<Bytes>, PlanError> {
    let needs_cells = plan.aggregate || plan.distinct || !plan.order_by.is_empty();
    let all_rows = rows.into_iter().flatten();
    if !needs_cells {
        // Concatenation with OFFSET/LIMIT: no decoding at all.
        let limited = all_rows.skip(usize::try_from(plan.offset).unwrap_or(usize::MAX));
        return Ok(match plan.limit {
            Some(limit) => limited
                .take(usize::try_from(limit).unwrap_or(usize::MAX))
                .collect(),
            None => limited.collect(),
        });
    }
    for sort_key in &plan.order_by {
        if sort_key.column >= fields.len() {
            return Err(malformed_row("ORDER BY column beyond the row"));
        }
    }
    let mut parsed = all_rows
        .map(|body| parse_row(body, fields.len()))
        .collect::<Result<Vec<Row>, PlanError>>()?;
    if plan.aggregate {
        parsed = aggregate(plan, fields, parsed)?;
    }
    if plan.distinct {
        parsed = distinct(fields, parsed)?;
    }
    if !plan.order_by.is_empty() {
        parsed = sort(plan, fields, parsed)?;
    }
    let offset = usize::try_from(plan.offset).unwrap_or(usize::MAX);
    let limit = plan.limit.map_or(usize::MAX, |limit| {
        usize::try_from(limit).unwrap_or(usize::MAX)
    });
    Ok(parsed
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|row| row.body)
        .collect())
}

fn aggregate(
    plan: &MergePlan,
    fields: &[FieldDesc],
    rows: Vec<Row>,
) -> Result<Vec<Row>, PlanError> {
    if plan.group_by.iter().any(|column| *column >= fields.len()) {
        return Err(malformed_row("GROUP BY column beyond the row"));
    }
    // Sort row indexes by group key, then fold runs of equal keys.
    let keys = rows
        .iter()
        .map(|row| decode_columns(row, &plan.group_by, fields))
        .collect::<Result<Vec<_>, PlanError>>()?;
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|a, b| compare_keys(&keys[*a], &keys[*b]));
    let mut output = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len()
            && compare_keys(&keys[order[start]], &keys[order[end]]) == Ordering::Equal
        {
            end += 1;
        }
        let group: Vec<&Row> = order[start..end]
            .iter()
            .map(|index| &rows[*index])
            .collect();
        output.push(combine_group(plan, fields, &group)?);
        start = end;
    }
    Ok(output)
}

fn combine_group(plan: &MergePlan, fields: &[FieldDesc], group: &[&Row]) -> Result<Row, PlanError> {
    let first = group[0];
    let mut cells = first.cells.clone();
    let mut changed = false;
    for (column, field) in fields.iter().enumerate() {
        let merge = plan
            .columns
            .get(column)
            .copied()
            .unwrap_or(ColumnMerge::Key);
        match merge {
            ColumnMerge::Key => {}
            ColumnMerge::Count | ColumnMerge::Sum => {
                let values: Vec<&[u8]> = group
                    .iter()
                    .filter_map(|row| row.cells[column].as_deref())
                    .collect();
                let total = sum_values(&values, field.type_oid, field.format)?;
                // count() of no rows is 0; each shard already answers 0, so an absent value
                // only happens for sum() over NULLs.
                cells[column] = total.map(Bytes::from);
                changed = true;
            }
            ColumnMerge::Min | ColumnMerge::Max => {
                let mut best: Option<(Datum<'_>, &Bytes)> = None;
                for row in group {
                    let Some(bytes) = &row.cells[column] else {
                        continue;
                    };
                    let value = decode(bytes, field.type_oid, field.format)?;
                    let replace = match &best {
                        None => true,
                        Some((current, _)) => {
                            let ordering = value.compare(current);
                            if merge == ColumnMerge::Min {
                                ordering == Ordering::Less
                            } else {
                                ordering == Ordering::Greater
                            }
                        }
                    };
                    if replace {
                        best = Some((value, bytes));
                    }
                }
                cells[column] = best.map(|(_, bytes)| bytes.clone());
                changed = true;
            }
        }
    }
    if !changed && group.len() == 1 {
        return Ok(Row {
            body: first.body.clone(),
            cells,
        });
    }
    Ok(Row {
        body: encode_row(&cells),
        cells,
    })
}

fn distinct(fields: &[FieldDesc], rows: Vec<Row>) -> Result<Vec<Row>, PlanError> {
    let all_columns: Vec<usize> = (0..fields.len()).collect();
    let keys = rows
        .iter()
        .map(|row| decode_columns(row, &all_columns, fields))
        .collect::<Result<Vec<_>, PlanError>>()?;
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|a, b| compare_keys(&keys[*a], &keys[*b]));
    order.dedup_by(|a, b| compare_keys(&keys[*a], &keys[*b]) == Ordering::Equal);
    drop(keys);
    // Keep the shards' order among the survivors (ORDER BY, if any, sorts afterwards).
    order.sort_unstable();
    let mut keep = vec![false; rows.len()];
    for index in order {
        keep[index] = true;
    }
    Ok(rows
        .into_iter()
        .zip(keep)
        .filter_map(|(row, keep)| keep.then_some(row))
        .collect())
}

fn sort(plan: &MergePlan, fields: &[FieldDesc], rows: Vec<Row>) -> Result<Vec<Row>, PlanError> {
    let columns: Vec<usize> = plan.order_by.iter().map(|key| key.column).collect();
    let keys = rows
        .iter()
        .map(|row| decode_columns(row, &columns, fields))
        .collect::<Result<Vec<_>, PlanError>>()?;
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|a, b| {
        for (position, sort_key) in plan.order_by.iter().enumerate() {
            let ordering = match (&keys[*a][position], &keys[*b][position]) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => {
                    if sort_key.nulls_first {
                        Ordering::Less
                    } else {
                        Ordering::Greater
                    }
                }
                (Some(_), None) => {
                    if sort_key.nulls_first {
                        Ordering::Greater
                    } else {
                        Ordering::Less
                    }
                }
                (Some(left), Some(right)) => {
                    let ordering = left.compare(right);
                    if sort_key.descending {
                        ordering.reverse()
                    } else {
                        ordering
                    }
                }
            };
            if ordering != Ordering::Equal {
                return ordering;
            }
        }
        Ordering::Equal
    });
    drop(keys);
    let mut slots: Vec<Option<Row>> = rows.into_iter().map(Some).collect();
    Ok(order
        .into_iter()
        .filter_map(|index| slots[index].take())
        .collect())
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::sql::datum::{self, Numeric};
    use crate::sql::error::{FEATURE_NOT_SUPPORTED, NUMERIC_VALUE_OUT_OF_RANGE};

    fn row(cells: &[Option<&[u8]>]) -> Bytes {
        encode_row(
            &cells
                .iter()
                .map(|cell| cell.map(Bytes::copy_from_slice))
                .collect::<Vec<_>>(),
        )
    }

    fn text_row(cells: &[Option<&str>]) -> Bytes {
        row(&cells
            .iter()
            .map(|cell| cell.map(str::as_bytes))
            .collect::<Vec<_>>())
    }

    fn cells_of(body: &Bytes, columns: usize) -> Vec<Option<Vec<u8>>> {
        parse_row(body.clone(), columns)
            .expect("valid row")
            .cells
            .into_iter()
            .map(|cell| cell.map(|bytes| bytes.to_vec()))
            .collect()
    }

    fn text_cells(body: &Bytes, columns: usize) -> Vec<Option<String>> {
        cells_of(body, columns)
            .into_iter()
            .map(|cell| cell.map(|bytes| String::from_utf8(bytes).expect("utf8")))
            .collect()
    }

    fn field(type_oid: u32, format: i16) -> FieldDesc {
        FieldDesc { type_oid, format }
    }

    fn aggregate_plan(columns: Vec<ColumnMerge>, group_by: Vec<usize>) -> MergePlan {
        MergePlan {
            columns,
            group_by,
            aggregate: true,
            ..MergePlan::default()
        }
    }

    /// Goal: plain OFFSET/LIMIT concatenation returns the shards' row bytes untouched.
    #[test]
    fn concatenation_with_offset_and_limit_passes_rows_through() {
        let shard_a = vec![text_row(&[Some("1")]), text_row(&[Some("2")])];
        let shard_b = vec![text_row(&[Some("3")]), text_row(&[Some("4")])];
        let plan = MergePlan {
            limit: Some(2),
            offset: 1,
            ..MergePlan::default()
        };
        let merged = merge(
            &plan,
            &[field(datum::INT8, 0)],
            vec![shard_a.clone(), shard_b.clone()],
        )
        .expect("merges");
        assert_eq!(merged, vec![shard_a[1].clone(), shard_b[0].clone()]);
    }

    /// Goal: count/sum/min/max of text-format partial results combine like one server would.
    #[test]
    fn ungrouped_aggregates_combine_text_results() {
        let fields = [
            field(datum::INT8, 0),
            field(datum::NUMERIC, 0),
            field(datum::TEXT, 0),
            field(datum::INT4, 0),
            field(datum::FLOAT8, 0),
        ];
        let plan = aggregate_plan(
            vec![
                ColumnMerge::Count,
                ColumnMerge::Sum,
                ColumnMerge::Min,
                ColumnMerge::Max,
                ColumnMerge::Sum,
            ],
            vec![],
        );
        let rows = vec![
            vec![text_row(&[
                Some("3"),
                Some("1.50"),
                Some("b"),
                Some("-4"),
                Some("0.1"),
            ])],
            vec![text_row(&[Some("0"), None, None, None, None])],
            vec![text_row(&[
                Some("4"),
                Some("2.255"),
                Some("a"),
                Some("12"),
                Some("0.2"),
            ])],
        ];
        let merged = merge(&plan, &fields, rows).expect("merges");
        assert_eq!(merged.len(), 1);
        assert_eq!(
            text_cells(&merged[0], 5),
            vec![
                Some("7".to_string()),
                Some("3.755".to_string()),
                Some("a".to_string()),
                Some("12".to_string()),
                Some(datum::format_float(0.1 + 0.2, false)),
            ]
        );
    }

    /// Goal: binary-format partial results combine and stay binary (numeric, int8, timestamptz).
    #[test]
    fn ungrouped_aggregates_combine_binary_results() {
        let fields = [
            field(datum::INT8, 1),
            field(datum::NUMERIC, 1),
            field(datum::TIMESTAMPTZ, 1),
            field(datum::INT2, 1),
        ];
        let plan = aggregate_plan(
            vec![
                ColumnMerge::Count,
                ColumnMerge::Sum,
                ColumnMerge::Max,
                ColumnMerge::Min,
            ],
            vec![],
        );
        let numeric = |text: &str| Numeric::parse(text).expect("numeric").to_binary();
        let shard = |count: i64, sum: &str, at: i64, small: i16| {
            vec![row(&[
                Some(&count.to_be_bytes()),
                Some(&numeric(sum)),
                Some(&at.to_be_bytes()),
                Some(&small.to_be_bytes()),
            ])]
        };
        let merged = merge(
            &plan,
            &fields,
            vec![shard(2, "9999.99", -5, 3), shard(5, "0.01", 7, -2)],
        )
        .expect("merges");
        let cells = cells_of(&merged[0], 4);
        assert_eq!(cells[0], Some(7i64.to_be_bytes().to_vec()));
        let sum = Numeric::from_binary(cells[1].as_deref().expect("sum")).expect("numeric");
        assert_eq!(sum.to_string(), "10000.00");
        assert_eq!(cells[2], Some(7i64.to_be_bytes().to_vec()));
        assert_eq!(cells[3], Some((-2i16).to_be_bytes().to_vec()));
    }

    /// Goal: sum over only NULLs stays NULL; count of no rows stays 0.
    #[test]
    fn empty_aggregates_keep_sql_semantics() {
        let fields = [field(datum::INT8, 0), field(datum::INT8, 0)];
        let plan = aggregate_plan(vec![ColumnMerge::Count, ColumnMerge::Sum], vec![]);
        let rows = vec![
            vec![text_row(&[Some("0"), None])],
            vec![text_row(&[Some("0"), None])],
        ];
        let merged = merge(&plan, &fields, rows).expect("merges");
        assert_eq!(text_cells(&merged[0], 2), vec![Some("0".to_string()), None]);
    }

    /// Goal: groups split over shards are combined, with numeric keys equal by value (1.0 = 1.00).
    #[test]
    fn grouped_aggregates_merge_groups_across_shards() {
        let fields = [field(datum::NUMERIC, 0), field(datum::INT8, 0)];
        let plan = MergePlan {
            order_by: vec![SortKey {
                column: 0,
                descending: false,
                nulls_first: false,
            }],
            ..aggregate_plan(vec![ColumnMerge::Key, ColumnMerge::Count], vec![0])
        };
        let rows = vec![
            vec![
                text_row(&[Some("1.0"), Some("2")]),
                text_row(&[None, Some("1")]),
            ],
            vec![
                text_row(&[Some("1.00"), Some("3")]),
                text_row(&[Some("-2"), Some("5")]),
            ],
            vec![text_row(&[None, Some("4")])],
        ];
        let merged = merge(&plan, &fields, rows).expect("merges");
        let groups: Vec<Vec<Option<String>>> =
            merged.iter().map(|row| text_cells(row, 2)).collect();
        assert_eq!(groups.len(), 3);
        assert_eq!(
            groups[0],
            vec![Some("-2".to_string()), Some("5".to_string())]
        );
        assert_eq!(groups[1][1], Some("5".to_string()));
        assert_eq!(groups[2], vec![None, Some("5".to_string())]);
    }

    /// Goal: ORDER BY DESC NULLS FIRST with OFFSET/LIMIT over text rows of several shards.
    #[test]
    fn order_by_desc_nulls_first_with_offset_and_limit() {
        let fields = [field(datum::TEXT, 0), field(datum::INT4, 1)];
        let plan = MergePlan {
            order_by: vec![SortKey {
                column: 0,
                descending: true,
                nulls_first: true,
            }],
            limit: Some(3),
            offset: 1,
            ..MergePlan::default()
        };
        let make =
            |name: Option<&str>, id: i32| row(&[name.map(str::as_bytes), Some(&id.to_be_bytes())]);
        let rows = vec![
            vec![make(None, 1), make(Some("m"), 2), make(Some("a"), 3)],
            vec![make(Some("z"), 4), make(Some("b"), 5)],
        ];
        let merged = merge(&plan, &fields, rows).expect("merges");
        let ids: Vec<Vec<u8>> = merged
            .iter()
            .map(|row| cells_of(row, 2)[1].clone().expect("id"))
            .collect();
        assert_eq!(
            ids,
            vec![
                4i32.to_be_bytes().to_vec(),
                2i32.to_be_bytes().to_vec(),
                5i32.to_be_bytes().to_vec()
            ]
        );
    }

    /// Goal: DISTINCT removes rows duplicated across shards, comparing numerics by value.
    #[test]
    fn distinct_removes_cross_shard_duplicates() {
        let fields = [field(datum::TEXT, 0), field(datum::NUMERIC, 0)];
        let plan = MergePlan {
            distinct: true,
            ..MergePlan::default()
        };
        let rows = vec![
            vec![
                text_row(&[Some("a"), Some("1.5")]),
                text_row(&[Some("b"), None]),
            ],
            vec![
                text_row(&[Some("a"), Some("1.50")]),
                text_row(&[Some("b"), None]),
                text_row(&[Some("c"), Some("1")]),
            ],
        ];
        let merged = merge(&plan, &fields, rows).expect("merges");
        assert_eq!(merged.len(), 3);
    }

    /// Goal: a bigint sum that leaves the bigint range is an error, as in PostgreSQL.
    #[test]
    fn bigint_sum_overflow_is_an_error() {
        let fields = [field(datum::INT8, 0)];
        let plan = aggregate_plan(vec![ColumnMerge::Sum], vec![]);
        let big = i64::MAX.to_string();
        let rows = vec![vec![text_row(&[Some(&big)])], vec![text_row(&[Some("1")])]];
        let error = merge(&plan, &fields, rows).expect_err("overflows");
        assert_eq!(error.sqlstate, NUMERIC_VALUE_OUT_OF_RANGE);
    }

    /// Goal: ordering by a type the gate cannot compare is refused, naming the type OID.
    #[test]
    fn ordering_an_unknown_type_is_refused() {
        const JSONB: u32 = 3802;
        let fields = [field(JSONB, 0)];
        let plan = MergePlan {
            order_by: vec![SortKey {
                column: 0,
                descending: false,
                nulls_first: false,
            }],
            ..MergePlan::default()
        };
        let rows = vec![vec![text_row(&[Some("{}")])], vec![text_row(&[Some("[]")])]];
        let error = merge(&plan, &fields, rows).expect_err("refused");
        assert_eq!(error.sqlstate, FEATURE_NOT_SUPPORTED);
        assert!(error.message.contains("3802"), "{}", error.message);
    }

    /// Goal: a truncated or inconsistent DataRow is an error, never a panic.
    #[test]
    fn malformed_rows_are_errors() {
        let fields = [field(datum::INT8, 0)];
        let plan = MergePlan {
            distinct: true,
            ..MergePlan::default()
        };
        for body in [
            Bytes::from_static(&[0]),
            Bytes::from_static(&[0, 1, 0, 0, 0, 9, b'1']),
            Bytes::from_static(&[0, 2, 0, 0, 0, 1, b'1']),
            Bytes::from_static(&[0, 1, 0, 0, 0, 1, b'1', b'2']),
        ] {
            assert!(merge(&plan, &fields, vec![vec![body]]).is_err());
        }
    }

    /// Random value of a type, as (sort key, wire bytes in `format`).
    fn random_int(rng: &mut StdRng, binary: bool) -> (i64, Vec<u8>) {
        let value: i64 = match rng.random_range(0..4) {
            0 => rng.random_range(-3..3),
            1 => i64::MIN + rng.random_range(0..2),
            2 => i64::MAX - rng.random_range(0..2),
            _ => rng.random(),
        };
        let bytes = if binary {
            value.to_be_bytes().to_vec()
        } else {
            value.to_string().into_bytes()
        };
        (value, bytes)
    }

    /// Goal: merging random per-shard sorted inputs equals sorting their union (both formats,
    /// both directions, NULLs first or last), and LIMIT/OFFSET cut the same prefix.
    #[test]
    fn merge_of_sorted_shards_equals_sorting_the_union() {
        let seed = std::env::var("TESSERA_MERGE_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or(0x5eed_u64);
        for case in 0..300u64 {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(case));
            let binary = rng.random_bool(0.5);
            let descending = rng.random_bool(0.5);
            let nulls_first = rng.random_bool(0.5);
            let shard_count = rng.random_range(1..5);
            let mut union: Vec<Option<i64>> = Vec::new();
            let mut shards = Vec::new();
            for _ in 0..shard_count {
                let mut values: Vec<(Option<i64>, Option<Vec<u8>>)> = (0..rng.random_range(0..20))
                    .map(|_| {
                        if rng.random_bool(0.1) {
                            (None, None)
                        } else {
                            let (value, bytes) = random_int(&mut rng, binary);
                            (Some(value), Some(bytes))
                        }
                    })
                    .collect();
                let key = |value: &Option<i64>| {
                    (
                        value.is_none() != nulls_first,
                        if descending {
                            value.map(|v| -(v as i128))
                        } else {
                            value.map(i128::from)
                        },
                    )
                };
                values.sort_by_key(|(value, _)| key(value));
                union.extend(values.iter().map(|(value, _)| *value));
                shards.push(
                    values
                        .into_iter()
                        .map(|(_, bytes)| row(&[bytes.as_deref()]))
                        .collect::<Vec<_>>(),
                );
            }
            let limit = rng.random_bool(0.5).then(|| rng.random_range(0..30));
            let offset = rng.random_range(0..5);
            let plan = MergePlan {
                order_by: vec![SortKey {
                    column: 0,
                    descending,
                    nulls_first,
                }],
                limit,
                offset,
                ..MergePlan::default()
            };
            let merged = merge(&plan, &[field(datum::INT8, i16::from(binary))], shards)
                .unwrap_or_else(|error| panic!("seed {} failed: {error}", seed + case));
            let got: Vec<Option<i64>> = merged
                .iter()
                .map(|body| {
                    cells_of(body, 1)[0].as_ref().map(|bytes| {
                        if binary {
                            i64::from_be_bytes(bytes.as_slice().try_into().expect("8 bytes"))
                        } else {
                            String::from_utf8(bytes.clone())
                                .expect("utf8")
                                .parse()
                                .expect("int")
                        }
                    })
                })
                .collect();
            union.sort_by(|a, b| match (a, b) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => {
                    if nulls_first {
                        Ordering::Less
                    } else {
                        Ordering::Greater
                    }
                }
                (Some(_), None) => {
                    if nulls_first {
                        Ordering::Greater
                    } else {
                        Ordering::Less
                    }
                }
                (Some(a), Some(b)) => {
                    if descending {
                        b.cmp(a)
                    } else {
                        a.cmp(b)
                    }
                }
            });
            let expected: Vec<Option<i64>> = union
                .into_iter()
                .skip(offset as usize)
                .take(limit.map_or(usize::MAX, |l| l as usize))
                .collect();
            assert_eq!(
                got,
                expected,
                "seed {} (set TESSERA_MERGE_SEED to replay)",
                seed + case
            );
        }
    }

    /// Goal: count/sum/min/max of random per-shard partials equal the aggregates over all rows,
    /// for grouped data, in both formats, and numeric sums are exact.
    #[test]
    fn random_partial_aggregates_equal_global_aggregates() {
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let binary = rng.random_bool(0.5);
            let format = i16::from(binary);
            // Raw data: (group, integer value, numeric value as (units, scale)) per shard.
            let shard_count = rng.random_range(1..4);
            let groups = ["x", "y", "z"];
            let data: Vec<Vec<(usize, i64, i128, u32)>> = (0..shard_count)
                .map(|_| {
                    (0..rng.random_range(0..12))
                        .map(|_| {
                            (
                                rng.random_range(0..groups.len()),
                                rng.random_range(-1_000_000..1_000_000),
                                rng.random_range(-10_i128.pow(20)..10_i128.pow(20)),
                                rng.random_range(0..6),
                            )
                        })
                        .collect()
                })
                .collect();
            let numeric_text = |units: i128, scale: u32| {
                let negative = units < 0;
                let digits = format!(
                    "{:0>width$}",
                    units.unsigned_abs(),
                    width = scale as usize + 1
                );
                let (whole, fraction) = digits.split_at(digits.len() - scale as usize);
                let sign = if negative { "-" } else { "" };
                if scale == 0 {
                    format!("{sign}{whole}")
                } else {
                    format!("{sign}{whole}.{fraction}")
                }
            };
            let encode_int = |value: i64| {
                if binary {
                    value.to_be_bytes().to_vec()
                } else {
                    value.to_string().into_bytes()
                }
            };
            let encode_numeric = |text: &str| {
                let value = Numeric::parse(text).expect("numeric");
                if binary {
                    value.to_binary()
                } else {
                    value.to_string().into_bytes()
                }
            };
            // What each shard returns for GROUP BY g: g, count(*), sum(v), min(v), max(v), sum(n).
            let mut shards = Vec::new();
            for rows in &data {
                let mut out = Vec::new();
                for (group_index, group) in groups.iter().enumerate() {
                    let members: Vec<_> = rows.iter().filter(|row| row.0 == group_index).collect();
                    if members.is_empty() {
                        continue;
                    }
                    let count = members.len() as i64;
                    let sum: i64 = members.iter().map(|row| row.1).sum();
                    let min = members.iter().map(|row| row.1).min().expect("min");
                    let max = members.iter().map(|row| row.1).max().expect("max");
                    let scale = members.iter().map(|row| row.3).max().expect("scale");
                    let numeric_sum: i128 = members
                        .iter()
                        .map(|row| row.2 * 10_i128.pow(scale - row.3))
                        .sum();
                    out.push(row(&[
                        Some(group.as_bytes()),
                        Some(&encode_int(count)),
                        Some(&encode_int(sum)),
                        Some(&encode_int(min)),
                        Some(&encode_int(max)),
                        Some(&encode_numeric(&numeric_text(numeric_sum, scale))),
                    ]));
                }
                shards.push(out);
            }
            let fields = [
                field(datum::TEXT, format),
                field(datum::INT8, format),
                field(datum::INT8, format),
                field(datum::INT8, format),
                field(datum::INT8, format),
                field(datum::NUMERIC, format),
            ];
            let plan = MergePlan {
                order_by: vec![SortKey {
                    column: 0,
                    descending: false,
                    nulls_first: false,
                }],
                ..aggregate_plan(
                    vec![
                        ColumnMerge::Key,
                        ColumnMerge::Count,
                        ColumnMerge::Sum,
                        ColumnMerge::Min,
                        ColumnMerge::Max,
                        ColumnMerge::Sum,
                    ],
                    vec![0],
                )
            };
            let merged =
                merge(&plan, &fields, shards).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let all: Vec<_> = data.iter().flatten().collect();
            let mut expected = Vec::new();
            for (group_index, group) in groups.iter().enumerate() {
                let members: Vec<_> = all.iter().filter(|row| row.0 == group_index).collect();
                if members.is_empty() {
                    continue;
                }
                let scale = members.iter().map(|row| row.3).max().expect("scale");
                let numeric_sum: i128 = members
                    .iter()
                    .map(|row| row.2 * 10_i128.pow(scale - row.3))
                    .sum();
                expected.push(vec![
                    Some(group.as_bytes().to_vec()),
                    Some(encode_int(members.len() as i64)),
                    Some(encode_int(members.iter().map(|row| row.1).sum())),
                    Some(encode_int(
                        members.iter().map(|row| row.1).min().expect("min"),
                    )),
                    Some(encode_int(
                        members.iter().map(|row| row.1).max().expect("max"),
                    )),
                    Some(encode_numeric(&numeric_text(numeric_sum, scale))),
                ]);
            }
            let got: Vec<_> = merged.iter().map(|body| cells_of(body, 6)).collect();
            assert_eq!(got, expected, "seed {seed}");
        }
    }
}
