//! In-memory counters and pending reservations in front of a [`Ledger`], behind one lock.
//!
//! `Engine::check_and_reserve` holds the lock from reading the counters through evaluating
//! the policies to adding the reservation, so no two reservations are decided on the same
//! counters. Committed usage is written to the ledger outside the lock.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::counters::{Counters, UsageView};
use super::ledger::{Bucket, Ledger, LedgerEntry, LedgerError};
use super::scope::{Prices, Scopes};
use super::window::Window;
use crate::decision::Decision;
use crate::slice::ContextNeeds;

/// The id of a pending reservation, returned by `Engine::check_and_reserve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReservationId(pub u64);

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The tokens a provider reports for a finished call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActualUsage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
}

/// The result of `Engine::check_and_reserve`: the decision, and the reservation made when
/// the request is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Admission {
    /// The decision.
    pub decision: Decision,
    /// The reservation holding the request's estimate; `None` for a denial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservation: Option<ReservationId>,
}

/// Recording usage failed. Nothing was recorded, and a reservation that was pending is
/// still pending.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// The reservation is unknown, or was already committed, released or expired.
    #[error("reservation `{0}` is not pending: it was never made, or was already committed, released or expired")]
    NotPending(ReservationId),
    /// A token count above the engine's ceiling.
    #[error("{field} is {value}, outside the accepted range 0..={max}")]
    TokensOutOfRange {
        /// The field name.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The ceiling.
        max: u64,
    },
    /// Usage for a principal that the entity data does not contain.
    #[error("principal `{0}` is not in the entity data, so its usage cannot be recorded")]
    UnknownPrincipal(String),
    /// The request naming the principal and model is malformed.
    #[error(transparent)]
    Request(#[from] crate::request::RequestError),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl miette::Diagnostic for QuotaError {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        match self {
            QuotaError::NotPending(_) => Some(Box::new(
                "commit or release each reservation once, before it expires",
            )),
            QuotaError::TokensOutOfRange { .. } => Some(Box::new(
                "report the token counts the provider returned for the call",
            )),
            QuotaError::UnknownPrincipal(_) => Some(Box::new(
                "name an API key or user from the entity data, such as `ApiKey::\"key-ana-ml\"`",
            )),
            QuotaError::Request(error) => miette::Diagnostic::help(error),
            QuotaError::Ledger(error) => miette::Diagnostic::help(error),
        }
    }
}

#[derive(Debug, Clone)]
struct Reservation {
    scopes: Vec<String>,
    key: Option<String>,
    at_millis: i64,
    estimate: Counters,
    prices: Prices,
    deadline_millis: i64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    committed: Counters,
    reserved: Counters,
}

#[derive(Debug)]
pub(crate) struct MeterState {
    slots: HashMap<Bucket, Slot>,
    pending: HashMap<u64, Reservation>,
    next_id: u64,
    next_expiry_millis: i64,
    cleaned_minute: i64,
}

/// Counters and reservations of one engine.
#[derive(Debug)]
pub(crate) struct Meter {
    ledger: Arc<dyn Ledger>,
    reservation_ttl_millis: i64,
    state: Mutex<MeterState>,
}

impl Meter {
    pub(crate) fn new(ledger: Arc<dyn Ledger>, reservation_ttl_millis: i64) -> Self {
        // Ids start at the wall clock in microseconds, so that an id handed out before a
        // restart is lower than every id of this run and is reported as not pending.
        let first_id = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| u64::try_from(elapsed.as_micros()).unwrap_or(1))
            .unwrap_or(1);
        Self {
            ledger,
            reservation_ttl_millis,
            state: Mutex::new(MeterState {
                slots: HashMap::new(),
                pending: HashMap::new(),
                next_id: first_id,
                next_expiry_millis: i64::MAX,
                cleaned_minute: i64::MIN,
            }),
        }
    }

    pub(crate) fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, MeterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the usage of `scopes` at `at_millis`, committed plus reserved, in the windows
    /// that `needs` names. The other windows are zero in the view.
    pub(crate) fn view(
        &self,
        scopes: &Scopes,
        at_millis: i64,
        clock_millis: i64,
        needs: ContextNeeds,
    ) -> Result<UsageView, LedgerError> {
        let mut state = self.lock();
        state.expire_due(clock_millis);
        state.view(self.ledger.as_ref(), scopes, at_millis, needs)
    }

    /// Replaces a reservation's estimate with the actual usage and writes it to the ledger.
    /// Returns the counters recorded.
    pub(crate) fn commit(
        &self,
        id: ReservationId,
        actual: ActualUsage,
    ) -> Result<Counters, QuotaError> {
        let reservation = self
            .lock()
            .pending
            .remove(&id.0)
            .ok_or(QuotaError::NotPending(id))?;
        let usage = reservation
            .prices
            .counters(actual.input_tokens, actual.output_tokens);
        let entry = LedgerEntry {
            scopes: reservation.scopes.clone(),
            key: reservation.key.clone(),
            at_millis: reservation.at_millis,
            usage,
        };
        // The write happens outside the lock, so that checks are not held up by the disk.
        // Meanwhile the reservation's estimate still counts. The reservation's buckets stay
        // cached while their window is current, so a check cannot read this row from the
        // ledger and count it a second time.
        // NOTE: a check with an explicit past `now` can reload an old bucket during the
        // write and count this usage twice in that old window (an overcount, never an
        // undercount).
        if let Err(error) = self.ledger.add(&entry) {
            let mut state = self.lock();
            state.next_expiry_millis = state.next_expiry_millis.min(reservation.deadline_millis);
            state.pending.insert(id.0, reservation);
            return Err(error.into());
        }
        let mut state = self.lock();
        state.settle(&reservation, Some(&usage));
        Ok(usage)
    }

    /// Drops a reservation without recording usage.
    pub(crate) fn release(&self, id: ReservationId) -> Result<(), QuotaError> {
        let mut state = self.lock();
        let reservation = state
            .pending
            .remove(&id.0)
            .ok_or(QuotaError::NotPending(id))?;
        state.settle(&reservation, None);
        Ok(())
    }

    /// Records usage that has no reservation, such as usage reported by a script.
    pub(crate) fn record(&self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        // The write happens under the lock: otherwise a check could read the new row from the
        // ledger into the cache before the cache update below, and count the entry twice.
        let mut state = self.lock();
        self.ledger.add(entry)?;
        for scope in &entry.scopes {
            for window in Window::ALL {
                let bucket = Bucket {
                    scope: scope.clone(),
                    window,
                    start: window.start(entry.at_millis),
                };
                // Only cached buckets are updated; the others are read from the ledger when
                // first needed and already include this entry.
                if let Some(slot) = state.slots.get_mut(&bucket) {
                    slot.committed.add(&entry.usage);
                }
            }
        }
        Ok(())
    }

    /// Deletes old windows from the cache once a minute, and from the ledger.
    pub(crate) fn prune(&self, now_millis: i64) -> Result<u64, LedgerError> {
        {
            let mut state = self.lock();
            let minute = Window::Minute.start(now_millis);
            if state.cleaned_minute == minute {
                return Ok(0);
            }
            state.cleaned_minute = minute;
            state
                .slots
                .retain(|bucket, _| bucket.start >= bucket.window.start(now_millis));
        }
        self.ledger.prune(now_millis)
    }

    /// Returns the number of pending reservations.
    pub(crate) fn pending_count(&self) -> usize {
        self.lock().pending.len()
    }

    pub(crate) fn reservation_ttl_millis(&self) -> i64 {
        self.reservation_ttl_millis
    }
}

