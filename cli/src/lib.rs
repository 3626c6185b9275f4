//! `wasmlet`, the command line for a wasmlet cluster: kubectl's verbs over the
//! master's REST API (`/api/v1`).
//!
//! # Layout
//! - `commands`: the command line itself (`Cli`), one file per command, each a
//!   struct with `execute()`; `main.rs` only parses and dispatches.
//! - `config`: where the master is: flags, `WASMLET_*` variables and the named
//!   contexts of `~/.config/wasmlet/config.toml`.
//! - `client`: blocking HTTP to the master; turns refused connections and
//!   error answers into [`Error`]s that say what to check.
//! - `manifest`: reads Workload manifests (files, directories, stdin; multi-document
//!   YAML or JSON) and checks them locally before anything is sent.
//! - `table`, `age`, `style`: kubectl-style column tables, ages (`45s`, `5m`, `2d`), colour.
//! - `view`: what `get` prints for each kind (rows of tables); `describe`: the
//!   `describe` pages. Both are pure functions of fixed objects and a `now`,
//!   so golden-file tests pin their layout.
#![forbid(unsafe_code)]

pub mod age;
pub mod client;
pub mod commands;
pub mod config;
pub mod describe;
pub mod error;
pub mod manifest;
pub mod style;
pub mod table;
pub mod view;

pub use error::Error;

/// The result of every command.
pub type Result<T, E = Error> = std::result::Result<T, E>;
