//! Hot reload: a generic debounced file watcher and a live engine that reloads on change.

mod debounce;
mod live;
mod watcher;

pub use debounce::ChangeBatch;
pub use live::{watch_roots, ChangedSources, LiveEngine, LiveStatus, ReloadEvent, ReloadSummary};
pub use watcher::{
    FileWatcher, WatchConfig, WatchError, WatchMode, WatchRoot, DEFAULT_DEBOUNCE,
    DEFAULT_POLL_INTERVAL,
};
