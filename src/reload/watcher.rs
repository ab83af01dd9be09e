//! A generic file watcher: watches files and directory trees with `notify` and hands
//! debounced change batches to a callback on its own thread.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind};
use notify::{Event, EventKind, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};

use super::debounce::{ChangeBatch, Debouncer};

/// The quiet period after the last file event before a batch is delivered.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);

/// Default time between two scans in [`WatchMode::Poll`].
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Source of file change notices: operating system events or polling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchMode {
    /// The operating system's file events (inotify on Linux). The default.
    #[default]
    Native,
    /// Scanning the watched files at a fixed interval, for file systems that deliver no
    /// events (network mounts, some container volumes).
    Poll {
        /// Time between two scans.
        interval: Duration,
    },
}

/// Settings of a [`FileWatcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchConfig {
    /// Quiet period after the last relevant event before a batch is delivered.
    pub debounce: Duration,
    /// Native file events or polling.
    pub mode: WatchMode,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            debounce: DEFAULT_DEBOUNCE,
            mode: WatchMode::Native,
        }
    }
}

impl WatchConfig {
    /// Sets the debounce period.
    pub fn with_debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// Switches to polling every `interval`.
    pub fn polling(mut self, interval: Duration) -> Self {
        self.mode = WatchMode::Poll { interval };
        self
    }
}

/// One file or directory tree to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRoot {
    /// A file, or a directory watched with everything below it. It may be missing when
    /// the watcher starts, as long as its parent directory exists.
    pub path: PathBuf,
    /// File extensions (without the dot) whose changes count, inside a directory root;
    /// empty means every file.
    pub extensions: Vec<String>,
}

impl WatchRoot {
    /// Watches `path` for changes to files with any of `extensions`.
    pub fn new(path: impl Into<PathBuf>, extensions: &[&str]) -> Self {
        Self {
            path: path.into(),
            extensions: extensions.iter().map(|ext| (*ext).to_string()).collect(),
        }
    }
}

/// The file watcher could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// `notify` could not create its watcher (for example the inotify instance limit is
    /// reached).
    #[error("cannot start the file watcher")]
    Start(#[source] notify::Error),
    /// The watcher thread could not be spawned.
    #[error("cannot start the file watcher thread")]
    Thread(#[source] io::Error),
}

impl miette::Diagnostic for WatchError {
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        match self {
            WatchError::Start(_) => Some(Box::new(
                "raise `fs.inotify.max_user_instances` or use polling mode",
            )),
            WatchError::Thread(_) => None,
        }
    }
}

/// Watches a set of roots and calls a callback with one [`ChangeBatch`] per burst of
/// changes, on a thread of its own. Dropping it stops the thread after the callback in
/// progress, if any, returns.
///
/// Directories are watched rather than single files, and the parent directory of every
/// root is watched too. This way files replaced by rename, roots removed and recreated,
/// and Kubernetes ConfigMap updates (an atomic swap of the hidden `..data` symlink) are
/// all seen. Watches are re-resolved after every event.
///
/// On Linux in [`WatchMode::Native`], a file counts as changed when it is closed after
/// writing, created, removed, renamed or has its metadata changed, but not on every
/// write, so a file being written in several chunks is not read half-written. Elsewhere,
/// and in polling mode, every modification counts.
///
/// ```no_run
/// use modelgate::reload::{FileWatcher, WatchConfig, WatchRoot};
///
/// let roots = vec![WatchRoot::new("policies", &["cedar"])];
/// let _watcher = FileWatcher::start(roots, WatchConfig::default(), |batch| {
///     println!("{} files changed", batch.paths.len());
/// })?;
/// # Ok::<(), modelgate::reload::WatchError>(())
/// ```
#[derive(Debug)]
pub struct FileWatcher {
    control: Sender<Message>,
    thread: Option<JoinHandle<()>>,
    config: WatchConfig,
}

