//! Policy coverage: how many cases each policy decided, and which policies no case reached.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::decision::{Decision, PolicyRef};
use crate::snapshot::Snapshot;

/// One policy and the number of evaluated cases it was a deciding policy of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyCoverage {
    /// The policy.
    pub policy: PolicyRef,
    /// Evaluated cases (passed or failed) that listed it among the deciding policies.
    pub cases: usize,
}

/// Coverage of a whole run, over every policy of the snapshot, permits and forbids alike.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Coverage {
    /// Every policy, sorted by id.
    pub policies: Vec<PolicyCoverage>,
    /// Policies decided by at least one case.
    pub covered: usize,
    /// All policies.
    pub total: usize,
    /// `covered` as a percentage of `total`; 100 for an empty policy set.
    pub percent: f64,
}

impl Coverage {
    /// Returns the policies that no case decided, sorted by id.
    pub fn uncovered(&self) -> impl Iterator<Item = &PolicyRef> {
        self.policies
            .iter()
            .filter(|entry| entry.cases == 0)
            .map(|entry| &entry.policy)
    }
}

/// Counts deciding policies while a run goes on.
#[derive(Debug, Default)]
pub(crate) struct CoverageCounter {
    counts: BTreeMap<String, usize>,
}

impl CoverageCounter {
    pub fn record(&mut self, decision: &Decision) {
        for policy in &decision.policies {
            *self.counts.entry(policy.id.clone()).or_insert(0) += 1;
        }
    }

    pub fn finish(&self, snapshot: &Snapshot) -> Coverage {
        let policies: Vec<PolicyCoverage> = snapshot
            .policies()
            .into_iter()
            .map(|policy| PolicyCoverage {
                policy: policy.clone(),
                cases: self.counts.get(&policy.id).copied().unwrap_or(0),
            })
            .collect();
        let total = policies.len();
        let covered = policies.iter().filter(|entry| entry.cases > 0).count();
        let percent = if total == 0 {
            100.0
        } else {
            // Policy counts are far below 2^52, so the conversion is exact.
            (covered as f64) * 100.0 / (total as f64)
        };
        Coverage {
            policies,
            covered,
            total,
            percent,
        }
    }
}
