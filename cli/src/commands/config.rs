//! `wasmlet config get-contexts|use-context|set-context|current-context`: the
//! named masters of the config file.

use clap::{Args, Subcommand};

use super::{Session, print};
use crate::config::Context;
use crate::table::Table;
use crate::{Error, Result};

/// Manage the contexts (named masters) of the config file.
#[derive(Debug, Args)]
pub struct Config {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// List the contexts; `*` marks the current one.
    GetContexts,
    /// Print the current context's name.
    CurrentContext,
    /// Make a context the current one.
    UseContext { name: String },
    /// Add a context or change one: `set-context NAME --master URL [--token T] [--certificate-authority FILE]`.
    SetContext { name: String },
}

impl Config {
    pub fn execute(self, session: &Session) -> Result<()> {
        let path = session.config_path()?;
        let mut file = session.config_file()?;
        match self.action {
            Action::GetContexts => {
                let mut table = Table::new(["CURRENT", "NAME", "MASTER"]);
                for c in &file.contexts {
                    let current = if file.current_context.as_deref() == Some(c.name.as_str()) { "*" } else { "" };
                    table.push([current.to_string(), c.name.clone(), c.master.clone()]);
                }
                print(&table.render(session.style, ""));
            }
            Action::CurrentContext => match &file.current_context {
                Some(name) => print(&format!("{name}\n")),
                None => return Err(Error::Usage(format!("no current context is set in {}", path.display()))),
            },
            Action::UseContext { name } => {
                if file.context(&name).is_none() {
                    return Err(Error::Usage(format!(
                        "no context `{name}` in {}: add it with `wasmlet config set-context {name} --master URL`",
                        path.display()
                    )));
                }
                file.current_context = Some(name.clone());
                file.save(&path)?;
                print(&format!("Switched to context \"{name}\".\n"));
            }
            Action::SetContext { name } => {
                // `--master`, `--token` and `--certificate-authority` are the global flags, here naming what the context holds.
                let (master, token) = (session.overrides.master.clone(), session.overrides.token.clone());
                let ca = session.overrides.certificate_authority.clone();
                let existing = file.context(&name).cloned();
                let master = master
                    .or_else(|| existing.as_ref().map(|c| c.master.clone()))
                    .ok_or_else(|| Error::Usage(format!("context `{name}` is new: give its master with --master URL")))?;
                let token = token.or_else(|| existing.as_ref().and_then(|c| c.token.clone()));
                let (certificate_authority, certificate_authority_data) = match ca {
                    Some(path) => (Some(std::path::absolute(&path).unwrap_or(path)), None),
                    None => existing
                        .as_ref()
                        .map(|c| (c.certificate_authority.clone(), c.certificate_authority_data.clone()))
                        .unwrap_or_default(),
                };
                file.set_context(Context { name: name.clone(), master, token, certificate_authority, certificate_authority_data });
                if file.current_context.is_none() {
                    file.current_context = Some(name.clone());
                }
                file.save(&path)?;
                let verb = if existing.is_some() { "modified" } else { "created" };
                print(&format!("Context \"{name}\" {verb}.\n"));
            }
        }
        Ok(())
    }
}
