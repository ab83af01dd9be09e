//! The live engine handle: an [`Engine`] that reloads itself when its policy, schema or
//! entity files change, and reports what each reload did.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::decision::Decision;
use crate::diagnostic::Diagnostic;
use crate::engine::{Engine, EngineStatus};
use crate::load::LoadOptions;
use crate::request::{CheckRequest, RequestError};
use crate::snapshot::{LoadError, Snapshot};

use super::debounce::ChangeBatch;
use super::watcher::{FileWatcher, WatchConfig, WatchError, WatchRoot};

/// Kinds of source files that differ between two snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangedSources {
    /// A `.cedarschema` file was added, removed or changed.
    pub schema: bool,
    /// A `.cedar` policy file was added, removed or changed.
    pub policies: bool,
    /// An entity JSON file was added, removed or changed.
    pub entities: bool,
}

impl ChangedSources {
    /// Compares the source files of two snapshots.
    pub fn between(before: &Snapshot, after: &Snapshot) -> Self {
        let old: HashMap<&Path, &str> = before
            .sources()
            .iter()
            .map(|source| (source.path.as_path(), &*source.text))
            .collect();
        let new: HashMap<&Path, &str> = after
            .sources()
            .iter()
            .map(|source| (source.path.as_path(), &*source.text))
            .collect();
        let mut changed = Self::default();
        let added_or_changed = new
            .iter()
            .filter(|(path, text)| old.get(*path) != Some(*text))
            .map(|(path, _)| *path);
        let removed = old.keys().filter(|path| !new.contains_key(*path)).copied();
        for path in added_or_changed.chain(removed) {
            match path.extension().and_then(|ext| ext.to_str()) {
                Some("cedarschema") => changed.schema = true,
                Some("cedar") => changed.policies = true,
                _ => changed.entities = true,
            }
        }
        changed
    }

    /// Names the changed kinds, such as `schema, policies`, or `nothing`.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = [
            (self.schema, "schema"),
            (self.policies, "policies"),
            (self.entities, "entities"),
        ]
        .into_iter()
        .filter(|(changed, _)| *changed)
        .map(|(_, name)| name)
        .collect();
        if names.is_empty() {
            "nothing".to_string()
        } else {
            names.join(", ")
        }
    }
}

/// A successful reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Generation of the snapshot now in use.
    pub generation: u64,
    /// Number of policies in the new snapshot.
    pub policy_count: usize,
    /// Number of entities in the new snapshot, including action entities.
    pub entity_count: usize,
    /// Time spent reading, parsing, validating and swapping.
    pub duration: Duration,
    /// Kinds of source files changed since the previous snapshot.
    pub changed: ChangedSources,
    /// Warnings of the new snapshot (review lints and Cedar's validation warnings).
    pub warnings: Vec<Diagnostic>,
}

/// The outcome of one reload attempt of a [`LiveEngine`].
#[derive(Debug, Clone)]
pub enum ReloadEvent {
    /// A new snapshot is in use.
    Reloaded(ReloadSummary),
    /// The files still match the snapshot in use, so nothing was swapped. Any earlier
    /// reload error is cleared.
    Unchanged {
        /// Generation of the snapshot in use.
        generation: u64,
        /// Time spent reading and comparing.
        duration: Duration,
    },
    /// The files changed while they were being read, so nothing was swapped. The change
    /// produced its own file event, which starts another attempt once the files settle.
    Superseded {
        /// Generation of the snapshot in use.
        generation: u64,
        /// Time spent reading before the change was noticed.
        duration: Duration,
    },
    /// The files do not form a valid policy set; the previous snapshot stays in use.
    Rejected {
        /// Generation of the snapshot that stays in use.
        generation: u64,
        /// Every problem found, with file, line and column.
        error: LoadError,
        /// Time spent before rejecting.
        duration: Duration,
    },
}

