//! End-to-end tests: the real binaries, started as processes, driven over HTTP.
//! One test binary with a module per area keeps link times down.

mod agent_api;
mod agent_config;
mod agent_report;
mod arm64;
mod audit;
mod cli;
mod cluster;
mod compile_bombs;
mod connections;
mod control_plane;
mod dashboard;
mod durations;
mod ephemeral_storage;
mod first_run;
mod grants;
mod ha;
mod identity;
mod install;
mod mixed_versions;
mod module_cache;
mod module_sources;
mod nat;
mod packaging;
mod peers;
mod process;
mod registries;
mod rollouts;
mod rotation;
mod runtime;
mod sandbox;
mod security;
mod services;
mod store;
mod tour;
mod version_skew;
