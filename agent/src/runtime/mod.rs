//! The WASM runtime: one wasmtime [`Engine`] shared by every workload on the node.

use wasmtime::{Config, Engine};

/// The wasmtime version this agent is built with.
pub const WASMTIME_VERSION: &str = wasmtime_environ::VERSION;

/// The agent's engine and how it was set up.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
}

impl Runtime {
    pub fn new() -> anyhow::Result<Self> {
        let mut config = Config::new();
        // Guests are interrupted by epochs rather than fuel: a timer bumps the
        // epoch, which costs a load and compare at loop heads, not per instruction.
        config.epoch_interruption(true);
        let engine = Engine::new(&config)?;
        Ok(Runtime { engine })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// One line for the Ready condition and `/status`.
    pub fn describe(&self) -> String {
        format!("runtime wasmtime {WASMTIME_VERSION} initialised")
    }
}
