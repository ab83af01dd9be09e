//! Reporters: each turns the runner's event stream into one output format.

mod human;
mod json;
mod junit;

use std::io;

pub use human::HumanReporter;
pub use json::JsonReporter;
pub use junit::JunitReporter;

use crate::testing::runner::Event;

/// Receives every event of a run, in order.
pub trait Reporter {
    /// Handles one event; an `Err` means the output could not be written.
    fn report(&mut self, event: &Event<'_>) -> io::Result<()>;
}
