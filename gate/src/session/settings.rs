//! Session settings under transaction pooling.
//!
//! A client's settings (from its startup packet and from SET) are remembered by the gate and
//! re-applied on whichever server connection the session borrows. Each server connection
//! remembers what it carries, so a connection that already matches costs nothing; one that does
//! not gets `RESET ALL` plus the session's SETs, queued in front of the client's statement in the
//! same round trip.

use tessera_wire::relay::Batch;
use tessera_wire::{ServerConn, SqlError};

/// Startup parameters that are not settings to replay.
const NOT_SETTINGS: &[&str] = &[
    "user",
    "database",
    "replication",
    "options",
    "application_name",
];

/// Settings Tessera owns; clients may not change them.
pub(crate) const PROTECTED: &[&str] = &["synchronous_commit"];

#[derive(Debug, Default, Clone)]
pub(crate) struct Settings {
    /// (lower-case name, SET statement) in the order they were made; one entry per name.
    list: Vec<(String, String)>,
    /// Values to report in ParameterStatus at startup.
    reported: Vec<(String, String)>,
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

fn is_utf8(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().replace(['-', '_'], "").as_str(),
        "utf8" | "unicode"
    )
}

impl Settings {
    pub fn from_startup(params: &[(String, String)]) -> Result<Settings, SqlError> {
        let mut settings = Settings::default();
        for (name, value) in params {
            if name == "options" {
                for (option_name, option_value) in parse_options(value)? {
                    settings.startup_setting(&option_name, &option_value)?;
                }
                continue;
            }
            if name == "application_name" {
                settings.reported.push((name.clone(), value.clone()));
            }
            if NOT_SETTINGS.contains(&name.as_str()) {
                continue;
            }
            settings.startup_setting(name, value)?;
        }
        Ok(settings)
    }

    fn startup_setting(&mut self, name: &str, value: &str) -> Result<(), SqlError> {
        let lower = name.to_ascii_lowercase();
        if !valid_name(&lower) {
            return Err(SqlError::new(
                "22023",
                format!("invalid startup parameter name \"{name}\""),
            ));
        }
        if PROTECTED.contains(&lower.as_str()) {
            return Err(protected_error(&lower));
        }
        self.reported.push((name.to_string(), value.to_string()));
        if lower == "client_encoding" && is_utf8(value) {
            return Ok(());
        }
        self.set(&lower, format!("SET {lower} TO {}", quote_literal(value)));
        Ok(())
    }

    pub fn list(&self) -> &[(String, String)] {
        &self.list
    }

    /// A value the client asked for, to report instead of the server's.
    pub fn reported_value(&self, name: &str) -> Option<&str> {
        self.reported
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Records a session-level SET (replacing an earlier one for the same name).
    pub fn set(&mut self, name: &str, statement: String) {
        let name = name.to_ascii_lowercase();
        self.list.retain(|(k, _)| *k != name);
        self.list.push((name, statement));
    }

    pub fn reset(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.list.retain(|(k, _)| *k != name);
    }

    pub fn reset_all(&mut self) {
        self.list.clear();
    }

    /// Queues what makes `conn` carry exactly this session's settings.
    pub fn sync(&self, conn: &mut ServerConn, batch: &mut Batch) {
        if conn.settings == self.list {
            return;
        }
        let mut sql = String::from("RESET ALL");
        for (_, statement) in &self.list {
            sql.push_str("; ");
            sql.push_str(statement);
        }
        batch.query(conn, &sql, false);
        conn.settings = self.list.clone();
    }
}

pub(crate) fn protected_error(name: &str) -> SqlError {
    SqlError::new(
        "42501",
        format!("Tessera manages {name} for durability; it cannot be changed"),
    )
    .with_hint("durability is set per shard with `tessera policy set`")
}

/// Parses libpq's `options` startup parameter: `-c name=value` and `--name=value` items,
/// separated by spaces (backslash escapes a space).
fn parse_options(options: &str) -> Result<Vec<(String, String)>, SqlError> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ' ' | '\t' => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            other => current.push(other),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    let mut settings = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let assignment = if word == "-c" {
            words.next().ok_or_else(|| {
                SqlError::new("22023", "invalid startup option: -c without a setting")
            })?
        } else if let Some(rest) = word.strip_prefix("--") {
            rest.to_string()
        } else if let Some(rest) = word.strip_prefix("-c") {
            rest.to_string()
        } else {
            return Err(SqlError::new(
                "22023",
                format!("unsupported startup option \"{word}\"; use -c name=value"),
            ));
        };
        let (name, value) = assignment.split_once('=').ok_or_else(|| {
            SqlError::new(
                "22023",
                format!("invalid startup option \"{assignment}\"; expected name=value"),
            )
        })?;
        settings.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn utf8_client_encoding_and_identity_params_are_not_replayed() {
        let settings = Settings::from_startup(&params(&[
            ("user", "postgres"),
            ("database", "app"),
            ("client_encoding", "UTF8"),
            ("application_name", "psql"),
        ]))
        .unwrap();
        assert!(settings.list.is_empty());
        assert_eq!(settings.reported_value("application_name"), Some("psql"));
    }

    #[test]
    fn other_params_and_options_become_settings() {
        let settings = Settings::from_startup(&params(&[
            ("DateStyle", "ISO"),
            ("options", "-c search_path=a\\ b --statement-timeout=5s"),
        ]))
        .unwrap();
        let statements: Vec<&str> = settings.list.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(
            statements,
            vec![
                "SET datestyle TO 'ISO'",
                "SET search_path TO 'a b'",
                "SET statement_timeout TO '5s'"
            ]
        );
    }

    #[test]
    fn synchronous_commit_cannot_be_set_at_startup() {
        let error = Settings::from_startup(&params(&[("options", "-c synchronous_commit=off")]))
            .unwrap_err();
        assert_eq!(error.code, "42501");
        let error = Settings::from_startup(&params(&[("synchronous_commit", "off")])).unwrap_err();
        assert_eq!(error.code, "42501");
    }

    #[test]
    fn later_set_replaces_earlier_one() {
        let mut settings = Settings::default();
        settings.set("TimeZone", "SET timezone TO 'UTC'".into());
        settings.set("timezone", "SET timezone TO 'CET'".into());
        assert_eq!(settings.list.len(), 1);
        assert_eq!(settings.list[0].1, "SET timezone TO 'CET'");
    }
}