impl MeterState {
    /// Releases every reservation whose deadline has passed.
    pub(crate) fn expire_due(&mut self, clock_millis: i64) {
        if clock_millis < self.next_expiry_millis {
            return;
        }
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, reservation)| reservation.deadline_millis <= clock_millis)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(reservation) = self.pending.remove(&id) {
                self.settle(&reservation, None);
            }
        }
        self.next_expiry_millis = self
            .pending
            .values()
            .map(|reservation| reservation.deadline_millis)
            .min()
            .unwrap_or(i64::MAX);
    }

    /// Reads the windows of `scopes` that `needs` names, loading missing ones from the
    /// ledger. A reservation only adds to loaded windows, so callers that reserve afterwards
    /// must pass [`ContextNeeds::ALL`].
    pub(crate) fn view(
        &mut self,
        ledger: &dyn Ledger,
        scopes: &Scopes,
        at_millis: i64,
        needs: ContextNeeds,
    ) -> Result<UsageView, LedgerError> {
        let mut view = UsageView::default();
        for (kind, scope) in scopes.iter() {
            for window in Window::ALL {
                if !needs.contains_window(kind, window) {
                    continue;
                }
                let bucket = Bucket {
                    scope: scope.to_string(),
                    window,
                    start: window.start(at_millis),
                };
                let slot = match self.slots.get(&bucket) {
                    Some(slot) => *slot,
                    None => {
                        let committed = ledger.read(&bucket)?;
                        let slot = Slot {
                            committed,
                            reserved: Counters::default(),
                        };
                        self.slots.insert(bucket, slot);
                        slot
                    }
                };
                let mut total = slot.committed;
                total.add(&slot.reserved);
                view.set(kind, window, total);
            }
        }
        Ok(view)
    }

    /// Adds a reservation for `estimate` against every window of `scopes`.
    pub(crate) fn reserve(
        &mut self,
        scopes: &Scopes,
        key: Option<String>,
        at_millis: i64,
        estimate: Counters,
        prices: Prices,
        deadline_millis: i64,
    ) -> ReservationId {
        let reservation = Reservation {
            scopes: scopes.entities(),
            key,
            at_millis,
            estimate,
            prices,
            deadline_millis,
        };
        self.apply(&reservation, |slot| slot.reserved.add(&estimate));
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.next_expiry_millis = self.next_expiry_millis.min(deadline_millis);
        self.pending.insert(id, reservation);
        ReservationId(id)
    }

    fn settle(&mut self, reservation: &Reservation, actual: Option<&Counters>) {
        let estimate = reservation.estimate;
        self.apply(reservation, |slot| {
            slot.reserved.subtract(&estimate);
            if let Some(actual) = actual {
                slot.committed.add(actual);
            }
        });
    }

    fn apply(&mut self, reservation: &Reservation, mut change: impl FnMut(&mut Slot)) {
        for scope in &reservation.scopes {
            for window in Window::ALL {
                let bucket = Bucket {
                    scope: scope.clone(),
                    window,
                    start: window.start(reservation.at_millis),
                };
                if let Some(slot) = self.slots.get_mut(&bucket) {
                    change(slot);
                }
            }
        }
    }
}
