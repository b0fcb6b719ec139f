//! The last warnings and errors the daemon logged, for `sockmesh status`: operators see what went
//! wrong recently without digging through the journal.
use crate::locks::Locked;
use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

const KEEP: usize = 20;

#[derive(Clone, Debug, Serialize)]
pub struct Recent {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub level: String,
    pub message: String,
}

fn ring() -> &'static Mutex<VecDeque<Recent>> {
    static RING: OnceLock<Mutex<VecDeque<Recent>>> = OnceLock::new();
    RING.get_or_init(|| Mutex::new(VecDeque::with_capacity(KEEP)))
}

/// The most recent warnings and errors, oldest first.
pub fn snapshot() -> Vec<Recent> {
    ring().locked().iter().cloned().collect()
}

/// A tracing layer recording WARN and ERROR events.
pub struct RecentErrors;

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        } else {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }
}

impl<S: Subscriber> Layer<S> for RecentErrors {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut r = ring().locked();
        if r.len() == KEEP {
            r.pop_front();
        }
        r.push_back(Recent {
            at,
            level: level.to_string(),
            message: m.0,
        });
    }
}
