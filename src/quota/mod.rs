//! Token quotas: usage counters per scope and window, reservations, and the ledger that
//! stores committed usage.
//!
//! The engine puts the principal's current usage into the request context as
//! `context.usage.<scope>.<window>.<counter>` (see [`UsageView`]), so each limit is one plain
//! Cedar condition. [`crate::Engine::check_and_reserve`] evaluates and reserves the request's
//! estimate under one lock; [`crate::Engine::commit`] replaces the estimate with the actual
//! usage and writes it to the [`Ledger`].

mod audit;
mod counters;
mod ledger;
mod meter;
mod scope;
mod sqlite;
mod window;

pub use audit::{audit_keys, AuditOptions, Finding, KeyReport};
pub use counters::{Counters, UsageFileError, UsageView, COUNTER_MAX};
pub use ledger::{retention_millis, Bucket, Ledger, LedgerEntry, LedgerError, MemoryLedger};
pub(crate) use meter::Meter;
pub use meter::{ActualUsage, Admission, QuotaError, ReservationId};
pub(crate) use scope::{model_prices, Prices};
pub use scope::{ScopeKind, Scopes};
pub use sqlite::{SqliteLedger, DEFAULT_LEDGER_PATH};
pub use window::Window;
