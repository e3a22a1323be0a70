//! The `rookery` binary's integration tests, as one test binary; a module per concern. Each test
//! runs the binary (`CARGO_BIN_EXE_rookery`) as processes of its own.

mod cli;
mod cluster;
