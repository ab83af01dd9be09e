//! Trailing debounce: collects file changes until no new change arrived for a quiet period.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The changes collected during one burst of file events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeBatch {
    /// Every changed path reported during the burst, sorted and without duplicates.
    pub paths: BTreeSet<PathBuf>,
    /// Number of relevant file events in the burst.
    pub events: usize,
    /// Set when the watcher lost events (for example an inotify queue overflow) or
    /// reported an error, so any watched file may have changed.
    pub rescan: bool,
}

/// Collects changes and releases them as one [`ChangeBatch`] once `quiet` has passed
/// without a new change.
#[derive(Debug)]
pub(crate) struct Debouncer {
    quiet: Duration,
    pending: Option<ChangeBatch>,
    last_change: Option<Instant>,
}

impl Debouncer {
    pub(crate) fn new(quiet: Duration) -> Self {
        Self {
            quiet,
            pending: None,
            last_change: None,
        }
    }

    /// Adds one change seen at `now` and restarts the quiet period.
    pub(crate) fn record(
        &mut self,
        paths: impl IntoIterator<Item = PathBuf>,
        rescan: bool,
        now: Instant,
    ) {
        let batch = self.pending.get_or_insert_with(ChangeBatch::default);
        batch.paths.extend(paths);
        batch.events += 1;
        batch.rescan |= rescan;
        self.last_change = Some(now);
    }

    /// Returns when the pending batch becomes due, or `None` when nothing is pending.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.pending.as_ref()?;
        self.last_change.map(|last| last + self.quiet)
    }

    /// Takes the pending batch if its quiet period has passed at `now`.
    pub(crate) fn take_due(&mut self, now: Instant) -> Option<ChangeBatch> {
        let deadline = self.deadline()?;
        if now < deadline {
            return None;
        }
        self.last_change = None;
        self.pending.take()
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests fail on any unexpected state"
)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_millis(200);

    #[test]
    fn nothing_pending_has_no_deadline() {
        let mut debouncer = Debouncer::new(QUIET);
        assert_eq!(debouncer.deadline(), None);
        assert_eq!(debouncer.take_due(Instant::now()), None);
    }

    #[test]
    fn burst_becomes_one_batch_after_quiet_period() {
        let start = Instant::now();
        let mut debouncer = Debouncer::new(QUIET);
        for step in 0..300u64 {
            let now = start + Duration::from_millis(step);
            debouncer.record([PathBuf::from(format!("p{}.cedar", step % 3))], false, now);
            assert_eq!(debouncer.take_due(now), None, "released during the burst");
        }
        let last = start + Duration::from_millis(299);
        assert_eq!(debouncer.deadline(), Some(last + QUIET));
        assert_eq!(
            debouncer.take_due(last + QUIET - Duration::from_millis(1)),
            None
        );

        let batch = debouncer.take_due(last + QUIET);
        let Some(batch) = batch else {
            panic!("no batch after the quiet period");
        };
        assert_eq!(batch.events, 300);
        assert_eq!(batch.paths.len(), 3);
        assert!(!batch.rescan);
        assert_eq!(debouncer.deadline(), None);
    }

    #[test]
    fn rescan_flag_is_kept_for_the_batch() {
        let now = Instant::now();
        let mut debouncer = Debouncer::new(QUIET);
        debouncer.record([], true, now);
        debouncer.record([PathBuf::from("a.cedar")], false, now);
        let batch = debouncer.take_due(now + QUIET);
        assert_eq!(batch.map(|batch| batch.rescan), Some(true));
    }
}