/// The state of a [`LiveEngine`]: the engine's status plus reload counters.
#[derive(Debug, Clone)]
pub struct LiveStatus {
    /// Generation, load time, fingerprint, counts and last reload error.
    pub engine: EngineStatus,
    /// Reload attempts started by file changes, including the check at start.
    pub reload_attempts: u64,
    /// Attempts that were rejected.
    pub rejected_reloads: u64,
    /// Duration of the last attempt.
    pub last_reload_duration: Option<Duration>,
    /// The watcher's settings.
    pub watch: WatchConfig,
}

#[derive(Debug, Default)]
struct Counters {
    attempts: u64,
    rejected: u64,
    last_duration: Option<Duration>,
}

/// An [`Engine`] kept up to date with its files.
///
/// A watcher thread notices changes to the policy directory, the schema and the entity
/// files, waits until they settle, then loads and strictly validates the whole new set off
/// the decision path and swaps it in atomically. A decision reads one snapshot from start
/// to end. When the new files are invalid, missing, or a previously non-empty file is
/// found empty (probably caught while being written), the previous snapshot stays in use
/// and the error is kept for [`LiveEngine::status`].
///
/// ```no_run
/// use modelgate::reload::{LiveEngine, WatchConfig};
/// use modelgate::{Engine, LoadOptions};
///
/// let engine = Engine::load(LoadOptions::new("policies", "schema"))?;
/// let live = LiveEngine::start(engine, WatchConfig::default())?;
/// println!("serving generation {}", live.status().engine.generation);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct LiveEngine {
    engine: Arc<Engine>,
    counters: Arc<Mutex<Counters>>,
    watcher: FileWatcher,
}

impl LiveEngine {
    /// Starts watching the files `engine` was loaded from.
    pub fn start(engine: impl Into<Arc<Engine>>, config: WatchConfig) -> Result<Self, WatchError> {
        Self::start_with_observer(engine, config, |_| {})
    }

    /// Starts watching like [`LiveEngine::start`] and calls `observer` after every reload
    /// attempt, on the watcher thread.
    ///
    /// Right after the watch starts, the files are read once more, so a change made
    /// between loading the engine and starting the watch is not lost. That first attempt
    /// is reported too, usually as [`ReloadEvent::Unchanged`].
    pub fn start_with_observer(
        engine: impl Into<Arc<Engine>>,
        config: WatchConfig,
        observer: impl FnMut(&ReloadEvent) + Send + 'static,
    ) -> Result<Self, WatchError> {
        let engine = engine.into();
        let counters = Arc::new(Mutex::new(Counters::default()));
        let reloader = Arc::new(Mutex::new(Reloader {
            engine: Arc::clone(&engine),
            counters: Arc::clone(&counters),
            observer: Box::new(observer),
        }));
        let on_change = {
            let reloader = Arc::clone(&reloader);
            move |batch: ChangeBatch| {
                reloader
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .reload(&batch);
            }
        };
        let watcher = FileWatcher::start(watch_roots(engine.load_options()), config, on_change)?;
        reloader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reload(&ChangeBatch {
                rescan: true,
                ..ChangeBatch::default()
            });
        Ok(Self {
            engine,
            counters,
            watcher,
        })
    }

    /// Returns the engine, to share with request handlers.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Decides one request on the snapshot in use; see [`Engine::check`].
    pub fn check(&self, request: &CheckRequest) -> Result<Decision, RequestError> {
        self.engine.check(request)
    }

    /// Returns the engine's status and the reload counters.
    pub fn status(&self) -> LiveStatus {
        let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        LiveStatus {
            engine: self.engine.status(),
            reload_attempts: counters.attempts,
            rejected_reloads: counters.rejected,
            last_reload_duration: counters.last_duration,
            watch: self.watcher.config(),
        }
    }
}

/// Lists the files and directories an engine loads from, with the extensions the loader
/// reads.
pub fn watch_roots(options: &LoadOptions) -> Vec<WatchRoot> {
    let mut roots = vec![WatchRoot::new(&options.policy_dir, &["cedar"])];
    roots.extend(
        options
            .schema
            .iter()
            .map(|path| WatchRoot::new(path, &["cedarschema"])),
    );
    roots.extend(
        options
            .entities
            .iter()
            .map(|path| WatchRoot::new(path, &["json"])),
    );
    roots
}

