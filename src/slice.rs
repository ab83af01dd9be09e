//! Scope-indexed policy slicing: picks, for one request, the policies whose scope can match,
//! so that Cedar evaluates only those.
//!
//! A policy whose scope does not match a request is neither satisfied nor evaluated past its
//! scope (Cedar evaluates the scope first and short-circuits), so leaving it out changes
//! neither the decision, nor the determining policies, nor the errors. The index therefore
//! only has to be exact in one direction: it may return a policy that does not match (Cedar
//! then finds it unsatisfied), but it must never miss one that does.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::quota::{ScopeKind, Window};
use cedar_policy::{
    ActionConstraint, Entities, EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint,
    ResourceConstraint,
};

/// The usage counters that a set of policies reads from `context.usage`, as a bit set
/// with one bit per scope, window and counter, in the order of [`ScopeKind::ALL`],
/// [`Window::ALL`] and [`USAGE_COUNTERS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct UsageNeeds(u128);

/// The counters of one usage window, as policies name them.
pub(crate) const USAGE_COUNTERS: [&str; 5] = [
    "requests",
    "input_tokens",
    "output_tokens",
    "tokens",
    "cost_micro_usd",
];

impl UsageNeeds {
    /// Every counter of every scope and window.
    pub(crate) const ALL: UsageNeeds = UsageNeeds(
        (1u128 << (ScopeKind::ALL.len() * Window::ALL.len() * USAGE_COUNTERS.len())) - 1,
    );

    /// Returns whether `counter` of `scope` in `window` is needed.
    pub(crate) fn contains(self, scope: ScopeKind, window: Window, counter: &str) -> bool {
        let Some(counter_index) = USAGE_COUNTERS.iter().position(|c| *c == counter) else {
            return false;
        };
        self.0 & Self::bit(scope, window, counter_index) != 0
    }

    /// Returns whether any counter of `scope` in `window` is needed.
    pub(crate) fn contains_window(self, scope: ScopeKind, window: Window) -> bool {
        (0..USAGE_COUNTERS.len()).any(|index| self.0 & Self::bit(scope, window, index) != 0)
    }

    /// Returns whether no counter is needed.
    #[cfg(test)]
    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn bit(scope: ScopeKind, window: Window, counter_index: usize) -> u128 {
        let scope_index = ScopeKind::ALL.iter().position(|s| *s == scope).unwrap_or(0);
        let window_index = Window::ALL.iter().position(|w| *w == window).unwrap_or(0);
        let window_number = scope_index * Window::ALL.len() + window_index;
        1 << (window_number * USAGE_COUNTERS.len() + counter_index)
    }

    fn union(self, other: UsageNeeds) -> UsageNeeds {
        UsageNeeds(self.0 | other.0)
    }

    /// Finds the `usage.SCOPE.WINDOW.COUNTER` paths in Cedar policy text, skipping comments
    /// and string literals. Any other use of an identifier `usage` (a whole record, `has`, an
    /// unknown name) needs every counter, so the result never leaves out a counter that the
    /// policy reads.
    pub(crate) fn of_policy_text(text: &str) -> UsageNeeds {
        let bytes = text.as_bytes();
        let mut needs = UsageNeeds::default();
        let mut i = 0;
        while let Some(&byte) = bytes.get(i) {
            match byte {
                b'/' if bytes.get(i + 1) == Some(&b'/') => {
                    while bytes.get(i).is_some_and(|b| *b != b'\n') {
                        i += 1;
                    }
                }
                b'"' => {
                    i += 1;
                    while let Some(&b) = bytes.get(i) {
                        i += if b == b'\\' { 2 } else { 1 };
                        if b == b'"' {
                            break;
                        }
                    }
                }
                b if b.is_ascii_alphabetic() || b == b'_' => {
                    let start = i;
                    while bytes
                        .get(i)
                        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
                    {
                        i += 1;
                    }
                    if text.get(start..i) == Some("usage") {
                        let path = usage_path(text, i);
                        needs = needs.union(path.unwrap_or(UsageNeeds::ALL));
                    }
                }
                _ => i += 1,
            }
        }
        needs
    }
}

/// Reads `.SCOPE.WINDOW.COUNTER` after an identifier `usage` that ends at `from`.
fn usage_path(text: &str, from: usize) -> Option<UsageNeeds> {
    let mut names = Vec::new();
    let mut rest = text.get(from..)?;
    for _ in 0..3 {
        rest = rest.trim_start().strip_prefix('.')?.trim_start();
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = rest.get(name.len()..)?;
        names.push(name);
    }
    let [scope_name, window_name, counter_name] = names.as_slice() else {
        return None;
    };
    let scope = ScopeKind::ALL
        .into_iter()
        .find(|s| s.name() == scope_name)?;
    let window = Window::ALL.into_iter().find(|w| w.name() == window_name)?;
    let counter = USAGE_COUNTERS.iter().position(|c| c == counter_name)?;
    Some(UsageNeeds(UsageNeeds::bit(scope, window, counter)))
}

