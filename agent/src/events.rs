//! Events the agent records about its instances and manifests: a bounded,
//! newest-last list served at `/events`, each also written to the log.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmlet_api::{Event, EventType, ObjectReference};

/// How many events are kept; older ones are dropped first.
const CAPACITY: usize = 1000;

pub struct EventLog {
    source: String,
    events: Mutex<VecDeque<Event>>,
    sequence: AtomicU64,
}

impl EventLog {
    pub fn new(node: &str) -> Self {
        EventLog { source: format!("agent/{node}"), events: Mutex::new(VecDeque::new()), sequence: AtomicU64::new(0) }
    }

    pub fn record(&self, kind: EventType, reason: &str, object_kind: &str, object: &str, message: impl Into<String>) {
        let message = message.into();
        match kind {
            EventType::Normal => tracing::info!(reason, object = %format!("{object_kind}/{object}"), "{message}"),
            EventType::Warning => tracing::warn!(reason, object = %format!("{object_kind}/{object}"), "{message}"),
        }
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let event = Event::new(
            format!("{object}.{n}"),
            kind,
            reason,
            ObjectReference { kind: object_kind.to_string(), name: object.to_string() },
            message,
            self.source.clone(),
        );
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() == CAPACITY {
            events.pop_front();
        }
        events.push_back(event);
    }

    pub fn list(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}
