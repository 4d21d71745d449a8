//! The gate: a PostgreSQL-wire front end that parses, routes and executes statements on shards.

pub mod sql;
