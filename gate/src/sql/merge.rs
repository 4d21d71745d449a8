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
    let limit = plan
        .limit
        .map_or(usize::MAX, |limit| usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(parsed
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|row| row.body)
        .collect())
}

fn aggregate(plan: &MergePlan, fields: &[FieldDesc], rows: Vec<Row>) -> Result<Vec<Row>, PlanError> {
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
        let group: Vec<&Row> = order[start..end].iter().map(|index| &rows[*index]).collect();
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
        let merge = plan.columns.get(column).copied().unwrap_or(ColumnMerge::Key);
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