impl FileWatcher {
    /// Starts watching `roots` and calls `on_change` for each debounced batch of changes.
    ///
    /// The roots are watched when this returns, so a change made afterwards is seen.
    pub fn start<F>(
        roots: Vec<WatchRoot>,
        config: WatchConfig,
        on_change: F,
    ) -> Result<Self, WatchError>
    where
        F: FnMut(ChangeBatch) + Send + 'static,
    {
        // inotify reports absolute paths, so relative roots would never match an event.
        // `std::path::absolute` keeps symlinks as they are, which the ConfigMap layout needs.
        let roots: Vec<WatchRoot> = roots
            .into_iter()
            .map(|mut root| {
                if let Ok(absolute) = std::path::absolute(&root.path) {
                    root.path = absolute;
                }
                root
            })
            .collect();
        let (sender, receiver) = mpsc::channel();
        let events = sender.clone();
        let handler = move |event: notify::Result<Event>| {
            // The receiver is gone only while the watcher shuts down.
            let _ = events.send(Message::Event(event));
        };
        let (watcher, close_events): (Box<dyn Watcher + Send>, bool) = match config.mode {
            WatchMode::Native => (
                Box::new(
                    RecommendedWatcher::new(handler, notify::Config::default())
                        .map_err(WatchError::Start)?,
                ),
                cfg!(target_os = "linux"),
            ),
            WatchMode::Poll { interval } => {
                let poll_config = notify::Config::default()
                    .with_poll_interval(interval)
                    .with_compare_contents(true);
                (
                    Box::new(PollWatcher::new(handler, poll_config).map_err(WatchError::Start)?),
                    false,
                )
            }
        };

        let mut worker = Worker {
            watcher,
            roots,
            active: BTreeMap::new(),
            failed: BTreeSet::new(),
            close_events,
            debouncer: Debouncer::new(config.debounce),
        };
        worker.refresh_watches();
        tracing::info!(
            mode = ?config.mode,
            debounce_ms = config.debounce.as_millis(),
            watches = ?worker.active.keys().collect::<Vec<_>>(),
            "file watcher started"
        );
        let thread = std::thread::Builder::new()
            .name("modelgate-watch".to_string())
            .spawn(move || worker.run(&receiver, on_change))
            .map_err(WatchError::Thread)?;
        Ok(Self {
            control: sender,
            thread: Some(thread),
            config,
        })
    }

    /// Returns the settings the watcher runs with.
    pub fn config(&self) -> WatchConfig {
        self.config
    }
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        // The send fails harmlessly when the thread has already ended.
        let _ = self.control.send(Message::Stop);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the file watcher thread panicked");
            }
        }
    }
}

enum Message {
    Event(notify::Result<Event>),
    Stop,
}

/// Watch mode of a path, and the file the path named when the watch was added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ActiveWatch {
    recursive: bool,
    identity: Identity,
}

struct Worker {
    watcher: Box<dyn Watcher + Send>,
    roots: Vec<WatchRoot>,
    active: BTreeMap<PathBuf, ActiveWatch>,
    /// Paths whose watch failed, warned about once until a watch succeeds again.
    failed: BTreeSet<PathBuf>,
    /// Whether the backend reports close-after-write, so plain writes can be ignored.
    close_events: bool,
    debouncer: Debouncer,
}

impl Worker {
    fn run(mut self, receiver: &Receiver<Message>, mut on_change: impl FnMut(ChangeBatch)) {
        loop {
            let message = match self.debouncer.deadline() {
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match receiver.recv_timeout(wait) {
                        Ok(message) => Some(message),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                None => match receiver.recv() {
                    Ok(message) => Some(message),
                    Err(_) => return,
                },
            };
            match message {
                Some(Message::Stop) => return,
                Some(Message::Event(event)) => self.handle(event),
                None => {}
            }
            if let Some(batch) = self.debouncer.take_due(Instant::now()) {
                tracing::debug!(
                    events = batch.events,
                    paths = batch.paths.len(),
                    rescan = batch.rescan,
                    "file changes settled"
                );
                on_change(batch);
            }
        }
    }

    fn handle(&mut self, event: notify::Result<Event>) {
        let now = Instant::now();
        match event {
            Ok(event) => {
                self.refresh_watches();
                if event.need_rescan() {
                    tracing::warn!("the file watcher lost events; rereading every watched file");
                    self.debouncer.record(event.paths, true, now);
                    return;
                }
                if !self.counts(&event.kind) {
                    return;
                }
                let relevant: Vec<PathBuf> = event
                    .paths
                    .into_iter()
                    .filter(|path| {
                        self.roots
                            .iter()
                            .any(|root| is_relevant(root, path, &event.kind))
                    })
                    .collect();
                if !relevant.is_empty() {
                    self.debouncer.record(relevant, false, now);
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, paths = ?error.paths, "file watcher error; rereading every watched file");
                self.refresh_watches();
                self.debouncer.record(error.paths, true, now);
            }
        }
    }

    /// Returns whether an event of this kind can mean that a file's content changed.
    fn counts(&self, kind: &EventKind) -> bool {
        match kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            EventKind::Create(_) | EventKind::Remove(_) => true,
            EventKind::Modify(ModifyKind::Name(_) | ModifyKind::Metadata(_)) => true,
            // With close-after-write events, a write in progress is not yet a change.
            EventKind::Modify(_) => !self.close_events,
            EventKind::Any | EventKind::Other => true,
        }
    }