/// Slices cached per index before the cache is emptied and starts again. Each slice contains
/// clones of its policies, so the bound keeps memory proportional to the policy set.
const MAX_CACHED_SLICES: usize = 4096;

/// A scope constraint on the principal or the resource.
#[derive(Debug, Clone)]
enum EntityScope {
    Any,
    Eq(EntityUid),
    In(EntityUid),
    Is(EntityTypeName),
    IsIn(EntityTypeName, EntityUid),
}

impl EntityScope {
    fn from_principal(constraint: PrincipalConstraint) -> Self {
        match constraint {
            PrincipalConstraint::Any => EntityScope::Any,
            PrincipalConstraint::Eq(uid) => EntityScope::Eq(uid),
            PrincipalConstraint::In(uid) => EntityScope::In(uid),
            PrincipalConstraint::Is(entity_type) => EntityScope::Is(entity_type),
            PrincipalConstraint::IsIn(entity_type, uid) => EntityScope::IsIn(entity_type, uid),
        }
    }

    fn from_resource(constraint: ResourceConstraint) -> Self {
        match constraint {
            ResourceConstraint::Any => EntityScope::Any,
            ResourceConstraint::Eq(uid) => EntityScope::Eq(uid),
            ResourceConstraint::In(uid) => EntityScope::In(uid),
            ResourceConstraint::Is(entity_type) => EntityScope::Is(entity_type),
            ResourceConstraint::IsIn(entity_type, uid) => EntityScope::IsIn(entity_type, uid),
        }
    }

    /// Applies Cedar's scope semantics: `in` is true for the entity itself and for every
    /// ancestor in the entity store.
    fn matches(&self, uid: &EntityUid, entities: &Entities) -> bool {
        match self {
            EntityScope::Any => true,
            EntityScope::Eq(target) => uid == target,
            EntityScope::In(target) => is_in(uid, target, entities),
            EntityScope::Is(entity_type) => uid.type_name() == entity_type,
            EntityScope::IsIn(entity_type, target) => {
                uid.type_name() == entity_type && is_in(uid, target, entities)
            }
        }
    }
}

/// Cedar's `uid in target`: equal, or `target` is an ancestor of `uid` in the entity store.
/// `Entities::is_ancestor_of` alone is false for an entity and itself.
fn is_in(uid: &EntityUid, target: &EntityUid, entities: &Entities) -> bool {
    uid == target || entities.is_ancestor_of(target, uid)
}

#[derive(Debug, Clone)]
enum ActionScope {
    Any,
    Eq(EntityUid),
    In(Vec<EntityUid>),
}

