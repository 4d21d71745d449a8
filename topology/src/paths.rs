//! The key layout of the topology. This module is the only place that knows it; everything else
//! builds keys with these functions and classifies watched keys with [`classify`].
//!
//! ```text
//! /tessera/keyspaces/<keyspace>                       KeyspaceRecord
//! /tessera/keyspaces/<keyspace>/shards/<shard>        ShardRecord
//! /tessera/cells/<zone>/tablets/<tablet id>           TabletRecord
//! /tessera/locks/<name>[/<name>...]                   lock keys (lease-held)
//! ```
//!
//! Shards live under their keyspace so that deleting or listing a keyspace's subtree is one
//! prefix operation; the price is that listing `/tessera/keyspaces/` also returns shard keys,
//! which [`classify`] tells apart.

use crate::error::TopoError;

/// Root of everything Tessera stores; watch it to follow the whole topology.
pub const ROOT: &str = "/tessera/";

/// Prefix of every keyspace (and, below them, shard) key.
pub const KEYSPACES: &str = "/tessera/keyspaces/";

/// Prefix of every zone's tablet keys.
pub const CELLS: &str = "/tessera/cells/";

/// Prefix of every lock key.
pub const LOCKS: &str = "/tessera/locks/";

const SHARDS_SEGMENT: &str = "shards";
const TABLETS_SEGMENT: &str = "tablets";

/// Longest name accepted for one path segment.
pub const MAX_NAME_BYTES: usize = 128;

/// Checks that `name` can be one path segment: 1..=128 characters of `[A-Za-z0-9_.-]`, not `.`
/// or `..`. Covers keyspace names, shard ranges (`-80`, `80-`, `-`), zones and tablet ids.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), TopoError> {
    let invalid = |reason: String| TopoError::InvalidName {
        kind,
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("must not be empty".to_string()));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(invalid(format!("longer than {MAX_NAME_BYTES} bytes")));
    }
    if name == "." || name == ".." {
        return Err(invalid("must not be '.' or '..'".to_string()));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(invalid(format!(
            "contains {bad:?}; only letters, digits, '_', '-' and '.' are allowed"
        )));
    }
    Ok(())
}

/// `/tessera/keyspaces/<keyspace>`
pub fn keyspace(keyspace: &str) -> Result<String, TopoError> {
    validate_name("keyspace", keyspace)?;
    Ok(format!("{KEYSPACES}{keyspace}"))
}

/// `/tessera/keyspaces/<keyspace>/shards/` — list this to get a keyspace's shards.
pub fn shards_prefix(keyspace: &str) -> Result<String, TopoError> {
    validate_name("keyspace", keyspace)?;
    Ok(format!("{KEYSPACES}{keyspace}/{SHARDS_SEGMENT}/"))
}

/// `/tessera/keyspaces/<keyspace>/shards/<shard>`
pub fn shard(keyspace: &str, shard: &str) -> Result<String, TopoError> {
    validate_name("shard", shard)?;
    Ok(format!("{}{shard}", shards_prefix(keyspace)?))
}

/// `/tessera/cells/<zone>/tablets/` — list this to get one zone's tablets.
pub fn tablets_prefix(zone: &str) -> Result<String, TopoError> {
    validate_name("zone", zone)?;
    Ok(format!("{CELLS}{zone}/{TABLETS_SEGMENT}/"))
}

/// `/tessera/cells/<zone>/tablets/<id>`
pub fn tablet(zone: &str, id: &str) -> Result<String, TopoError> {
    validate_name("tablet", id)?;
    Ok(format!("{}{id}", tablets_prefix(zone)?))
}

/// `/tessera/locks/<part>/<part>/...`, e.g. `lock(&["keyspaces", "app", "shards", "-80"])`.
pub fn lock(parts: &[&str]) -> Result<String, TopoError> {
    if parts.is_empty() {
        return Err(TopoError::InvalidName {
            kind: "lock",
            name: String::new(),
            reason: "a lock needs at least one name segment".to_string(),
        });
    }
    for part in parts {
        validate_name("lock", part)?;
    }
    Ok(format!("{LOCKS}{}", parts.join("/")))
}

/// The lock coordinators take before acting on a shard (to reduce contention only).
pub fn shard_lock(keyspace: &str, shard: &str) -> Result<String, TopoError> {
    validate_name("keyspace", keyspace)?;
    validate_name("shard", shard)?;
    lock(&["keyspaces", keyspace, SHARDS_SEGMENT, shard])
}

