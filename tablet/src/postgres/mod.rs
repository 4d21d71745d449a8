//! PostgreSQL process management (being written).
