//! modelgate decides whether a caller may use a hosted LLM API, from Cedar policies kept in
//! files.
//!
//! Load a policy directory, its schema and its entity data once into an [`Engine`], then call
//! [`Engine::check`] for each request. Every decision is a value that names the policies
//! that decided it, with their file and line, their `@reason`, and the HTTP status
//! (`@status`: 401, 403 or 429) a caller should return for a denial.
//!
//! For token quotas, call [`Engine::check_and_reserve`] instead, then [`Engine::commit`] the
//! usage the provider reports or [`Engine::release`] the reservation; see [`quota`].
//!
//! ```
//! use modelgate::{CheckRequest, Engine, LoadOptions, Outcome};
//!
//! let engine = Engine::load(LoadOptions::new("policies", "schema"))?;
//! let request = CheckRequest::for_model("ApiKey::\"key-ana-old\"", "chat", "mistral-small-latest")?;
//! let decision = engine.check(&request)?;
//! assert_eq!(decision.decision, Outcome::Deny);
//! assert_eq!(decision.status.map(|s| s.code()), Some(401));
//! assert_eq!(decision.policy_ids(), ["revoked-api-key"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod clock;
mod context;
pub mod decision;
pub mod diagnostic;
pub mod engine;
mod inline;
pub mod load;
mod parents;
pub mod quota;
pub mod reload;
pub mod render;
pub mod request;
mod slice;
pub mod snapshot;
pub mod testing;
pub mod validate;

pub use clock::{Clock, ManualClock, SystemClock};
pub use decision::{Decision, Effect, EvaluationError, Outcome, PolicyRef, Reason, Status};
pub use diagnostic::{Diagnostic, Location, Severity, SourceFile};
pub use engine::{Engine, EngineOptions, EngineStatus, ErrorPolicy, DEFAULT_RESERVATION_TTL};
pub use load::LoadOptions;
pub use quota::{
    ActualUsage, Admission, Counters, Ledger, MemoryLedger, QuotaError, ReservationId, ScopeKind,
    SqliteLedger, UsageView, Window,
};
pub use reload::{FileWatcher, LiveEngine, LiveStatus, ReloadEvent, WatchConfig, WatchMode};
pub use request::{CheckRequest, RequestError, RequestFacts};
pub use snapshot::{LoadError, Snapshot};
pub use validate::{validate, ValidationReport};