impl ActionScope {
    fn matches(&self, action: &EntityUid, entities: &Entities) -> bool {
        match self {
            ActionScope::Any => true,
            ActionScope::Eq(target) => action == target,
            ActionScope::In(targets) => {
                targets.iter().any(|target| is_in(action, target, entities))
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Scope {
    principal: EntityScope,
    action: ActionScope,
    resource: EntityScope,
}

/// The policies of one snapshot, indexed by scope.
#[derive(Debug)]
pub(crate) struct PolicyIndex {
    policies: Vec<Policy>,
    scopes: Vec<Scope>,
    needs: Vec<UsageNeeds>,
    /// Policies whose principal scope names an entity (`==`, `in`, `is ... in`), by that entity.
    by_principal: HashMap<EntityUid, Vec<u32>>,
    /// Policies whose principal scope is `is T`, by `T`.
    by_principal_type: HashMap<EntityTypeName, Vec<u32>>,
    /// Policies with an unconstrained principal, by each action their action scope names.
    open_principal_by_action: HashMap<EntityUid, Vec<u32>>,
    /// Policies with an unconstrained principal and action.
    open_principal_any_action: Vec<u32>,
    cache: ArcSwap<HashMap<Box<[u32]>, Slice>>,
}

/// The policies to evaluate for one shape of request, and the usage counters they read.
#[derive(Debug, Clone)]
pub(crate) struct Slice {
    pub policies: Arc<PolicySet>,
    pub usage: UsageNeeds,
}

impl PolicyIndex {
    /// Indexes every policy of `set`.
    pub(crate) fn new(set: &PolicySet) -> Self {
        let mut index = Self {
            policies: Vec::new(),
            scopes: Vec::new(),
            needs: Vec::new(),
            by_principal: HashMap::new(),
            by_principal_type: HashMap::new(),
            open_principal_by_action: HashMap::new(),
            open_principal_any_action: Vec::new(),
            cache: ArcSwap::from_pointee(HashMap::new()),
        };
        for policy in set.policies() {
            index.add(policy.clone());
        }
        index
    }

    fn add(&mut self, policy: Policy) {
        let Ok(number) = u32::try_from(self.policies.len()) else {
            // INVARIANT: a policy set of more than 4 billion policies cannot be loaded in
            // memory, so this branch is never taken; skipping would only over-select.
            return;
        };
        let scope = Scope {
            principal: EntityScope::from_principal(policy.principal_constraint()),
            action: match policy.action_constraint() {
                ActionConstraint::Any => ActionScope::Any,
                ActionConstraint::Eq(uid) => ActionScope::Eq(uid),
                ActionConstraint::In(uids) => ActionScope::In(uids),
            },
            resource: EntityScope::from_resource(policy.resource_constraint()),
        };
        match &scope.principal {
            EntityScope::Eq(uid) | EntityScope::In(uid) | EntityScope::IsIn(_, uid) => {
                self.by_principal
                    .entry(uid.clone())
                    .or_default()
                    .push(number);
            }
            EntityScope::Is(entity_type) => {
                self.by_principal_type
                    .entry(entity_type.clone())
                    .or_default()
                    .push(number);
            }
            EntityScope::Any => match &scope.action {
                ActionScope::Any => self.open_principal_any_action.push(number),
                ActionScope::Eq(uid) => {
                    self.open_principal_by_action
                        .entry(uid.clone())
                        .or_default()
                        .push(number);
                }
                ActionScope::In(uids) => {
                    for uid in uids {
                        self.open_principal_by_action
                            .entry(uid.clone())
                            .or_default()
                            .push(number);
                    }
                }
            },
        }
        self.needs
            .push(UsageNeeds::of_policy_text(&policy.to_string()));
        self.policies.push(policy);
        self.scopes.push(scope);
    }

    /// Returns the policies whose scope matches the request, as a policy set that Cedar can
    /// evaluate. Slices are cached by their content, so a repeated shape of request costs a
    /// few hash lookups.
    pub(crate) fn slice(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        entities: &Entities,
    ) -> Slice {
        let candidates = self.candidates(principal, action, resource, entities);
        if let Some(found) = self.cache.load().get(candidates.as_slice()) {
            return found.clone();
        }
        let selected = candidates
            .iter()
            .filter_map(|number| self.policies.get(*number as usize).cloned());
        // INVARIANT: the policies come from a valid set with unique ids, so building a subset
        // does not fail. If it did, the empty fallback would deny, never allow.
        let policies = Arc::new(PolicySet::from_policies(selected).unwrap_or_default());
        let usage = candidates
            .iter()
            .filter_map(|number| self.needs.get(*number as usize))
            .fold(UsageNeeds::default(), |all, needs| all.union(*needs));
        let slice = Slice { policies, usage };
        let key: Box<[u32]> = candidates.into_boxed_slice();
        self.cache.rcu(|cache| {
            let mut next = if cache.len() >= MAX_CACHED_SLICES {
                HashMap::new()
            } else {
                HashMap::clone(cache)
            };
            next.insert(key.clone(), slice.clone());
            next
        });
        slice
    }

    /// Returns the sorted numbers of the policies whose whole scope matches the request.
    fn candidates(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        entities: &Entities,
    ) -> Vec<u32> {
        let mut found: Vec<u32> = Vec::new();
        let mut extend = |numbers: Option<&Vec<u32>>| {
            if let Some(numbers) = numbers {
                found.extend_from_slice(numbers);
            }
        };
        extend(self.by_principal.get(principal));
        if let Some(ancestors) = entities.ancestors(principal) {
            for ancestor in ancestors {
                extend(self.by_principal.get(ancestor));
            }
        }
        extend(self.by_principal_type.get(principal.type_name()));
        extend(self.open_principal_by_action.get(action));
        if let Some(ancestors) = entities.ancestors(action) {
            for ancestor in ancestors {
                extend(self.open_principal_by_action.get(ancestor));
            }
        }
        found.extend_from_slice(&self.open_principal_any_action);

        found.sort_unstable();
        found.dedup();
        found.retain(|number| {
            self.scopes.get(*number as usize).is_some_and(|scope| {
                scope.principal.matches(principal, entities)
                    && scope.action.matches(action, entities)
                    && scope.resource.matches(resource, entities)
            })
        });
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_paths_are_found() {
        let needs = UsageNeeds::of_policy_text(
            "forbid (principal, action, resource) when { context.usage.user.day.tokens + \
             context.usage . workspace . minute.requests > 5 }; // usage of all",
        );
        assert!(needs.contains(ScopeKind::User, Window::Day, "tokens"));
        assert!(!needs.contains(ScopeKind::User, Window::Day, "requests"));
        assert!(needs.contains(ScopeKind::Workspace, Window::Minute, "requests"));
        assert!(!needs.contains_window(ScopeKind::Key, Window::Day));
        assert!(!needs.contains_window(ScopeKind::User, Window::Month));
    }

    #[test]
    fn other_uses_of_usage_need_everything() {
        for text in [
            "permit (principal, action, resource) when { context has usage };",
            "permit (principal, action, resource) when { context.usage.user == {} };",
            "permit (principal, action, resource) when { context.usage.user.year.tokens > 1 };",
            "permit (principal, action, resource) when { context.usage.user.day == {} };",
        ] {
            assert_eq!(UsageNeeds::of_policy_text(text), UsageNeeds::ALL, "{text}");
        }
    }

    #[test]
    fn strings_and_comments_need_nothing() {
        let text = "// context.usage is not read\npermit (principal, action, resource) when { \"usage\" == \"usage\" };";
        assert!(UsageNeeds::of_policy_text(text).is_empty());
    }
}
