//! modelreg's gRPC contract, generated from `proto/modelreg/v1` at build time.
//!
//! # Layout
//!
//! - [`v1`]: the messages, enums, client and server stubs of `modelreg.v1`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors of every file, served by
//!   reflection and used to print messages as canonical JSON.
//! - [`duration`]: the one parser of durations typed on the command line
//!   (`10s`, `250ms`, `5m`), for the server's flags and the CLI's.
//!
//! Apart from that parser this crate holds no logic: the wire types stay at
//! the edges of the server and client, which convert them into their own
//! domain values.
#![forbid(unsafe_code)]

pub mod duration;

/// The `modelreg.v1` package.
pub mod v1 {
    #![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]
    tonic::include_proto!("modelreg.v1");
}

/// The encoded `FileDescriptorSet` of every `.proto` file of the contract
/// (with the well-known types it imports).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("modelreg_descriptor");
