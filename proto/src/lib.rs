//! Tessera's contracts: the gRPC services (generated from `protos/`), the domain types shared by
//! every component (key ranges, the hash vindex), and PostgreSQL wire-protocol helpers used by
//! both the gate and the tablet pooler.

pub mod keyrange;
pub mod vindex;

/// Generated gRPC code for the tablet service.
pub mod tablet {
    tonic::include_proto!("tessera.tablet");
}

/// Generated gRPC code for the topology service (the remote `TopoStore`).
pub mod topo {
    tonic::include_proto!("tessera.topo");
}
