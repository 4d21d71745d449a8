//! PostgreSQL wire-protocol pieces shared by the gate (client-facing) and the tablet pooler
//! (PostgreSQL-facing and gate-facing). A crate of its own because the gate and the tablet must
//! not depend on each other, yet speak the same protocol the same way.
//!
//! The hot path relays raw protocol bytes: frames are located by their 5-byte header and copied
//! between buffers, never decoded and re-encoded, unless a component needs a field from them.
//!
//! ```text
//!   client ──frames──▶ [gate session] ──frames──▶ ServerConn ──▶ tablet pooler / PostgreSQL
//!                          ▲                         │
//!                          └──── relay (Expect queue: forward / swallow / synthetic) ◀┘
//! ```

pub mod error;
pub mod extended;
pub mod message;
pub mod pool;
pub mod relay;
pub mod scram;
pub mod server_conn;
pub mod socket;
pub mod startup;
pub mod statement;

pub use error::{SqlError, WireError};
pub use pool::{AcquireError, ConnSource, Pool, PoolConfig, PooledConn};
pub use server_conn::{ConnectConfig, ServerConn, Target};
pub use socket::PgStream;
pub use statement::Statement;
