//! The store of committed usage: the [`Ledger`] trait and an in-memory implementation.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use super::counters::Counters;
use super::window::Window;

/// One counter row: a scope entity, a window kind and the window's start.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bucket {
    /// The scope entity as a Cedar reference, such as `Workspace::"ml-workspace"`.
    pub scope: String,
    /// The window kind.
    pub window: Window,
    /// The window's start, in milliseconds since the epoch (UTC).
    pub start: i64,
}

/// Committed usage of one request, to be added to every window of every scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The scope entities (Cedar references) the usage counts against.
    pub scopes: Vec<String>,
    /// The API key that made the request, for its last-use time.
    pub key: Option<String>,
    /// When the request was made, in milliseconds since the epoch; it selects the windows.
    pub at_millis: i64,
    /// The usage.
    pub usage: Counters,
}

/// Returns how long old windows are kept, in milliseconds: [`Ledger::prune`] deletes a
/// window that ended before the window containing `now - retention`. Minutes are kept for
/// 2 hours, hours for 2 days, days for 62 days and months for 400 days. Policies read only
/// the current window, and the rest is kept for reports.
pub fn retention_millis(window: Window) -> i64 {
    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;
    match window {
        Window::Minute => 2 * HOUR,
        Window::Hour => 2 * DAY,
        Window::Day => 62 * DAY,
        Window::Month => 400 * DAY,
    }
}

/// A ledger operation failed. The ledger is left as it was before the operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The ledger file could not be opened or is not a modelgate ledger.
    #[error("cannot open the usage ledger `{path}`: {message}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause, in words.
        message: String,
    },
    /// The ledger is locked by another process for longer than the busy timeout.
    #[error("the usage ledger is locked by another process: {0}")]
    Locked(String),
    /// A read or write failed, for example on a corrupted file or a full disk.
    #[error("the usage ledger failed: {0}")]
    Storage(String),
}

impl miette::Diagnostic for LedgerError {
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        let help = match self {
            LedgerError::Open { .. } => {
                "pass `--ledger PATH` with a ledger file that modelgate created, or a new path"
            }
            LedgerError::Locked(_) => "retry when the other process has finished writing",
            LedgerError::Storage(_) => "check the disk and the ledger file; nothing was recorded",
        };
        Some(Box::new(help))
    }
}

/// A store of committed usage counters.
///
/// Implementations must apply [`Ledger::add`] atomically: after a crash, either every
/// counter row of the entry was updated or none. The engine keeps pending reservations in
/// memory and calls the ledger only to read counters it has not cached and to add committed
/// usage, so one engine instance must be the only writer of a ledger.
pub trait Ledger: Send + Sync + std::fmt::Debug {
    /// Reads the counters of one bucket; zero when it has no row.
    fn read(&self, bucket: &Bucket) -> Result<Counters, LedgerError>;

    /// Adds one request's usage to every window of every scope in `entry`, atomically and
    /// durably, and updates the key's last-use time.
    fn add(&self, entry: &LedgerEntry) -> Result<(), LedgerError>;

    /// Returns every bucket of the windows that contain `now_millis`, with its counters.
    fn current(&self, now_millis: i64) -> Result<Vec<(Bucket, Counters)>, LedgerError>;

    /// Returns the last time each API key was used, in milliseconds since the epoch.
    fn last_used(&self) -> Result<HashMap<String, i64>, LedgerError>;

    /// Deletes windows older than their retention ([`retention_millis`]); returns the number
    /// of rows deleted.
    fn prune(&self, now_millis: i64) -> Result<u64, LedgerError>;
}

/// A ledger kept in memory: lost when the process ends. For tests and for `check` without
/// `--ledger`.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    buckets: BTreeMap<Bucket, Counters>,
    last_used: HashMap<String, i64>,
}

impl MemoryLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Ledger for MemoryLedger {
    fn read(&self, bucket: &Bucket) -> Result<Counters, LedgerError> {
        Ok(self.lock().buckets.get(bucket).copied().unwrap_or_default())
    }

    fn add(&self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        let mut state = self.lock();
        for scope in &entry.scopes {
            for window in Window::ALL {
                let bucket = Bucket {
                    scope: scope.clone(),
                    window,
                    start: window.start(entry.at_millis),
                };
                state.buckets.entry(bucket).or_default().add(&entry.usage);
            }
        }
        if let Some(key) = &entry.key {
            let last = state
                .last_used
                .entry(key.clone())
                .or_insert(entry.at_millis);
            *last = (*last).max(entry.at_millis);
        }
        Ok(())
    }

    fn current(&self, now_millis: i64) -> Result<Vec<(Bucket, Counters)>, LedgerError> {
        Ok(self
            .lock()
            .buckets
            .iter()
            .filter(|(bucket, _)| bucket.start == bucket.window.start(now_millis))
            .map(|(bucket, counters)| (bucket.clone(), *counters))
            .collect())
    }

    fn last_used(&self) -> Result<HashMap<String, i64>, LedgerError> {
        Ok(self.lock().last_used.clone())
    }

    fn prune(&self, now_millis: i64) -> Result<u64, LedgerError> {
        let mut state = self.lock();
        let before = state.buckets.len();
        state.buckets.retain(|bucket, _| {
            let window = bucket.window;
            bucket.start >= window.start(now_millis.saturating_sub(retention_millis(window)))
        });
        Ok(u64::try_from(before - state.buckets.len()).unwrap_or(0))
    }
}