type Observer = Box<dyn FnMut(&ReloadEvent) + Send>;

struct Reloader {
    engine: Arc<Engine>,
    counters: Arc<Mutex<Counters>>,
    observer: Observer,
}

impl Reloader {
    fn reload(&mut self, batch: &ChangeBatch) {
        let started = Instant::now();
        let mut changed = None;
        let mut moved_on = false;
        let result = self.engine.reload_checked(|current, next| {
            reject_emptied_files(current, next)?;
            if current.fingerprint() == next.fingerprint() {
                return Ok(false);
            }
            // Files are read one after another, so a change in the middle (such as a
            // ConfigMap swap) can mix two versions. The change also produced an event,
            // which starts the next attempt once the files settle.
            if !sources_match_disk(next) {
                moved_on = true;
                return Ok(false);
            }
            changed = Some((
                ChangedSources::between(current, next),
                next.policy_count(),
                next.entity_count(),
                next.warnings().to_vec(),
            ));
            Ok(true)
        });
        let duration = started.elapsed();

        let event = match (result, changed) {
            (Ok(generation), Some((changed, policy_count, entity_count, warnings))) => {
                tracing::info!(
                    generation,
                    changed = %changed.describe(),
                    duration_ms = duration.as_millis(),
                    changed_paths = batch.paths.len(),
                    "reload finished"
                );
                ReloadEvent::Reloaded(ReloadSummary {
                    generation,
                    policy_count,
                    entity_count,
                    duration,
                    changed,
                    warnings,
                })
            }
            (Ok(generation), None) if moved_on => {
                tracing::debug!("files changed while loading; waiting for them to settle");
                ReloadEvent::Superseded {
                    generation,
                    duration,
                }
            }
            (Ok(generation), None) => ReloadEvent::Unchanged {
                generation,
                duration,
            },
            (Err(error), _) => ReloadEvent::Rejected {
                generation: self.engine.snapshot().generation(),
                error,
                duration,
            },
        };

        {
            let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
            counters.attempts += 1;
            if matches!(event, ReloadEvent::Rejected { .. }) {
                counters.rejected += 1;
            }
            counters.last_duration = Some(duration);
        }
        (self.observer)(&event);
    }
}

/// Returns whether every file `snapshot` was read from still has the content that was read.
fn sources_match_disk(snapshot: &Snapshot) -> bool {
    snapshot
        .sources()
        .iter()
        .all(|source| fs::read_to_string(&source.path).is_ok_and(|text| *text == *source.text))
}

/// Rejects a snapshot in which a file is empty that was not empty in the snapshot in use.
///
/// A file that is truncated and then rewritten is empty for a while, and an empty policy
/// file is valid Cedar that silently drops its policies, so an empty file is treated as a
/// write in progress. The check runs again on the next change; to remove a file's
/// policies, delete the file.
fn reject_emptied_files(current: &Snapshot, next: &Snapshot) -> Result<(), LoadError> {
    let before: HashMap<&PathBuf, &str> = current
        .sources()
        .iter()
        .map(|source| (&source.path, &*source.text))
        .collect();
    let diagnostics: Vec<Diagnostic> = next
        .sources()
        .iter()
        .filter(|source| source.text.trim().is_empty())
        .filter(|source| {
            before
                .get(&source.path)
                .is_some_and(|text| !text.trim().is_empty())
        })
        .map(|source| {
            Diagnostic::error(
                "emptied-file",
                "file is now empty but had content in the policy set in use; it may be in the middle of being written",
            )
            .at_line_column(source, 1, 1)
            .with_help("write the new content to a temporary file and rename it over this one; delete the file to remove its policies")
        })
        .collect();
    if diagnostics.is_empty() {
        Ok(())
    } else {
        Err(LoadError::from_diagnostics(diagnostics))
    }
}
