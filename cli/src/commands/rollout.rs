//! `wasmlet rollout status|pause|resume|undo WORKLOAD`: watch and steer how a
//! changed workload reaches its instances (`spec.rollout`: Canary or Waves).

use clap::{Args, Subcommand};
use reqwest::Method;

use super::{Session, print};
use crate::Result;

/// Show, pause, resume or undo a workload's rollout.
#[derive(Debug, Args)]
pub struct Rollout {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// The revision, the step under way with its traffic weight, the gates' readings and the history.
    Status { workload: String },
    /// Hold the rollout at its step (the gates still watch, and roll back a failing one).
    Pause { workload: String },
    /// Go on from the step it was paused at (the step's hold counts again).
    Resume { workload: String },
    /// During a rollout: back to the previous revision at once. After one: roll out the previous revision again.
    Undo { workload: String },
}

impl Rollout {
    pub fn execute(self, session: &Session) -> Result<()> {
        let client = session.client()?;
        let (verb, workload) = match &self.action {
            Action::Status { workload } => {
                let record: wasmlet_api::Rollout = client.get(&format!("/workloads/{workload}/rollout"))?;
                print(&crate::describe::rollout(&record.status, chrono::Utc::now()));
                return Ok(());
            }
            Action::Pause { workload } => ("pause", workload),
            Action::Resume { workload } => ("resume", workload),
            Action::Undo { workload } => ("undo", workload),
        };
        let record: wasmlet_api::Rollout =
            client.send_json(Method::POST, &format!("/workloads/{workload}/rollout/{verb}"), &serde_json::json!({}))?;
        let done = match verb {
            "pause" => "paused",
            "resume" => "resumed",
            _ => "undone",
        };
        print(&format!("workload/{workload} rollout {done}: revision {}, {}\n", record.status.revision, record.status.message));
        Ok(())
    }
}
