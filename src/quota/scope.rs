//! The scopes a request's usage counts against, found from the principal's ancestors in
//! the entity data, and the model prices that turn tokens into cost.

use std::fmt;

use cedar_policy::{Entities, EntityUid, EvalResult};
use serde::{Deserialize, Serialize};

use super::counters::Counters;

/// A kind of scope that a policy may limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeKind {
    /// The API key itself (`ApiKey`).
    Key,
    /// The key's owner: a `User`, or a `Service` for a service's key. A `User` principal is
    /// its own user scope.
    User,
    /// The owner's `Team`.
    Team,
    /// The owner's `Role` (services have none).
    Role,
    /// The key's `Workspace`.
    Workspace,
    /// The `Organization`.
    Organization,
}

impl ScopeKind {
    /// Every scope kind, in the order used by counters and output.
    pub const ALL: [ScopeKind; 6] = [
        ScopeKind::Key,
        ScopeKind::User,
        ScopeKind::Team,
        ScopeKind::Role,
        ScopeKind::Workspace,
        ScopeKind::Organization,
    ];

    /// Returns the name used in `context.usage` and in usage files.
    pub fn name(self) -> &'static str {
        match self {
            ScopeKind::Key => "key",
            ScopeKind::User => "user",
            ScopeKind::Team => "team",
            ScopeKind::Role => "role",
            ScopeKind::Workspace => "workspace",
            ScopeKind::Organization => "organization",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            ScopeKind::Key => 0,
            ScopeKind::User => 1,
            ScopeKind::Team => 2,
            ScopeKind::Role => 3,
            ScopeKind::Workspace => 4,
            ScopeKind::Organization => 5,
        }
    }

    /// Returns the scope kind of an entity type of the modelgate schema, if it is one.
    pub fn of_entity_type(entity_type: &str) -> Option<Self> {
        match entity_type {
            "ApiKey" => Some(ScopeKind::Key),
            "User" | "Service" => Some(ScopeKind::User),
            "Team" => Some(ScopeKind::Team),
            "Role" => Some(ScopeKind::Role),
            "Workspace" => Some(ScopeKind::Workspace),
            "Organization" => Some(ScopeKind::Organization),
            _ => None,
        }
    }
}

impl fmt::Display for ScopeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The entities a principal's usage counts against, at most one per scope kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    entries: Vec<(ScopeKind, String)>,
}

impl Scopes {
    /// Finds the scopes of `principal` from its ancestors in `entities`.
    ///
    /// A principal missing from the entity data counts only against itself. When an entity
    /// has several ancestors of one kind (a user in two teams), the one with the smallest
    /// entity reference is used.
    // NOTE: usage then counts against one team only; a policy limiting the other team does
    // not see it.
    pub fn resolve(entities: &Entities, principal: &EntityUid) -> Self {
        let mut entries: Vec<(ScopeKind, String)> = Vec::with_capacity(6);
        let mut consider = |uid: &EntityUid| {
            let entity_type = uid.type_name();
            // Scope types are unqualified, so a namespaced type never is one.
            if entity_type.namespace_components().next().is_some() {
                return;
            }
            let Some(kind) = ScopeKind::of_entity_type(entity_type.basename()) else {
                return;
            };
            let text = uid.to_string();
            match entries.iter_mut().find(|(existing, _)| *existing == kind) {
                Some((_, current)) if text < *current => *current = text,
                Some(_) => {}
                None => entries.push((kind, text)),
            }
        };
        consider(principal);
        if let Some(ancestors) = entities.ancestors(principal) {
            for ancestor in ancestors {
                consider(ancestor);
            }
        }
        entries.sort();
        Self { entries }
    }

    /// Returns the entity of one scope kind, as a Cedar entity reference.
    pub fn get(&self, kind: ScopeKind) -> Option<&str> {
        self.entries
            .iter()
            .find(|(existing, _)| *existing == kind)
            .map(|(_, uid)| uid.as_str())
    }

    /// Returns every (scope kind, entity reference) pair.
    pub fn iter(&self) -> impl Iterator<Item = (ScopeKind, &str)> {
        self.entries.iter().map(|(kind, uid)| (*kind, uid.as_str()))
    }

    /// Returns the entity references only.
    pub fn entities(&self) -> Vec<String> {
        self.entries.iter().map(|(_, uid)| uid.clone()).collect()
    }
}

/// A model's list prices in micro-USD per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Prices {
    pub input: u64,
    pub output: u64,
}

impl Prices {
    /// Returns the cost in micro-USD of the given tokens, rounded up, saturating at `u64::MAX`.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> u64 {
        let total = (u128::from(input_tokens) * u128::from(self.input))
            .saturating_add(u128::from(output_tokens) * u128::from(self.output));
        let micro_usd = total.div_ceil(1_000_000);
        u64::try_from(micro_usd).unwrap_or(u64::MAX)
    }

    /// Returns the counters of one request with these tokens.
    pub fn counters(&self, input_tokens: u64, output_tokens: u64) -> Counters {
        Counters {
            requests: 1,
            input_tokens,
            output_tokens,
            cost_micro_usd: self.cost(input_tokens, output_tokens),
        }
    }
}

/// Reads the prices of `resource` from its `input_price_micro_usd_per_mtok` and
/// `output_price_micro_usd_per_mtok` attributes. A resource without them (not a model)
/// costs nothing. Returns the name of the attribute that is negative or not a `Long`.
pub(crate) fn model_prices(entities: &Entities, resource: &EntityUid) -> Result<Prices, String> {
    let Some(entity) = entities.get(resource) else {
        return Ok(Prices::default());
    };
    let read = |name: &str| -> Result<u64, String> {
        match entity.attr(name) {
            None => Ok(0),
            Some(Ok(EvalResult::Long(value))) => u64::try_from(value).map_err(|_| name.to_string()),
            Some(_) => Err(name.to_string()),
        }
    };
    Ok(Prices {
        input: read("input_price_micro_usd_per_mtok")?,
        output: read("output_price_micro_usd_per_mtok")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_rounds_up_to_whole_micro_usd() {
        let prices = Prices {
            input: 100_000,
            output: 300_000,
        };
        // 120 * 0.1 + 300 * 0.3 = 12 + 90 micro-USD.
        assert_eq!(prices.cost(120, 300), 102);
        // 1 token at 0.1 micro-USD rounds up to 1.
        assert_eq!(prices.cost(1, 0), 1);
    }

    #[test]
    fn cost_of_huge_counts_does_not_overflow() {
        let prices = Prices {
            input: u64::MAX,
            output: u64::MAX,
        };
        assert_eq!(prices.cost(u64::MAX, u64::MAX), u64::MAX);
    }
}
