//! modelreg's gRPC contract, generated from `proto/modelreg/v1` at build time.
//!
//! # Layout
//!
//! - [`v1`]: the messages, enums, client and server stubs of `modelreg.v1`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors of every file, served by
//!   reflection and used to print messages as canonical JSON.
//! - [`duration`]: the one parser of durations typed on the command line
//!   (`10s`, `250ms`, `5m`), for the server's flags and the CLI's.
//! - [`display`]: how numbers are shown to people, in the server's messages
//!   and pages and in the CLI's tables.
//! - [`ACTOR_HEADER`]: the metadata key of the caller's name in local mode.
//!
//! Apart from that parser, that formatter and that name this crate holds no logic: the wire types stay at
//! the edges of the server and client, which convert them into their own
//! domain values.
#![forbid(unsafe_code)]

pub mod display;
pub mod duration;

/// The gRPC metadata key naming the caller in local mode (a server without
/// a token file): the server reads it, the clients send it.
pub const ACTOR_HEADER: &str = "x-modelreg-actor";

/// The `modelreg.v1` package.
pub mod v1 {
    #![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]
    tonic::include_proto!("modelreg.v1");
}

/// The encoded `FileDescriptorSet` of every `.proto` file of the contract
/// (with the well-known types it imports).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("modelreg_descriptor");