    /// Watches each directory root recursively and each root's parent directory
    /// non-recursively, re-adding a watch when the path now names another file (a
    /// directory removed and recreated, or a symlink swapped).
    fn refresh_watches(&mut self) {
        let desired = desired_watches(&self.roots);
        let stale: Vec<PathBuf> = self
            .active
            .iter()
            .filter(|(path, watch)| desired.get(*path) != Some(*watch))
            .map(|(path, _)| path.clone())
            .collect();
        for path in stale {
            self.active.remove(&path);
            // The watch is often gone already because its directory was removed.
            if let Err(error) = self.watcher.unwatch(&path) {
                tracing::debug!(path = %path.display(), error = %error, "unwatch failed");
            }
        }
        for (path, watch) in desired {
            if self.active.contains_key(&path) {
                continue;
            }
            let mode = if watch.recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match self.watcher.watch(&path, mode) {
                Ok(()) => {
                    self.failed.remove(&path);
                    self.active.insert(path, watch);
                }
                Err(error) => {
                    if self.failed.insert(path.clone()) {
                        tracing::warn!(path = %path.display(), error = %error, "cannot watch path; retrying on the next file event");
                    }
                }
            }
        }
    }
}

/// Computes the watches the roots need now. Each existing directory root is watched
/// recursively unless it is inside another one, and each root's existing parent directory
/// non-recursively.
fn desired_watches(roots: &[WatchRoot]) -> BTreeMap<PathBuf, ActiveWatch> {
    let mut directories: BTreeMap<PathBuf, Identity> = BTreeMap::new();
    for root in roots {
        if let Some(identity) = identity(&root.path).filter(|identity| identity.directory) {
            directories.insert(root.path.clone(), identity);
        }
    }
    let outermost: BTreeMap<PathBuf, Identity> = directories
        .iter()
        .filter(|(path, _)| {
            !directories
                .keys()
                .any(|other| other != *path && path.starts_with(other))
        })
        .map(|(path, identity)| (path.clone(), *identity))
        .collect();

    let mut desired: BTreeMap<PathBuf, ActiveWatch> = outermost
        .iter()
        .map(|(path, identity)| {
            let watch = ActiveWatch {
                recursive: true,
                identity: *identity,
            };
            (path.clone(), watch)
        })
        .collect();
    for root in roots {
        let parent = parent_dir(&root.path);
        if outermost.keys().any(|covered| parent.starts_with(covered)) {
            continue;
        }
        if let Some(identity) = identity(&parent).filter(|identity| identity.directory) {
            let watch = ActiveWatch {
                recursive: false,
                identity,
            };
            desired.entry(parent).or_insert(watch);
        }
    }
    desired
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Returns whether a change to `path` concerns `root`.
///
/// Hidden entries (a name starting with a dot, such as editor swap files) are ignored,
/// except names starting with two dots. Kubernetes keeps a mounted ConfigMap's files in a
/// hidden `..<timestamp>` directory behind the `..data` symlink. It updates them by
/// swapping that symlink, so only hidden paths change.
fn is_relevant(root: &WatchRoot, path: &Path, kind: &EventKind) -> bool {
    if path == root.path {
        return true;
    }
    if let Ok(inside) = path.strip_prefix(&root.path) {
        return is_relevant_inside(root, inside, path, kind);
    }
    // A change next to a root: only a ConfigMap swap in the root's own directory counts.
    let sibling = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let same_dir = sibling == parent_dir(&root.path)
        || (sibling.as_os_str().is_empty() && parent_dir(&root.path) == Path::new("."));
    same_dir
        && path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with(".."))
}

