//! carehub's gRPC contracts, generated at build time from `proto/carehub/**.proto`.
//!
//! One module per proto package; [`REFLECTION_DESCRIPTOR_SETS`] feed gRPC reflection.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// Encoded `google.protobuf.FileDescriptorSet` of every carehub proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("carehub_descriptor");

/// Encoded `google.protobuf.FileDescriptorSet` of the `google.rpc` error model — `Status` and the
/// error details carehub attaches to failures (`ErrorInfo`, `BadRequest`, `RetryInfo`,
/// `PreconditionFailure`, ...) with their imports (`google/protobuf/any.proto`, `duration.proto`).
/// It is the descriptor of the very types `tonic-types` encodes the details with, so a reflection
/// client (`grpcurl -v`) decodes them as they were written.
pub const ERROR_DETAILS_DESCRIPTOR_SET: &[u8] = tonic_types::pb::FILE_DESCRIPTOR_SET;

/// Every descriptor set a carehub server offers through reflection: its contracts and the
/// error details its failures carry.
pub const REFLECTION_DESCRIPTOR_SETS: [&[u8]; 2] =
    [FILE_DESCRIPTOR_SET, ERROR_DETAILS_DESCRIPTOR_SET];

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

pub mod records {
    pub mod v1 {
        tonic::include_proto!("carehub.records.v1");
    }
}

pub mod messaging {
    pub mod v1 {
        tonic::include_proto!("carehub.messaging.v1");
    }
}

pub mod scheduling {
    pub mod v1 {
        tonic::include_proto!("carehub.scheduling.v1");
    }
}

pub mod billing {
    pub mod v1 {
        tonic::include_proto!("carehub.billing.v1");
    }
}

pub mod audit {
    pub mod v1 {
        tonic::include_proto!("carehub.audit.v1");
    }
}
