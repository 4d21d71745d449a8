//! The shape of a local cluster (`tessera up`), persisted in `<data-dir>/cluster.json` so that
//! a second `up` on the same data dir restarts the same cluster.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tessera_proto::keyrange::KeyRange;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub keyspace: String,
    pub shards: usize,
    /// Tablets per shard.
    pub replicas: usize,
    pub zones: usize,
    /// First PostgreSQL port; poolers use +1000, gRPC +2000.
    pub base_port: u16,
}

/// One tablet of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TabletSpec {
    pub id: String,
    pub zone: String,
    pub shard: String,
    /// Position of the tablet within its shard (0 = the initial primary).
    pub replica: usize,
    pub postgres_port: u16,
    pub pooler_port: u16,
    pub grpc_port: u16,
    /// The tablet's own directory under the data dir.
    pub dir: PathBuf,
}

pub const LAYOUT_FILE: &str = "cluster.json";

impl Layout {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.shards == 0 || self.shards > 64 {
            bail!("--shards must be between 1 and 64 (got {})", self.shards);
        }
        if self.replicas == 0 || self.replicas > 9 {
            bail!("--replicas must be between 1 and 9 (got {})", self.replicas);
        }
        if self.zones == 0 || self.zones > 9 {
            bail!("--zones must be between 1 and 9 (got {})", self.zones);
        }
        let tablets = self.shards * self.replicas;
        if usize::from(self.base_port) + 2000 + tablets > usize::from(u16::MAX) {
            bail!(
                "--base-port {} leaves no room for {tablets} tablets' ports",
                self.base_port
            );
        }
        if self.keyspace.is_empty()
            || !self
                .keyspace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            bail!(
                "keyspace name {:?} must be letters, digits and '_'",
                self.keyspace
            );
        }
        Ok(())
    }

    pub fn shard_names(&self) -> anyhow::Result<Vec<String>> {
        Ok(KeyRange::split_evenly(self.shards)
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot split the key space into {} shards: {e}",
                    self.shards
                )
            })?
            .iter()
            .map(|range| range.to_string())
            .collect())
    }

    /// Tablets in shard order; within a shard, one per replica, spread round-robin over zones.
    pub fn tablets(&self, data_dir: &Path) -> anyhow::Result<Vec<TabletSpec>> {
        let mut tablets = Vec::new();
        for (shard_index, shard) in self.shard_names()?.into_iter().enumerate() {
            for replica in 0..self.replicas {
                let zone = format!("zone{}", replica % self.zones + 1);
                let id = format!("{zone}-{}", 100 * (shard_index + 1) + replica + 1);
                let index = (shard_index * self.replicas + replica) as u16;
                tablets.push(TabletSpec {
                    dir: data_dir.join(&id),
                    id,
                    zone,
                    shard: shard.clone(),
                    replica,
                    postgres_port: self.base_port + index,
                    pooler_port: self.base_port + 1000 + index,
                    grpc_port: self.base_port + 2000 + index,
                });
            }
        }
        Ok(tablets)
    }

    /// Fails when `port` (given with `flag`, e.g. `--port`) is one a tablet of `tablets` uses, so
    /// the clash is named before anything starts instead of surfacing as a tablet whose port
    /// is taken by Tessera itself.
    pub fn check_port_free(
        &self,
        tablets: &[TabletSpec],
        flag: &str,
        port: u16,
    ) -> anyhow::Result<()> {
        for tablet in tablets {
            let role = if port == tablet.postgres_port {
                "PostgreSQL"
            } else if port == tablet.pooler_port {
                "pooler"
            } else if port == tablet.grpc_port {
                "gRPC"
            } else {
                continue;
            };
            bail!(
                "{flag} {port} is also the {role} port of tablet {} (tablet ports start at base \
                 port {}: PostgreSQL from there, poolers +1000, gRPC +2000); choose another \
                 {flag}, or another --base-port for a new cluster",
                tablet.id,
                self.base_port
            );
        }
        Ok(())
    }

    /// The layout stored in `data_dir`, if any.
    pub fn load(data_dir: &Path) -> anyhow::Result<Option<Layout>> {
        let path = data_dir.join(LAYOUT_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let layout: Layout = serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "{} is corrupt; move the data dir aside to start a new cluster",
                        path.display()
                    )
                })?;
                Ok(Some(layout))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = data_dir.join(LAYOUT_FILE);
        let temp = data_dir.join(format!("{LAYOUT_FILE}.tmp"));
        std::fs::write(&temp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("data dir {} is not writable", data_dir.display()))?;
        std::fs::rename(&temp, &path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `tessera up` creates without flags.
    fn default_layout() -> Layout {
        Layout {
            keyspace: "app".into(),
            shards: 2,
            replicas: 3,
            zones: 3,
            base_port: 25432,
        }
    }

    #[test]
    fn default_layout_matches_the_documented_cluster() {
        let layout = default_layout();
        layout.validate().unwrap();
        let tablets = layout.tablets(Path::new("/d")).unwrap();
        let ids: Vec<_> = tablets
            .iter()
            .map(|t| (t.id.as_str(), t.shard.as_str()))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("zone1-101", "-80"),
                ("zone2-102", "-80"),
                ("zone3-103", "-80"),
                ("zone1-201", "80-"),
                ("zone2-202", "80-"),
                ("zone3-203", "80-"),
            ]
        );
        assert_eq!(tablets[4].postgres_port, 25436);
        assert_eq!(tablets[4].pooler_port, 26436);
        assert_eq!(tablets[4].grpc_port, 27436);
    }

    #[test]
    fn a_port_a_tablet_uses_is_refused_with_the_tablet_named() {
        let layout = default_layout();
        let tablets = layout.tablets(Path::new("/d")).unwrap();
        let refusal = |flag, port| {
            layout
                .check_port_free(&tablets, flag, port)
                .unwrap_err()
                .to_string()
        };
        let error = refusal("--port", 25432);
        assert!(
            error.starts_with("--port 25432 is also the PostgreSQL port of tablet zone1-101"),
            "{error}"
        );
        let error = refusal("--admin-port", 27437);
        assert!(
            error.starts_with("--admin-port 27437 is also the gRPC port of tablet zone3-203"),
            "{error}"
        );
        layout.check_port_free(&tablets, "--port", 15432).unwrap();
        layout.check_port_free(&tablets, "--port", 25438).unwrap();
    }

    #[test]
    fn absurd_layouts_are_rejected_with_the_flag_named() {
        let layout = Layout {
            keyspace: "app".into(),
            shards: 0,
            replicas: 3,
            zones: 3,
            base_port: 25432,
        };
        assert!(
            layout
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--shards")
        );
    }
}
