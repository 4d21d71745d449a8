//! Tessera's topology: where cluster metadata (keyspaces, shards, tablets, policies) lives.
//!
//! - [`TopoStore`] is the narrow, object-safe store interface (get / create / compare-and-set /
//!   delete / list / watch / lock), with three backends: [`MemoryTopo`] (in-process, optionally
//!   persisted to a file — the embedded default), [`EtcdTopo`] (production) and [`RemoteTopo`]
//!   (gRPC client of a [`TopoServer`], used to reach the store embedded in `tessera up`).
//! - [`connect`] turns a topology URL into a store.
//! - [`paths`] owns the key layout, [`records`] the JSON records, and [`Topology`] is the typed
//!   facade the components use.
//!
//! The query path and failover never wait on the topology (ARCHITECTURE.md §6): components
//! cache what they read and follow watches.

mod error;
mod etcd;
pub mod etcd_process;
mod memory;
pub mod paths;
pub mod records;
mod remote;
mod store;
mod topology;
mod url;

pub use error::TopoError;
pub use etcd::{DEFAULT_ETCD_TIMEOUT, EtcdConfig, EtcdTopo};
pub use memory::MemoryTopo;
pub use records::{
    DEFAULT_POLICY, DEFAULT_SHARDING_COLUMN, KeyspaceRecord, ShardRecord, TableKind, TableRecord,
    TabletRecord,
};
pub use remote::{DEFAULT_REMOTE_TIMEOUT, MAX_MESSAGE_BYTES, RemoteTopo, TopoServer};
pub use store::{
    ConsumerGone, LockGuard, LockLease, MAX_KEY_BYTES, TopoStore, Version, Versioned,
    WATCH_CHANNEL_CAPACITY, WatchEvent, WatchSender, WatchStream, validate_key, validate_prefix,
};
pub use topology::{MAX_UPDATE_ATTEMPTS, Topology};
pub use url::{TopoUrl, connect};
