//! The session's bound portals.
//!
//! Drivers bind almost every statement to the unnamed portal and drop it at the next Sync, so
//! that portal has a slot of its own: binding, executing and dropping it touches no hash map.
//! Named portals (cursors a driver fetches from in steps) live in a map beside it.

use std::sync::Arc;

use super::ClientStatement;
use super::multi::Buffered;
use crate::sql::route::Route;

/// A bound portal.
pub(crate) struct Portal {
    pub statement: Arc<ClientStatement>,
    pub route: Route,
    /// The client's Bind frame body, re-sent to each shard of a multi-shard portal.
    pub bind: bytes::Bytes,
    /// Results of a multi-shard portal, computed at Describe or Execute, emitted at Execute.
    pub buffered: Option<Buffered>,
}

#[derive(Default)]
pub(crate) struct Portals {
    unnamed: Option<Portal>,
    named: foldhash::HashMap<String, Portal>,
}

impl Portals {
    pub fn get(&self, name: &str) -> Option<&Portal> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.named.get(name)
        }
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Portal> {
        if name.is_empty() {
            self.unnamed.as_mut()
        } else {
            self.named.get_mut(name)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Binds `name`, replacing an unnamed portal (as PostgreSQL does); the caller refuses a
    /// named one that exists.
    pub fn insert(&mut self, name: &str, portal: Portal) {
        if name.is_empty() {
            self.unnamed = Some(portal);
        } else {
            self.named.insert(name.to_string(), portal);
        }
    }

    pub fn remove(&mut self, name: &str) {
        if name.is_empty() {
            self.unnamed = None;
        } else {
            self.named.remove(name);
        }
    }

    pub fn clear(&mut self) {
        self.unnamed = None;
        if !self.named.is_empty() {
            self.named.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_wire::Statement;

    fn portal(route: Route) -> Portal {
        Portal {
            statement: Arc::new(ClientStatement {
                wire: Arc::new(Statement::new("SELECT 1".into(), Vec::new())),
                plan: None,
            }),
            route,
            bind: bytes::Bytes::new(),
            buffered: None,
        }
    }

    #[test]
    fn unnamed_and_named_portals_are_kept_apart_and_cleared_together() {
        let mut portals = Portals::default();
        assert!(!portals.contains(""));
        portals.insert("", portal(Route::Single(0)));
        portals.insert("cursor", portal(Route::Single(1)));
        assert!(matches!(portals.get("").unwrap().route, Route::Single(0)));
        assert!(matches!(
            portals.get("cursor").unwrap().route,
            Route::Single(1)
        ));
        assert!(!portals.contains("other"));

        // A new unnamed Bind replaces the unnamed portal.
        portals.insert("", portal(Route::Single(2)));
        assert!(matches!(portals.get("").unwrap().route, Route::Single(2)));
        portals.get_mut("cursor").unwrap().route = Route::Single(3);
        assert!(matches!(
            portals.get("cursor").unwrap().route,
            Route::Single(3)
        ));

        portals.remove("");
        assert!(!portals.contains(""));
        assert!(portals.contains("cursor"));
        portals.insert("", portal(Route::Single(0)));
        portals.clear();
        assert!(!portals.contains(""));
        assert!(!portals.contains("cursor"));
    }
}
