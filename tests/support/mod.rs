//! Fixtures and waiting helpers shared by the hot reload tests: a policy set in a temporary
//! directory, atomic and in-place writes, and waits on the engine generation.

#![allow(
    dead_code,
    reason = "each test file uses a different part of the helpers"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test on a broken fixture"
)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use modelgate::reload::{LiveEngine, ReloadEvent, WatchConfig};
use modelgate::{CheckRequest, Engine, LoadOptions, Outcome};

/// How long a test waits for a reload before failing.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Debounce used by the tests: short, but long enough to merge one save's events.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// A schema with the request context the engine builds (`now`, `request`).
pub const SCHEMA: &str = r#"
entity Team;
entity ApiKey in [Team];
entity Model;
type RequestFacts = {
  input_tokens: Long,
  max_output_tokens: Long,
  total_tokens: Long,
  stream: Bool,
};
type RequestContext = {
  now: datetime,
  request: RequestFacts,
};
action inference;
action chat, embed in [inference] appliesTo {
  principal: [ApiKey],
  resource: [Model],
  context: RequestContext,
};
"#;

/// Keys k1 and k2 and one model.
pub const ENTITIES: &str = r#"[
  {"uid": {"type": "ApiKey", "id": "k1"}, "attrs": {}, "parents": []},
  {"uid": {"type": "ApiKey", "id": "k2"}, "attrs": {}, "parents": []},
  {"uid": {"type": "Model", "id": "mistral-small-latest"}, "attrs": {}, "parents": []}
]
"#;

/// Two policies: k1 denied, k2 allowed.
pub const V1: &str = r#"@id("chat-allowed")
permit(principal, action == Action::"chat", resource);
@id("k1-blocked")
forbid(principal == ApiKey::"k1", action, resource);
"#;

/// Three policies: k1 and k2 denied.
pub const V2: &str = r#"@id("chat-allowed")
permit(principal, action == Action::"chat", resource);
@id("k1-blocked")
forbid(principal == ApiKey::"k1", action, resource);
@id("k2-blocked")
forbid(principal == ApiKey::"k2", action, resource);
"#;

/// A policy directory, schema directory and entity directory in a temporary directory.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub policies: PathBuf,
    pub schema: PathBuf,
    pub entities: PathBuf,
}

impl Fixture {
    /// Creates the fixture with `policies.cedar` holding `policy_text`.
    pub fn new(policy_text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("pol");
        let schema = dir.path().join("schema");
        let entities = dir.path().join("entities");
        for path in [&policies, &schema, &entities] {
            fs::create_dir(path).unwrap();
        }
        fs::write(schema.join("schema.cedarschema"), SCHEMA).unwrap();
        fs::write(entities.join("entities.json"), ENTITIES).unwrap();
        fs::write(policies.join("policies.cedar"), policy_text).unwrap();
        Self {
            dir,
            policies,
            schema,
            entities,
        }
    }

    pub fn options(&self) -> LoadOptions {
        LoadOptions::new(&self.policies, &self.schema).with_entities(vec![self.entities.clone()])
    }

    pub fn policy_file(&self) -> PathBuf {
        self.policies.join("policies.cedar")
    }

    /// Loads the engine and starts watching with the test debounce.
    pub fn start(&self) -> LiveEngine {
        self.start_with(WatchConfig::default().with_debounce(DEBOUNCE))
    }

    pub fn start_with(&self, config: WatchConfig) -> LiveEngine {
        let engine = Engine::load(self.options()).unwrap();
        LiveEngine::start(engine, config).unwrap()
    }

    /// Starts like [`Fixture::start`] and also returns every reload event.
    pub fn start_observed(&self) -> (LiveEngine, mpsc::Receiver<ReloadEvent>) {
        let engine = Engine::load(self.options()).unwrap();
        let (sender, receiver) = mpsc::channel();
        let config = WatchConfig::default().with_debounce(DEBOUNCE);
        let live = LiveEngine::start_with_observer(engine, config, move |event| {
            let _ = sender.send(event.clone());
        })
        .unwrap();
        (live, receiver)
    }
}

/// Writes `text` to a hidden temporary file next to `path` and renames it over `path`,
/// the supported way to update a policy file.
pub fn write_atomic(path: &Path, text: &str) {
    let name = path.file_name().unwrap().to_string_lossy();
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&temporary, text).unwrap();
    fs::rename(&temporary, path).unwrap();
}

/// Decides a chat request of `key` on `mistral-small-latest`.
pub fn decide(engine: &Engine, key: &str) -> Outcome {
    let request = CheckRequest::for_model(
        &format!("ApiKey::\"{key}\""),
        "chat",
        "mistral-small-latest",
    )
    .unwrap();
    engine.check(&request).unwrap().decision
}

/// Waits until `condition` holds, checking every 5 ms, and returns whether it held in time.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the engine serves generation `generation` or later.
pub fn wait_for_generation(engine: &Engine, generation: u64, timeout: Duration) -> bool {
    wait_until(timeout, || engine.status().generation >= generation)
}

/// Waits until `live` has finished `attempts` reload attempts.
pub fn wait_for_attempts(live: &LiveEngine, attempts: u64, timeout: Duration) -> bool {
    wait_until(timeout, || live.status().reload_attempts >= attempts)
}

/// Waits for `count` debounce periods, for checks that nothing more happens.
pub fn settle(count: u32) {
    std::thread::sleep(DEBOUNCE * count);
}
