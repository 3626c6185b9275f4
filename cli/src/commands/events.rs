//! `wasmlet events [--for KIND/NAME] [-w]`: what happened, oldest first.

use chrono::Utc;
use clap::Args;
use wasmlet_api::Event;
use wasmlet_api::protocol::List;

use super::{Session, note, print, split_ref};
use crate::{Result, view};

/// Show events, optionally only those about one object.
#[derive(Debug, Args)]
pub struct Events {
    /// Only events about this object: `node/NAME`, `workload/NAME`, `instance/NAME`.
    #[arg(long = "for", value_name = "KIND/NAME")]
    object: Option<String>,
    /// Keep printing new events.
    #[arg(short, long)]
    watch: bool,
}

impl Events {
    pub fn execute(self, session: &Session) -> Result<()> {
        let client = session.client()?;
        let wanted = self.object.as_deref().map(|o| {
            let (kind, name) = split_ref(o, "node");
            (kind.trim_end_matches('s').to_lowercase(), name.to_string())
        });
        let matches = |e: &Event| match &wanted {
            Some((kind, name)) => e.involved_object.kind.to_lowercase() == *kind && e.involved_object.name == *name,
            None => true,
        };
        let list: List<Event> = client.list("/events", None)?;
        let mut events: Vec<Event> = list.items.into_iter().filter(|e| matches(e)).collect();
        events.sort_by_key(|e| e.time);
        let header = view::events(&events, Utc::now());
        if events.is_empty() && !self.watch {
            note("No events found.");
        } else {
            print(&header.render(session.style, ""));
        }
        if !self.watch {
            return Ok(());
        }
        let mut seen: std::collections::BTreeSet<String> = events.iter().map(|e| e.metadata.name.clone()).collect();
        let mut since = list.revision;
        loop {
            let Some(list) = client.watch::<Event>("/events", None, since)? else { continue };
            since = list.revision;
            let fresh: Vec<Event> = list.items.into_iter().filter(|e| matches(e) && seen.insert(e.metadata.name.clone())).collect();
            if !fresh.is_empty() {
                print(&view::events(&fresh, Utc::now()).render_rows(session.style, &header));
            }
        }
    }
}
