//! Usage counters, their bound, and the per-scope, per-window view put into the context.

use std::collections::BTreeMap;

use cedar_policy::RestrictedExpression;
use serde::{Deserialize, Serialize};

use super::scope::ScopeKind;
use super::window::Window;

/// The largest value any counter or estimate takes: 10^15 (tokens, requests or micro-USD,
/// which is one billion USD).
///
/// Stored counters saturate here instead of growing, and larger estimates are rejected.
/// With every context value at most 10^15, a policy can add a few counters and estimates,
/// or multiply one by up to 9,000, without overflowing Cedar's 64-bit integers
/// (`i64::MAX` is about 9.2 * 10^18).
pub const COUNTER_MAX: u64 = 1_000_000_000_000_000;

/// Usage in one scope and window: requests, tokens and cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counters {
    /// Number of requests.
    #[serde(default)]
    pub requests: u64,
    /// Prompt tokens.
    #[serde(default)]
    pub input_tokens: u64,
    /// Completion tokens (for a reservation: the requested `max_tokens`).
    #[serde(default)]
    pub output_tokens: u64,
    /// Cost in micro-USD, from the model's list prices.
    #[serde(default)]
    pub cost_micro_usd: u64,
}

impl Counters {
    /// Returns input plus output tokens, bounded by [`COUNTER_MAX`].
    pub fn tokens(&self) -> u64 {
        bounded_add(self.input_tokens, self.output_tokens)
    }

    /// Adds `other`, saturating each counter at [`COUNTER_MAX`].
    pub fn add(&mut self, other: &Counters) {
        self.requests = bounded_add(self.requests, other.requests);
        self.input_tokens = bounded_add(self.input_tokens, other.input_tokens);
        self.output_tokens = bounded_add(self.output_tokens, other.output_tokens);
        self.cost_micro_usd = bounded_add(self.cost_micro_usd, other.cost_micro_usd);
    }

    /// Subtracts `other`, stopping at zero.
    pub fn subtract(&mut self, other: &Counters) {
        self.requests = self.requests.saturating_sub(other.requests);
        self.input_tokens = self.input_tokens.saturating_sub(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_sub(other.output_tokens);
        self.cost_micro_usd = self.cost_micro_usd.saturating_sub(other.cost_micro_usd);
    }

    /// Returns `true` when every counter is zero.
    pub fn is_zero(&self) -> bool {
        *self == Counters::default()
    }

    fn largest(&self) -> u64 {
        self.requests
            .max(self.input_tokens)
            .max(self.output_tokens)
            .max(self.cost_micro_usd)
    }

    /// Builds the record of the counters that `keep` accepts by name.
    fn to_expression(self, keep: impl Fn(&str) -> bool) -> Result<RestrictedExpression, String> {
        let all = [
            ("requests", self.requests),
            ("input_tokens", self.input_tokens),
            ("output_tokens", self.output_tokens),
            ("tokens", self.tokens()),
            ("cost_micro_usd", self.cost_micro_usd),
        ];
        RestrictedExpression::new_record(
            all.into_iter()
                .filter(|(name, _)| keep(name))
                .map(|(name, value)| (name.to_string(), long(value))),
        )
        .map_err(|error| error.to_string())
    }
}

/// Adds two counter values, saturating at [`COUNTER_MAX`].
pub(crate) fn bounded_add(a: u64, b: u64) -> u64 {
    a.saturating_add(b).min(COUNTER_MAX)
}

fn long(value: u64) -> RestrictedExpression {
    // INVARIANT: counters are bounded by COUNTER_MAX, far below i64::MAX.
    RestrictedExpression::new_long(i64::try_from(value.min(COUNTER_MAX)).unwrap_or(i64::MAX))
}

/// The principal's usage in every scope and window, as the policies see it in
/// `context.usage`: committed usage plus pending reservations, before the current request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageView {
    counters: [[Counters; 4]; 6],
}

impl UsageView {
    /// Returns the counters of one scope and window.
    pub fn get(&self, scope: ScopeKind, window: Window) -> Counters {
        self.counters
            .get(scope.index())
            .and_then(|windows| windows.get(window.index()))
            .copied()
            .unwrap_or_default()
    }

    /// Sets the counters of one scope and window, bounding each at [`COUNTER_MAX`].
    pub fn set(&mut self, scope: ScopeKind, window: Window, counters: Counters) {
        let mut bounded = Counters::default();
        bounded.add(&counters);
        if let Some(slot) = self
            .counters
            .get_mut(scope.index())
            .and_then(|windows| windows.get_mut(window.index()))
        {
            *slot = bounded;
        }
    }

