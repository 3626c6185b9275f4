//! End-to-end tests: the real binaries, started as processes, driven over HTTP.
//! One test binary with a module per area keeps link times down.

mod agent_api;
mod agent_config;
mod agent_report;
mod arm64;
mod cli;
mod cluster;
mod connections;
mod durations;
mod install;
mod packaging;
mod runtime;
mod sandbox;
mod security;
mod services;
mod tour;