/// The lock admin commands take before changing a keyspace's layout (e.g. resharding).
pub fn keyspace_lock(keyspace: &str) -> Result<String, TopoError> {
    validate_name("keyspace", keyspace)?;
    lock(&["keyspaces", keyspace])
}

/// What a topology key denotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    Keyspace {
        keyspace: String,
    },
    Shard {
        keyspace: String,
        shard: String,
    },
    Tablet {
        zone: String,
        id: String,
    },
    /// A lock key; `name` is the part after `/tessera/locks/`.
    Lock {
        name: String,
    },
    /// Anything else (written by a newer version, or by hand). Consumers ignore it.
    Unknown,
}

/// Classifies a full key. Never fails: keys outside the known layout are `Unknown`.
pub fn classify(key: &str) -> KeyKind {
    let valid = |kind, name: &str| validate_name(kind, name).is_ok();
    if let Some(rest) = key.strip_prefix(KEYSPACES) {
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [keyspace] if valid("keyspace", keyspace) => {
                return KeyKind::Keyspace {
                    keyspace: keyspace.to_string(),
                };
            }
            [keyspace, SHARDS_SEGMENT, shard]
                if valid("keyspace", keyspace) && valid("shard", shard) =>
            {
                return KeyKind::Shard {
                    keyspace: keyspace.to_string(),
                    shard: shard.to_string(),
                };
            }
            _ => {}
        }
    } else if let Some(rest) = key.strip_prefix(CELLS) {
        let parts: Vec<&str> = rest.split('/').collect();
        if let [zone, TABLETS_SEGMENT, id] = parts.as_slice()
            && valid("zone", zone)
            && valid("tablet", id)
        {
            return KeyKind::Tablet {
                zone: zone.to_string(),
                id: id.to_string(),
            };
        }
    } else if let Some(name) = key.strip_prefix(LOCKS)
        && !name.is_empty()
        && name.split('/').all(|part| valid("lock", part))
    {
        return KeyKind::Lock {
            name: name.to_string(),
        };
    }
    KeyKind::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: every builder's key classifies back to the names it was built from.
    #[test]
    fn builders_round_trip_through_classify() {
        assert_eq!(
            classify(&keyspace("app").unwrap()),
            KeyKind::Keyspace {
                keyspace: "app".into()
            }
        );
        for range in ["-80", "80-", "-", "0", "40-80"] {
            assert_eq!(
                classify(&shard("app", range).unwrap()),
                KeyKind::Shard {
                    keyspace: "app".into(),
                    shard: range.into()
                }
            );
        }
        assert_eq!(
            classify(&tablet("zone1", "zone1-101").unwrap()),
            KeyKind::Tablet {
                zone: "zone1".into(),
                id: "zone1-101".into()
            }
        );
        assert_eq!(
            classify(&shard_lock("app", "-80").unwrap()),
            KeyKind::Lock {
                name: "keyspaces/app/shards/-80".into()
            }
        );
    }

    /// Goal: a shard key found while listing the keyspaces prefix is not mistaken for a keyspace,
    /// and odd keys are Unknown rather than misparsed.
    #[test]
    fn classify_separates_shards_from_keyspaces_and_rejects_odd_keys() {
        let shard_key = shard("app", "-80").unwrap();
        assert!(shard_key.starts_with(KEYSPACES));
        assert!(matches!(classify(&shard_key), KeyKind::Shard { .. }));
        for odd in [
            "/tessera/keyspaces/",
            "/tessera/keyspaces/app/shards/",
            "/tessera/keyspaces/app/other/x",
            "/tessera/keyspaces/app/shards/-80/extra",
            "/tessera/cells/zone1",
            "/tessera/cells/zone1/tablets/",
            "/tessera/cells/zone1/things/x",
            "/tessera/locks/",
            "/tessera/future/thing",
            "/elsewhere",
        ] {
            assert_eq!(classify(odd), KeyKind::Unknown, "{odd}");
        }
    }

    /// Goal: names that would break the layout (slashes, empty, dots, spaces) are refused.
    #[test]
    fn bad_names_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "ä",
            &"x".repeat(MAX_NAME_BYTES + 1),
        ] {
            assert!(
                matches!(keyspace(bad), Err(TopoError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        assert!(shard("app", "-80/x").is_err());
        assert!(tablet("zone/1", "t").is_err());
        assert!(lock(&[]).is_err());
        assert!(lock(&["ok", ""]).is_err());
    }
}
