//! Tessera's contracts: the gRPC services (generated from `protos/`) and the domain types shared
//! by every component (key ranges, the hash vindex, the SQL objects Tessera keeps in shards).

pub mod keyrange;
pub mod rules;
pub mod schema;
pub mod vindex;

/// Generated gRPC code for the tablet service.
pub mod tablet {
    tonic::include_proto!("tessera.tablet");
}

/// Generated gRPC code for the topology service (the remote `TopoStore`).
pub mod topo {
    tonic::include_proto!("tessera.topo");
}
