//! carehub's gRPC contracts, generated at build time from `proto/carehub/**.proto`.
//!
//! One module per proto package; `FILE_DESCRIPTOR_SET` feeds gRPC reflection.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// Encoded `google.protobuf.FileDescriptorSet` of every carehub proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("carehub_descriptor");

pub mod common {
    pub mod v1 {
        tonic::include_proto!("carehub.common.v1");
    }
}

pub mod identity {
    pub mod v1 {
        tonic::include_proto!("carehub.identity.v1");
    }
}

pub mod audit {
    pub mod v1 {
        tonic::include_proto!("carehub.audit.v1");
    }
}
