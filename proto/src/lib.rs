//! The wire and storage schema of namm: one protobuf file (`namm.proto`) for gRPC and for the
//! values the coordinator keeps in sled.

#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("namm.v1");
}

pub use v1::*;

pub mod bearer;
