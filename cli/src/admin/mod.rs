//! Admin verbs that read and change the topology: `tessera keyspace create|list`,
//! `tessera shard list`, `tessera tablet list`. They work against any backend through
//! `--topo` (see [`crate::status::TopoArgs`]): `memory` reaches the embedded store of a running
//! `tessera up`, `etcd://...` a production topology.
//!
//! Wrong-state requests (creating an existing keyspace, listing a missing one) fail with a
//! message that says what exists instead, and change nothing.

pub mod keyspace;
pub mod shard;
pub mod tablet;

use tessera_topology::Topology;

/// Renders rows as left-aligned columns under a header, two spaces apart.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if index > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            text.push_str(&" ".repeat(width - cell.chars().count()));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// The error for a keyspace that does not exist, naming the ones that do.
pub async fn missing_keyspace(topology: &Topology, name: &str) -> anyhow::Error {
    match topology.list_keyspaces().await {
        Ok(keyspaces) if keyspaces.is_empty() => anyhow::anyhow!(
            "keyspace {name} does not exist; there are no keyspaces yet (create one with `tessera keyspace create NAME`)"
        ),
        Ok(keyspaces) => {
            let names: Vec<String> = keyspaces.into_iter().map(|(k, _)| k.name).collect();
            anyhow::anyhow!(
                "keyspace {name} does not exist (keyspaces: {})",
                names.join(", ")
            )
        }
        Err(error) => anyhow::anyhow!("keyspace {name} does not exist ({error})"),
    }
}

/// Prints `value` as pretty JSON.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_align_to_the_widest_cell() {
        // Goal: every column starts at the same offset on each line, whatever the cell widths.
        let text = render_table(
            &["NAME", "SHARDS"],
            &[
                vec!["a_long_keyspace".into(), "-80, 80-".into()],
                vec!["b".into(), "-".into()],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        let column = lines[0].find("SHARDS").unwrap();
        assert_eq!(lines[1].find("-80"), Some(column));
        assert_eq!(lines[2].rfind('-'), Some(column));
    }
}
