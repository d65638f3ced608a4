//! The wire and storage schema of namm: one protobuf file for gRPC and for sled values.
