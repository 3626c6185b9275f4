//! `wasmlet completion bash|zsh|fish`: a completion script for the shell.

use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use super::{Cli, Session};
use crate::Result;

/// Print a shell completion script (e.g. `source <(wasmlet completion bash)`).
#[derive(Debug, Args)]
pub struct Completion {
    shell: Shell,
}

impl Completion {
    pub fn execute(self, _session: &Session) -> Result<()> {
        let mut command = Cli::command();
        clap_complete::generate(self.shell, &mut command, "wasmlet", &mut std::io::stdout());
        Ok(())
    }
}
