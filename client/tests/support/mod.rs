//! What the client crate's end-to-end tests share.

pub mod servers;
