//! Scope-indexed policy slicing: picks, for one request, the policies whose scope can match,
//! so that Cedar evaluates only those.
//!
//! A policy whose scope does not match a request is neither satisfied nor evaluated past its
//! scope (Cedar evaluates the scope first and short-circuits), so leaving it out changes
//! neither the decision, nor the determining policies, nor the errors. The slicer matches
//! scopes exactly as Cedar does, in both directions. It never misses a matching policy. It
//! never returns one that does not match either, because the policies it returns have their
//! scope removed and Cedar no longer checks it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

use crate::quota::{ScopeKind, Window};
use cedar_policy::{
    ActionConstraint, Entities, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet,
    PrincipalConstraint, ResourceConstraint,
};

/// The parts of the standard context that a set of policies reads: `context.now` and the
/// usage counters of `context.usage`. A bit set with one bit per scope, window and counter,
/// in the order of [`ScopeKind::ALL`], [`Window::ALL`] and [`USAGE_COUNTERS`], then one bit
/// for `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ContextNeeds(u128);

/// The number of usage counter bits in [`ContextNeeds`].
const USAGE_BITS: usize = ScopeKind::ALL.len() * Window::ALL.len() * USAGE_COUNTERS.len();

/// The counters of one usage window, as policies name them.
pub(crate) const USAGE_COUNTERS: [&str; 5] = [
    "requests",
    "input_tokens",
    "output_tokens",
    "tokens",
    "cost_micro_usd",
];

impl ContextNeeds {
    /// `now` and every counter of every scope and window.
    pub(crate) const ALL: ContextNeeds = ContextNeeds((1u128 << (USAGE_BITS + 1)) - 1);

    /// `context.now` alone.
    const NOW: ContextNeeds = ContextNeeds(1u128 << USAGE_BITS);

    /// Returns whether `context.now` is needed.
    pub(crate) fn contains_now(self) -> bool {
        self.0 & Self::NOW.0 != 0
    }

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

    fn union(self, other: ContextNeeds) -> ContextNeeds {
        ContextNeeds(self.0 | other.0)
    }

    /// Finds the `usage.SCOPE.WINDOW.COUNTER` paths and the identifier `now` in Cedar policy
    /// text, skipping comments and string literals. Any other use of an identifier `usage`
    /// (a whole record, `has`, an unknown name) needs everything. So does any use of
    /// `context` not followed by `.` (`context["now"]`, `context == ...`, `context has ...`).
    /// The result therefore never leaves out a part of the context that the policy reads.
    pub(crate) fn of_policy_text(text: &str) -> ContextNeeds {
        let bytes = text.as_bytes();
        let mut needs = ContextNeeds::default();
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
                    match text.get(start..i) {
                        Some("usage") => {
                            let path = usage_path(text, i);
                            needs = needs.union(path.unwrap_or(ContextNeeds::ALL));
                        }
                        Some("now") => needs = needs.union(ContextNeeds::NOW),
                        Some("context")
                            if !text
                                .get(i..)
                                .is_some_and(|rest| rest.trim_start().starts_with('.')) =>
                        {
                            needs = ContextNeeds::ALL;
                        }
                        _ => {}
                    }
                }
                _ => i += 1,
            }
        }
        needs
    }
}

/// Reads `.SCOPE.WINDOW.COUNTER` after an identifier `usage` that ends at `from`.
fn usage_path(text: &str, from: usize) -> Option<ContextNeeds> {
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
    Some(ContextNeeds(ContextNeeds::bit(scope, window, counter)))
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
    fn matches(&self, entity: &Lineage<'_>) -> bool {
        match self {
            EntityScope::Any => true,
            EntityScope::Eq(target) => entity.uid == target,
            EntityScope::In(target) => entity.is_in(target),
            EntityScope::Is(entity_type) => entity.uid.type_name() == entity_type,
            EntityScope::IsIn(entity_type, target) => {
                entity.uid.type_name() == entity_type && entity.is_in(target)
            }
        }
    }
}

