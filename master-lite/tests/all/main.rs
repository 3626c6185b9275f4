//! The master's integration tests: a real server on 127.0.0.1:0 with a temp
//! data dir, talked to over HTTP; fake nodes are plain HTTP clients speaking
//! the agent protocol. One test binary, one module per area.

mod api;
mod batches;
mod durability;
mod lifecycle;
mod protocol;
mod scheduling;
mod support;
