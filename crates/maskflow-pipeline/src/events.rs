//! What the runner has to say, as events: the library never prints. The binary renders them (as
//! cargo's `Shell` or ripgrep's printer do); tests and embedders pass [`Silent`] or collect them.

use crate::shared::Via;
use maskflow_core::store::Outcome;
use std::path::Path;
use std::time::Duration;

/// One thing worth telling the user.
#[derive(Debug)]
pub enum Event<'a> {
    /// A stage instance's artifact was obtained (built, cached, pulled); `summary` is its report's line.
    Stage { name: &'a str, outcome: &'a Outcome, via: &'a Via, summary: String },
    /// The run ended and its record was written.
    RunDone { stages: usize, cached: usize, seconds: f64, record: &'a Path },
    /// Another machine holds the lease on a key this run needs: it waits for its manifest.
    Waiting { kind: &'a str, key: &'a str, holder: String, left: Duration },
    /// A splittable instance is fanned out as tasks.
    FanOut { instance: &'a str, tasks: usize, executor: &'a str, done: usize, plan: &'a str },
    /// A stage's message (`train   epoch 1 …`, `train: resuming from …`).
    Note { instance: &'a str, line: &'a str },
    /// Something that does not stop the run went wrong (a lease not renewed, a checkpoint not
    /// mirrored, a cache or run record not saved).
    Warning(String),
}

/// Where events go.
pub trait Events: Sync {
    fn event(&self, e: &Event);
}

/// A stage instance's notes as events.
pub struct InstanceNotes<'a> {
    pub events: &'a dyn Events,
    pub instance: &'a str,
}

impl maskflow_stage::Notes for InstanceNotes<'_> {
    fn note(&self, line: &str) {
        self.events.event(&Event::Note { instance: self.instance, line });
    }
}

/// Drops every event.
pub struct Silent;

impl Events for Silent {
    fn event(&self, _e: &Event) {}
}