fn is_relevant_inside(root: &WatchRoot, inside: &Path, path: &Path, kind: &EventKind) -> bool {
    let names: Vec<String> = inside
        .components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    if names.iter().any(|name| name.starts_with("..")) {
        return true;
    }
    if names.iter().any(|name| name.starts_with('.')) {
        return false;
    }
    let extension_matches = root.extensions.is_empty()
        || path
            .extension()
            .is_some_and(|ext| root.extensions.iter().any(|wanted| ext == wanted.as_str()));
    if extension_matches {
        return true;
    }
    // A directory appearing, disappearing or moving can add or remove watched files. A
    // renamed or removed path no longer exists, so a name without extension counts too.
    match kind {
        EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder) => true,
        EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => {
            path.extension().is_none() && !path.is_file()
        }
        _ => path.is_dir(),
    }
}

/// Identity of the file a path names, to notice a replaced directory or a swapped symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    device: u64,
    inode: u64,
    directory: bool,
}

#[cfg(unix)]
fn identity(path: &Path) -> Option<Identity> {
    use std::os::unix::fs::MetadataExt;
    let metadata = fs::metadata(path).ok()?;
    Some(Identity {
        device: metadata.dev(),
        inode: metadata.ino(),
        directory: metadata.is_dir(),
    })
}

#[cfg(not(unix))]
fn identity(path: &Path) -> Option<Identity> {
    // NOTE: without inode numbers a directory removed and recreated between two events
    // keeps its old watch until it is removed again.
    let metadata = fs::metadata(path).ok()?;
    Some(Identity {
        device: 0,
        inode: 0,
        directory: metadata.is_dir(),
    })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests fail on any unexpected state"
)]
mod tests {
    use super::*;
    use notify::event::{DataChange, RenameMode};

    fn policies() -> WatchRoot {
        WatchRoot::new("/srv/policies", &["cedar"])
    }

    fn relevant(path: &str, kind: EventKind) -> bool {
        is_relevant(&policies(), Path::new(path), &kind)
    }

    #[test]
    fn relevance_of_paths() {
        let close = EventKind::Access(AccessKind::Close(AccessMode::Write));
        let cases = [
            ("/srv/policies/a.cedar", true),
            ("/srv/policies/team/b.cedar", true),
            ("/srv/policies/notes.md", false),
            ("/srv/policies/.a.cedar.swp", false),
            ("/srv/policies/.hidden/a.cedar", false),
            ("/srv/policies/..data", true),
            ("/srv/policies/..2026_01_01_00_00_00.123/a.cedar", true),
            ("/srv/policies", true),
            ("/srv/other.cedar", false),
            ("/srv/..data", true),
            ("/srv/policies-old/a.cedar", false),
        ];
        for (path, expected) in cases {
            assert_eq!(relevant(path, close), expected, "{path}");
        }
    }

    #[test]
    fn removed_directory_without_extension_counts() {
        let removed = EventKind::Remove(RemoveKind::Folder);
        assert!(relevant("/srv/policies/team", removed));
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        assert!(relevant("/srv/policies/team", renamed));
        let removed_backup = EventKind::Remove(RemoveKind::File);
        assert!(!relevant("/srv/policies/a.cedar~", removed_backup));
    }

    #[test]
    fn plain_writes_count_only_without_close_events() {
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        let close = EventKind::Access(AccessKind::Close(AccessMode::Write));
        for close_events in [true, false] {
            let worker = Worker {
                watcher: Box::new(notify::NullWatcher),
                roots: vec![policies()],
                active: BTreeMap::new(),
                failed: BTreeSet::new(),
                close_events,
                debouncer: Debouncer::new(DEFAULT_DEBOUNCE),
            };
            assert_eq!(worker.counts(&write), !close_events);
            assert!(!worker.counts(&open));
            assert!(worker.counts(&close));
        }
    }

    #[test]
    fn nested_root_is_covered_by_outer_watch() {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        let entities = policies.join("entities");
        fs::create_dir_all(&entities).unwrap();
        let schema = dir.path().join("schema.cedarschema");
        fs::write(&schema, "entity A;").unwrap();
        let roots = vec![
            WatchRoot::new(&policies, &["cedar"]),
            WatchRoot::new(&entities, &["json"]),
            WatchRoot::new(&schema, &["cedarschema"]),
        ];

        let desired = desired_watches(&roots);
        let recursive: Vec<&PathBuf> = desired
            .iter()
            .filter(|(_, w)| w.recursive)
            .map(|(p, _)| p)
            .collect();
        let flat: Vec<&PathBuf> = desired
            .iter()
            .filter(|(_, w)| !w.recursive)
            .map(|(p, _)| p)
            .collect();
        assert_eq!(recursive, [&policies]);
        assert_eq!(flat, [&dir.path().to_path_buf()]);
    }
}