    /// Builds the `context.usage` record with the counters in `needs`. The others are left
    /// out because converting every counter into a Cedar value costs more than the rest of a
    /// check. A policy that reads a left-out counter fails to evaluate, so the engine denies.
    pub(crate) fn context_record(
        &self,
        needs: crate::slice::ContextNeeds,
    ) -> Result<RestrictedExpression, String> {
        let mut scopes = Vec::with_capacity(ScopeKind::ALL.len());
        for scope in ScopeKind::ALL {
            let mut windows = Vec::with_capacity(Window::ALL.len());
            for window in Window::ALL {
                if !needs.contains_window(scope, window) {
                    continue;
                }
                let counters = self
                    .get(scope, window)
                    .to_expression(|counter| needs.contains(scope, window, counter))?;
                windows.push((window.name().to_string(), counters));
            }
            if windows.is_empty() {
                continue;
            }
            let record =
                RestrictedExpression::new_record(windows).map_err(|error| error.to_string())?;
            scopes.push((scope.name().to_string(), record));
        }
        RestrictedExpression::new_record(scopes).map_err(|error| error.to_string())
    }

    /// Builds the JSON form of `context.usage`, for requests validated by Cedar.
    pub(crate) fn context_json(&self) -> serde_json::Value {
        let mut scopes = serde_json::Map::new();
        for scope in ScopeKind::ALL {
            let mut windows = serde_json::Map::new();
            for window in Window::ALL {
                let counters = self.get(scope, window);
                windows.insert(
                    window.name().to_string(),
                    serde_json::json!({
                        "requests": counters.requests,
                        "input_tokens": counters.input_tokens,
                        "output_tokens": counters.output_tokens,
                        "tokens": counters.tokens(),
                        "cost_micro_usd": counters.cost_micro_usd,
                    }),
                );
            }
            scopes.insert(scope.name().to_string(), serde_json::Value::Object(windows));
        }
        serde_json::Value::Object(scopes)
    }

    /// Parses a usage file: an object keyed by scope (`key`, `user`, `team`, `role`,
    /// `workspace`, `organization`), then by window (`minute`, `hour`, `day`, `month`), with
    /// `requests`, `input_tokens`, `output_tokens` and `cost_micro_usd` counters. Anything
    /// left out is zero.
    pub fn from_json(text: &str) -> Result<Self, UsageFileError> {
        let file: BTreeMap<ScopeKind, BTreeMap<Window, Counters>> =
            serde_json::from_str(text).map_err(|error| UsageFileError::Json(error.to_string()))?;
        let mut view = UsageView::default();
        for (scope, windows) in file {
            for (window, counters) in windows {
                if counters.largest() > COUNTER_MAX {
                    return Err(UsageFileError::OutOfRange {
                        scope,
                        window,
                        value: counters.largest(),
                    });
                }
                view.set(scope, window, counters);
            }
        }
        Ok(view)
    }
}

/// A usage file that does not parse or contains a counter above [`COUNTER_MAX`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsageFileError {
    /// The text is not a usage object.
    #[error("invalid usage JSON: {0}")]
    Json(String),
    /// A counter above the bound.
    #[error("usage counter {value} for {scope} {window} is above the maximum {COUNTER_MAX}")]
    OutOfRange {
        /// The scope.
        scope: ScopeKind,
        /// The window.
        window: Window,
        /// The largest counter given.
        value: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_saturate_at_max() {
        let mut counters = Counters {
            requests: COUNTER_MAX - 1,
            ..Counters::default()
        };
        counters.add(&Counters {
            requests: u64::MAX,
            ..Counters::default()
        });
        assert_eq!(counters.requests, COUNTER_MAX);
    }

    #[test]
    fn usage_file_rejects_large_counter() {
        let text = r#"{"user": {"day": {"input_tokens": 9223372036854775807}}}"#;
        assert!(matches!(
            UsageView::from_json(text),
            Err(UsageFileError::OutOfRange { .. })
        ));
    }

    #[test]
    fn usage_file_rejects_negative_counter() {
        let text = r#"{"user": {"day": {"input_tokens": -1}}}"#;
        assert!(matches!(
            UsageView::from_json(text),
            Err(UsageFileError::Json(_))
        ));
    }

    #[test]
    fn usage_file_rejects_unknown_scope() {
        let text = r#"{"usr": {"day": {"requests": 1}}}"#;
        assert!(UsageView::from_json(text).is_err());
    }
}