#[derive(Debug, Clone)]
enum ActionScope {
    Any,
    Eq(EntityUid),
    In(Vec<EntityUid>),
}

impl ActionScope {
    fn matches(&self, action: &Lineage<'_>) -> bool {
        match self {
            ActionScope::Any => true,
            ActionScope::Eq(target) => action.uid == target,
            ActionScope::In(targets) => targets.iter().any(|target| action.is_in(target)),
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
    /// Each policy in the form a slice evaluates, made on its first use in a slice. Cedar's
    /// JSON round trip costs about 0.1 ms per policy, too much to pay for every policy at
    /// load.
    converted: Vec<OnceLock<Converted>>,
    /// The number of each policy, to carry conversions over to the next snapshot's index.
    numbers: HashMap<PolicyId, u32>,
    scopes: Vec<Scope>,
    needs: Vec<ContextNeeds>,
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
    pub needs: ContextNeeds,
    /// The entity references in the policies (scope and conditions), or `None` if some
    /// policy's could not be read.
    pub literals: Option<Arc<[EntityUid]>>,
}

/// A policy in the form a slice evaluates, made on the policy's first use in a slice.
#[derive(Debug, Clone)]
struct Converted {
    /// The policy without its scope, or the policy itself if Cedar could not convert it.
    policy: Policy,
    /// The entity references in the original policy, or `None` if they could not be read.
    literals: Option<Arc<[EntityUid]>>,
}

impl Converted {
    fn of(policy: &Policy) -> Self {
        let Ok(json) = policy.to_json() else {
            return Self {
                policy: policy.clone(),
                literals: None,
            };
        };
        let literals = crate::inline::entity_literals(&json).map(Arc::from);
        Self {
            policy: without_scope(policy.id(), json).unwrap_or_else(|| policy.clone()),
            literals,
        }
    }
}

impl PolicyIndex {
    /// Indexes every policy of `set`. Policies equal to one in `previous` (the index of the
    /// snapshot being replaced) keep its scope-free form, so that a reload does not slow
    /// down the checks that follow it.
    pub(crate) fn new(set: &PolicySet, previous: Option<&PolicyIndex>) -> Self {
        let mut index = Self {
            policies: Vec::new(),
            converted: Vec::new(),
            numbers: HashMap::new(),
            scopes: Vec::new(),
            needs: Vec::new(),
            by_principal: HashMap::new(),
            by_principal_type: HashMap::new(),
            open_principal_by_action: HashMap::new(),
            open_principal_any_action: Vec::new(),
            cache: ArcSwap::from_pointee(HashMap::new()),
        };
        for policy in set.policies() {
            let converted = previous
                .and_then(|previous| previous.converted_of(policy))
                .map_or_else(OnceLock::new, OnceLock::from);
            index.add(policy.clone(), converted);
        }
        index
    }

    /// Returns the converted form of `policy` if this index has converted an equal policy.
    fn converted_of(&self, policy: &Policy) -> Option<Converted> {
        let number = *self.numbers.get(policy.id())? as usize;
        let converted = self.converted.get(number)?.get()?;
        (self.policies.get(number)? == policy).then(|| converted.clone())
    }

    fn add(&mut self, policy: Policy, converted: OnceLock<Converted>) {
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
            .push(ContextNeeds::of_policy_text(&policy.to_string()));
        self.numbers.insert(policy.id().clone(), number);
        self.policies.push(policy);
        self.converted.push(converted);
        self.scopes.push(scope);
    }

    /// Returns the policies whose scope matches the request, as a policy set that Cedar can
    /// evaluate. Slices are cached by their content, so a repeated shape of request costs a
    /// few hash lookups.
    ///
    /// The policies in a slice have their scope removed (see [`without_scope`]): every one
    /// of them matched the request's scope exactly, so Cedar would find the scope true and
    /// only spend entity lookups on it.
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
        let converted: Vec<&Converted> = candidates
            .iter()
            .filter_map(|number| {
                let policy = self.policies.get(*number as usize)?;
                let converted = self.converted.get(*number as usize)?;
                Some(converted.get_or_init(|| Converted::of(policy)))
            })
            .collect();
        let selected = converted.iter().map(|converted| converted.policy.clone());
        // INVARIANT: the policies come from a valid set with unique ids, so building a subset
        // does not fail. If it did, the empty fallback would deny, never allow.
        let policies = Arc::new(PolicySet::from_policies(selected).unwrap_or_default());
        let literals = converted
            .iter()
            .try_fold(Vec::new(), |mut all: Vec<EntityUid>, converted| {
                all.extend(converted.literals.as_deref()?.iter().cloned());
                Some(all)
            })
            .map(|mut all| {
                all.sort();
                all.dedup();
                Arc::from(all)
            });
        let needs = candidates
            .iter()
            .filter_map(|number| self.needs.get(*number as usize))
            .fold(ContextNeeds::default(), |all, needs| all.union(*needs));
        let slice = Slice {
            policies,
            needs,
            literals,
        };
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

    /// Returns the sorted numbers of the policies whose whole scope matches the request,
    /// exactly as Cedar evaluates a scope.
    fn candidates(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        entities: &Entities,
    ) -> Vec<u32> {
        let principal = Lineage::of(principal, entities);
        let action = Lineage::of(action, entities);
        let resource = Lineage::of(resource, entities);

        let mut found: Vec<u32> = Vec::new();
        let mut extend = |numbers: Option<&Vec<u32>>| {
            if let Some(numbers) = numbers {
                found.extend_from_slice(numbers);
            }
        };
        for uid in principal.lineage() {
            extend(self.by_principal.get(uid));
        }
        extend(self.by_principal_type.get(principal.uid.type_name()));
        for uid in action.lineage() {
            extend(self.open_principal_by_action.get(uid));
        }
        found.extend_from_slice(&self.open_principal_any_action);

        found.sort_unstable();
        found.dedup();
        found.retain(|number| {
            self.scopes.get(*number as usize).is_some_and(|scope| {
                scope.principal.matches(&principal)
                    && scope.action.matches(&action)
                    && scope.resource.matches(&resource)
            })
        });
        found
    }
}

/// An entity of a request and its ancestors in the entity store, read once per request so
/// that matching many scopes against it needs no further entity lookups.
struct Lineage<'a> {
    uid: &'a EntityUid,
    ancestors: Vec<&'a EntityUid>,
    /// The ancestors again, for entities with more than [`LINEAR_SEARCH_MAX`] of them.
    ancestor_set: Option<HashSet<&'a EntityUid>>,
}

/// Up to this many ancestors, a linear search is faster than hashing an entity reference.
const LINEAR_SEARCH_MAX: usize = 16;

impl<'a> Lineage<'a> {
    fn of(uid: &'a EntityUid, entities: &'a Entities) -> Self {
        let ancestors: Vec<&EntityUid> = entities
            .ancestors(uid)
            .map(Iterator::collect)
            .unwrap_or_default();
        let ancestor_set =
            (ancestors.len() > LINEAR_SEARCH_MAX).then(|| ancestors.iter().copied().collect());
        Self {
            uid,
            ancestors,
            ancestor_set,
        }
    }

