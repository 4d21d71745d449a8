//! A tablet manages one PostgreSQL server: its lifecycle, its pooler, its status service and (in
//! the consensus work) its replication role.

pub mod postgres;
