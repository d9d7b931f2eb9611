//! Wire formats shared by the Caliopen crates: the protobuf schemas (compiled
//! at build time with protox, no system `protoc`), the label extension's ASN.1
//! module and strict DER codec, directory signature verification, and protocol
//! constants. No I/O happens here.
#![forbid(unsafe_code)]

pub mod der;
pub mod directory;
pub mod label;

pub use directory::{decode_and_verify, verify_signed_directory, DirectoryError, RootKey};
pub use label::{Label, LabelError, LABEL_OID, LABEL_OID_DER};

/// ALPN protocol id of the mesh (RFC 7301 §3.1: an opaque, non-empty byte
/// string both sides must offer; not in the IANA registry of §6, since only
/// Caliopen members speak it).
pub const MESH_ALPN: &[u8] = b"caliopen/1";

/// Version of the mesh protocol spoken by this build.
pub const MESH_PROTOCOL_VERSION: u32 = 1;

/// Version of this software, as compared with the directory's security baseline.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The encoded `FileDescriptorSet` of every schema, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/caliopen_descriptor.bin"));

/// Generated protobuf and gRPC code, one module per protobuf package.
pub mod pb {
    /// Protobuf packages under `caliopen.`.
    pub mod caliopen {
        /// `caliopen.directory`.
        pub mod directory {
            /// The signed member directory.
            #[allow(missing_docs, clippy::all)]
            pub mod v1 {
                tonic::include_proto!("caliopen.directory.v1");
            }
        }
        /// `caliopen.association`.
        pub mod association {
            /// The association service (`caliopen-ca serve`).
            #[allow(missing_docs, clippy::all)]
            pub mod v1 {
                tonic::include_proto!("caliopen.association.v1");
            }
        }
        /// `caliopen.caadmin`.
        pub mod caadmin {
            /// Local administration of a running association service.
            #[allow(missing_docs, clippy::all)]
            pub mod v1 {
                tonic::include_proto!("caliopen.caadmin.v1");
            }
        }
        /// `caliopen.instanceadmin`.
        pub mod instanceadmin {
            /// Local administration of a running instance.
            #[allow(missing_docs, clippy::all)]
            pub mod v1 {
                tonic::include_proto!("caliopen.instanceadmin.v1");
            }
        }
        /// `caliopen.client`.
        pub mod client {
            /// The client API of an instance.
            #[allow(missing_docs, clippy::all)]
            pub mod v1 {
                tonic::include_proto!("caliopen.client.v1");
            }
        }
        /// `caliopen.mesh`.
        pub mod mesh {
            /// The mesh protocol between members.
            #[allow(missing_docs, clippy::all)]
            pub mod v1 {
                tonic::include_proto!("caliopen.mesh.v1");
            }
        }
    }
    pub use caliopen::association::v1 as association;
    pub use caliopen::caadmin::v1 as ca_admin;
    pub use caliopen::client::v1 as client;
    pub use caliopen::directory::v1 as directory;
    pub use caliopen::instanceadmin::v1 as instance_admin;
    pub use caliopen::mesh::v1 as mesh;
}