    /// Returns the entity followed by its ancestors.
    fn lineage(&self) -> impl Iterator<Item = &'a EntityUid> + '_ {
        std::iter::once(self.uid).chain(self.ancestors.iter().copied())
    }

    /// Cedar's `uid in target`: equal, or `target` is an ancestor of `uid` in the entity store.
    fn is_in(&self, target: &EntityUid) -> bool {
        if self.uid == target {
            return true;
        }
        match &self.ancestor_set {
            Some(set) => set.contains(target),
            None => self.ancestors.contains(&target),
        }
    }
}

/// Returns the policy whose JSON form is `json` with an unconstrained scope
/// (`principal, action, resource`) and the same id, effect, annotations and conditions, or
/// `None` if Cedar cannot convert it.
///
/// For a request that matches the original scope, the two evaluate alike: Cedar evaluates
/// the scope first, and a scope over entity references cannot fail to evaluate.
/// `tests/slicing_differential.rs` compares sliced and whole-set decisions to check this.
fn without_scope(id: &PolicyId, mut json: serde_json::Value) -> Option<Policy> {
    let object = json.as_object_mut()?;
    for part in ["principal", "action", "resource"] {
        object.insert(part.to_string(), serde_json::json!({ "op": "All" }));
    }
    Policy::from_json(Some(id.clone()), json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn usage_paths_are_found() {
        let needs = ContextNeeds::of_policy_text(
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
            assert_eq!(
                ContextNeeds::of_policy_text(text),
                ContextNeeds::ALL,
                "{text}"
            );
        }
    }

    fn policy_set(text: &str) -> PolicySet {
        let mut set = PolicySet::new();
        for (number, policy) in text.split(';').filter(|t| !t.trim().is_empty()).enumerate() {
            let policy = format!("{policy};");
            let policy = Policy::parse(Some(PolicyId::new(format!("p{number}"))), policy)
                .expect("test policy parses");
            set.add(policy).expect("unique id");
        }
        set
    }

    #[test]
    fn reload_keeps_conversions_of_equal_policies() {
        let before = policy_set(
            "permit (principal == User::\"a\", action, resource);\
             permit (principal == User::\"b\", action, resource) when { 1 < 2 };",
        );
        let old = PolicyIndex::new(&before, None);
        let user = |id: &str| EntityUid::from_str(&format!("User::\"{id}\"")).expect("uid");
        let action = EntityUid::from_str("Action::\"read\"").expect("uid");
        for id in ["a", "b"] {
            let slice = old.slice(&user(id), &action, &user("doc"), &Entities::empty());
            assert_eq!(slice.policies.policies().count(), 1);
        }

        // p1 keeps its id but changes its condition.
        let after = policy_set(
            "permit (principal == User::\"a\", action, resource);\
             permit (principal == User::\"b\", action, resource) when { 2 < 1 };",
        );
        let new = PolicyIndex::new(&after, Some(&old));
        let converted: Vec<bool> = new.converted.iter().map(|p| p.get().is_some()).collect();
        assert_eq!(converted, [true, false]);
        let slice = new.slice(&user("b"), &action, &user("doc"), &Entities::empty());
        let policy = slice.policies.policies().next().expect("one policy");
        assert!(policy.to_string().contains("2 < 1"), "{policy}");
        assert_eq!(policy.principal_constraint(), PrincipalConstraint::Any);
    }

    #[test]
    fn now_is_found() {
        let text =
            "forbid (principal, action, resource) when { principal.expires_at <= context.now };";
        let needs = ContextNeeds::of_policy_text(text);
        assert!(needs.contains_now());
        assert!(!needs.contains_window(ScopeKind::Key, Window::Day));

        let text =
            "permit (principal, action, resource) when { context.request.total_tokens < 5 };";
        assert!(!ContextNeeds::of_policy_text(text).contains_now());
    }

    #[test]
    fn whole_context_uses_need_everything() {
        for text in [
            "permit (principal, action, resource) when { context[\"now\"] < datetime(\"2026-01-01\") };",
            "permit (principal, action, resource) when { context has \"now\" };",
            "permit (principal, action, resource) when { context == {} };",
        ] {
            assert_eq!(ContextNeeds::of_policy_text(text), ContextNeeds::ALL, "{text}");
        }
    }

    #[test]
    fn strings_and_comments_need_nothing() {
        let text = "// context.usage is not read\npermit (principal, action, resource) when { \"usage\" == \"usage\" };";
        assert!(ContextNeeds::of_policy_text(text).is_empty());
    }
}
