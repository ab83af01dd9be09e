//! The public entry point: a shareable handle that contains the current snapshot and decides
//! access checks.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use cedar_policy::{Authorizer, Entities, EntityUid, PolicyId, Request};

use crate::clock::{format_millis, parse_rfc3339_millis, Clock, SystemClock};
use crate::context::{build_context, standard_context, ContextShape};
use crate::decision::{Decision, Effect, EvaluationError, Outcome, PolicyRef, Reason, Status};
use crate::inline::InlineEntities;
use crate::load::LoadOptions;
use crate::quota::{
    model_prices, ActualUsage, Admission, Counters, Ledger, LedgerEntry, MemoryLedger, Meter,
    Prices, QuotaError, ReservationId, ScopeKind, Scopes, UsageView, COUNTER_MAX,
};
use crate::request::{closest, CheckRequest, RequestError, DEFAULT_MAX_TOKENS};
use crate::slice::{ContextNeeds, Slice};
use crate::snapshot::{LoadCache, LoadError, Snapshot};

/// The rule for a policy that fails to evaluate (for example an integer overflow or a missing
/// attribute). Cedar on its own skips such a policy, so an erroring `forbid` lets a `permit`
/// through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Any evaluation error denies the request. The default.
    #[default]
    FailClosed,
    /// Errors in `permit` policies are ignored (the permit simply does not match); an error
    /// in any `forbid` still denies.
    IgnorePermitErrors,
}

/// Settings of an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The effect of an evaluation error on the decision.
    pub error_policy: ErrorPolicy,
    /// The largest token count accepted in one request field; larger requests are rejected
    /// before evaluation so that policy arithmetic cannot overflow.
    pub max_tokens: u64,
    /// The source of `context.now` for requests that do not set it, and of the time that
    /// reservations expire by.
    pub clock: Arc<dyn Clock>,
    /// The store of committed usage. The default keeps it in memory, so every counter
    /// starts at zero.
    pub ledger: Arc<dyn Ledger>,
    /// How long a reservation from [`Engine::check_and_reserve`] is held when it is neither
    /// committed nor released.
    pub reservation_ttl: Duration,
    /// Evaluate only the policies whose scope can match each request (on by default). The
    /// decision, determining policies and errors are the same either way; turning it off
    /// makes Cedar evaluate every policy, for comparison.
    pub policy_slicing: bool,
}

/// The default [`EngineOptions::reservation_ttl`]: 10 minutes, longer than a long streamed
/// completion.
pub const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(600);

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            error_policy: ErrorPolicy::FailClosed,
            max_tokens: DEFAULT_MAX_TOKENS,
            clock: Arc::new(SystemClock),
            ledger: Arc::new(MemoryLedger::default()),
            reservation_ttl: DEFAULT_RESERVATION_TTL,
            policy_slicing: true,
        }
    }
}

/// The state of the engine's policy set, for health checks and operators.
#[derive(Debug, Clone)]
pub struct EngineStatus {
    /// Generation of the snapshot in use; 1 for the first load, +1 per successful reload.
    pub generation: u64,
    /// When the snapshot in use was loaded.
    pub loaded_at: SystemTime,
    /// SHA-256 of the snapshot's sources.
    pub fingerprint: String,
    /// Number of policies in use.
    pub policy_count: usize,
    /// Number of entities in use.
    pub entity_count: usize,
    /// Number of policies that the load of the snapshot in use validated strictly; a reload
    /// validates only the policy files that changed.
    pub validated_policies: usize,
    /// Number of policy and entity files that the load of the snapshot in use parsed. A
    /// reload parses only the files whose text changed, and every entity file after a
    /// schema change.
    pub parsed_files: usize,
    /// The error of the last reload attempt, if it failed; cleared by a successful reload.
    pub last_error: Option<LoadError>,
}

/// A policy engine: load once, share across threads, call [`Engine::check`].
///
/// ```
/// use modelgate::{CheckRequest, Engine, LoadOptions};
///
/// let engine = Engine::load(LoadOptions::new("policies", "schema")).unwrap();
/// let request = CheckRequest::for_model("ApiKey::\"key-ana-ml\"", "chat", "mistral-small-latest")
///     .unwrap()
///     .with_tokens(120, 300);
/// let decision = engine.check(&request).unwrap();
/// assert!(decision.is_allowed(), "{}", decision.explanation);
/// ```
#[derive(Debug)]
pub struct Engine {
    current: ArcSwap<Snapshot>,
    load_options: LoadOptions,
    options: EngineOptions,
    authorizer: Authorizer,
    /// Serializes reloads.
    reload_lock: Mutex<()>,
    /// Parse and validation results kept between loads, so that a reload redoes only what
    /// changed.
    load_cache: Mutex<LoadCache>,
    reload_state: Mutex<Option<LoadError>>,
    meter: Meter,
}

impl Engine {
    /// Loads and validates a policy set with default settings.
    pub fn load(load_options: LoadOptions) -> Result<Self, LoadError> {
        Self::with_options(load_options, EngineOptions::default())
    }

    /// Loads and validates a policy set with the given settings.
    pub fn with_options(
        load_options: LoadOptions,
        options: EngineOptions,
    ) -> Result<Self, LoadError> {
        let mut cache = LoadCache::default();
        let mut snapshot = Snapshot::load_with_cache(&load_options, &mut cache, None)?;
        snapshot.generation = 1;
        tracing::info!(
            generation = 1,
            policies = snapshot.policy_count(),
            entities = snapshot.entity_count(),
            fingerprint = %snapshot.fingerprint(),
            "policy set loaded"
        );
        let ttl_millis = i64::try_from(options.reservation_ttl.as_millis()).unwrap_or(i64::MAX);
        let meter = Meter::new(Arc::clone(&options.ledger), ttl_millis);
        Ok(Self {
            current: ArcSwap::from_pointee(snapshot),
            load_options,
            options,
            authorizer: Authorizer::new(),
            reload_lock: Mutex::new(()),
            load_cache: Mutex::new(cache),
            reload_state: Mutex::new(None),
            meter,
        })
    }

    /// Returns the snapshot in use. A caller that keeps the `Arc` keeps the snapshot alive
    /// across reloads.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Returns the options the engine was loaded from.
    pub fn load_options(&self) -> &LoadOptions {
        &self.load_options
    }

    /// Returns the engine's settings.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Rebuilds the snapshot from disk and swaps it in when it is valid.
    ///
    /// On failure the engine keeps serving the previous snapshot and remembers the error
    /// for [`Engine::status`]. Returns the new generation.
    pub fn reload(&self) -> Result<u64, LoadError> {
        self.reload_checked(|_, _| Ok(true))
    }

    /// Rebuilds the snapshot from disk like [`Engine::reload`], then lets `check` compare
    /// the new snapshot (second argument) with the one in use (first argument) before it is
    /// published.
    ///
    /// `check` returns `Ok(true)` to publish, or an error to reject the new snapshot like a
    /// load error. `Ok(false)` keeps the snapshot in use, for example because nothing
    /// changed, and clears the last reload error. Returns the generation in use
    /// afterwards. Reloads are serialized, so `check` reads the snapshot that the new one
    /// replaces. An error is logged once: a failure with the same diagnostics as the
    /// previous one is logged at debug level only.
    pub fn reload_checked(
        &self,
        check: impl FnOnce(&Snapshot, &Snapshot) -> Result<bool, LoadError>,
    ) -> Result<u64, LoadError> {
        // Loading can take a while, so it runs under its own lock: `status` only waits for
        // the short update at the end.
        let _serialized = self
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.current.load_full();
        let loaded = {
            let mut cache = self
                .load_cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Snapshot::load_with_cache(&self.load_options, &mut cache, Some(&current))
        }
        .and_then(|snapshot| check(&current, &snapshot).map(|publish| (snapshot, publish)));
        let mut state = self
            .reload_state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match loaded {
            Ok((mut snapshot, true)) => {
                let generation = current.generation + 1;
                snapshot.generation = generation;
                tracing::info!(
                    generation,
                    policies = snapshot.policy_count(),
                    entities = snapshot.entity_count(),
                    fingerprint = %snapshot.fingerprint(),
                    "policy set reloaded"
                );
                self.current.store(Arc::new(snapshot));
                *state = None;
                Ok(generation)
            }
            Ok((_, false)) => {
                tracing::debug!(
                    generation = current.generation,
                    "reload kept the policy set in use"
                );
                *state = None;
                Ok(current.generation)
            }
            Err(error) => {
                if state.as_ref() == Some(&error) {
                    tracing::debug!(error = %error, "reload rejected again with the same error");
                } else {
                    let details: Vec<String> = error.errors().map(ToString::to_string).collect();
                    tracing::error!(
                        generation = current.generation,
                        error = %error,
                        details = %details.join("; "),
                        "reload rejected; keeping the previous policy set"
                    );
                }
                *state = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Returns the generation, counts, fingerprint and last reload error.
    pub fn status(&self) -> EngineStatus {
        let snapshot = self.current.load();
        let last_error = self
            .reload_state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        EngineStatus {
            generation: snapshot.generation,
            loaded_at: snapshot.loaded_at(),
            fingerprint: snapshot.fingerprint().to_string(),
            policy_count: snapshot.policy_count(),
            entity_count: snapshot.entity_count(),
            validated_policies: snapshot.validated_policies,
            parsed_files: snapshot.parsed_files,
            last_error,
        }
    }

    /// Decides one request on the current snapshot.
    ///
    /// A well-formed request always gets a [`Decision`]; evaluation errors become denials
    /// (see [`ErrorPolicy`]). A malformed request is an `Err`, which callers must treat as a
    /// denial.
    pub fn check(&self, request: &CheckRequest) -> Result<Decision, RequestError> {
        let snapshot = self.current.load();
        self.check_on(&snapshot, request)
    }

    /// Decides one request on a given snapshot, with the principal's usage from the ledger
    /// and pending reservations. Reserves nothing.
    pub fn check_on(
        &self,
        snapshot: &Snapshot,
        request: &CheckRequest,
    ) -> Result<Decision, RequestError> {
        self.check_with_entities(snapshot, request, &snapshot.entities)
    }

    /// Decides one request on a given snapshot's policies and schema, reading entity data
    /// from `base` in place of the snapshot's own. The request's inline entities are merged
    /// into `base` as in [`Engine::check`].
    ///
    /// The policy test runner uses this to evaluate cases against fixture entities; `base`
    /// must conform to the snapshot's schema (build it with that schema).
    pub fn check_with_entities(
        &self,
        snapshot: &Snapshot,
        request: &CheckRequest,
        base: &Entities,
    ) -> Result<Decision, RequestError> {
        self.check_with(snapshot, request, base, None)
    }

    /// Decides one request on a given snapshot with entity data `base` (as
    /// [`Engine::check_with_entities`]) and, when `usage` is given, those counters instead of
    /// the ledger's. The policy test runner uses it for cases with preset usage.
    pub fn check_with(
        &self,
        snapshot: &Snapshot,
        request: &CheckRequest,
        base: &Entities,
        usage: Option<&UsageView>,
    ) -> Result<Decision, RequestError> {
        let (prepared, slice) = self.prepare_sliced(snapshot, request, base)?;
        if let Some(usage) = usage {
            return self.evaluate(snapshot, request, &prepared, slice.as_ref(), usage, base);
        }
        let clock_millis = self.options.clock.now_millis();
        let needs = slice
            .as_ref()
            .map_or(ContextNeeds::ALL, |slice| slice.needs);
        match self
            .meter
            .view(&prepared.scopes, prepared.now_millis, clock_millis, needs)
        {
            Ok(view) => self.evaluate(snapshot, request, &prepared, slice.as_ref(), &view, base),
            Err(error) => Ok(usage_unavailable(snapshot, &error)),
        }
    }

    /// Decides one request against the given usage counters instead of the ledger's, for
    /// `modelgate check --usage FILE` and for tests.
    pub fn check_with_usage(
        &self,
        request: &CheckRequest,
        usage: &UsageView,
    ) -> Result<Decision, RequestError> {
        let snapshot = self.current.load();
        let (prepared, slice) = self.prepare_sliced(&snapshot, request, &snapshot.entities)?;
        self.evaluate(
            &snapshot,
            request,
            &prepared,
            slice.as_ref(),
            usage,
            &snapshot.entities,
        )
    }

    /// Decides one request and, when it is allowed, reserves its estimate (one request,
    /// its input tokens, its `max_tokens` and their cost) against every window of every
    /// scope of the principal.
    ///
    /// Reading the counters, evaluating the policies and adding the reservation happen
    /// under one lock, so concurrent calls never decide on the same counters: no counter
    /// passes a limit that the policies enforce on the estimates. Settle the reservation
    /// with [`Engine::commit`] or [`Engine::release`]; otherwise it expires after
    /// [`EngineOptions::reservation_ttl`].
    pub fn check_and_reserve(&self, request: &CheckRequest) -> Result<Admission, RequestError> {
        let snapshot = self.current.load();
        let (prepared, slice) = self.prepare_sliced(&snapshot, request, &snapshot.entities)?;
        let clock_millis = self.options.clock.now_millis();

        let mut state = self.meter.lock();
        state.expire_due(clock_millis);
        // Every window is read, although the policies may need fewer: a reservation only
        // adds to the windows that are in memory.
        let view = match state.view(
            self.meter.ledger().as_ref(),
            &prepared.scopes,
            prepared.now_millis,
            ContextNeeds::ALL,
        ) {
            Ok(view) => view,
            Err(error) => {
                return Ok(Admission {
                    decision: usage_unavailable(&snapshot, &error),
                    reservation: None,
                })
            }
        };
        let decision = self.evaluate(
            &snapshot,
            request,
            &prepared,
            slice.as_ref(),
            &view,
            &snapshot.entities,
        )?;
        let reservation = decision.is_allowed().then(|| {
            let deadline = clock_millis.saturating_add(self.meter.reservation_ttl_millis());
            state.reserve(
                &prepared.scopes,
                prepared.scopes.get(ScopeKind::Key).map(str::to_string),
                prepared.now_millis,
                prepared.estimate,
                prepared.prices,
                deadline,
            )
        });
        drop(state);
        Ok(Admission {
            decision,
            reservation,
        })
    }

    /// Replaces a reservation's estimate with the usage the provider reported, and writes
    /// it to the ledger before returning. Returns the counters recorded (one request, the
    /// tokens and their cost at the prices of the reservation's model).
    ///
    /// On an error nothing is recorded and the reservation stays pending.
    pub fn commit(&self, id: ReservationId, actual: ActualUsage) -> Result<Counters, QuotaError> {
        self.check_actual(actual)?;
        let counters = self.meter.commit(id, actual)?;
        self.prune_quietly();
        Ok(counters)
    }

    /// Drops a reservation without recording usage, for a call that failed.
    pub fn release(&self, id: ReservationId) -> Result<(), QuotaError> {
        self.meter.release(id)
    }

    /// Records usage that has no reservation: `request` names the principal, the model
    /// (whose prices give the cost) and the time (`now`, or the clock). Returns the
    /// counters recorded.
    pub fn record_usage(
        &self,
        request: &CheckRequest,
        actual: ActualUsage,
    ) -> Result<Counters, QuotaError> {
        self.check_actual(actual)?;
        let snapshot = self.current.load();
        if !snapshot.contains_entity(&request.principal) {
            return Err(QuotaError::UnknownPrincipal(request.principal.to_string()));
        }
        let prepared = self.prepare(&snapshot, request, &snapshot.entities)?;
        let usage = prepared
            .prices
            .counters(actual.input_tokens, actual.output_tokens);
        let entry = LedgerEntry {
            scopes: prepared.scopes.entities(),
            key: prepared.scopes.get(ScopeKind::Key).map(str::to_string),
            at_millis: prepared.now_millis,
            usage,
        };
        self.meter.record(&entry)?;
        self.prune_quietly();
        Ok(usage)
    }

    /// Returns the scopes that `principal`'s usage counts against in the current snapshot.
    pub fn scopes_of(&self, principal: &EntityUid) -> Scopes {
        Scopes::resolve(&self.current.load().entities, principal)
    }

    /// Returns `principal`'s usage at the clock's current time as the policies would see it:
    /// committed usage plus pending reservations, per scope and window.
    pub fn usage(&self, principal: &EntityUid) -> Result<UsageView, crate::quota::LedgerError> {
        let scopes = self.scopes_of(principal);
        let now = self.options.clock.now_millis();
        self.meter.view(&scopes, now, now, ContextNeeds::ALL)
    }

    /// Returns the ledger.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        self.meter.ledger()
    }

    /// Returns the number of reservations neither committed, released nor expired.
    pub fn pending_reservations(&self) -> usize {
        self.meter.pending_count()
    }

    fn check_actual(&self, actual: ActualUsage) -> Result<(), QuotaError> {
        let max = self.options.max_tokens.min(COUNTER_MAX);
        for (field, value) in [
            ("input_tokens", actual.input_tokens),
            ("output_tokens", actual.output_tokens),
        ] {
            if value > max {
                return Err(QuotaError::TokensOutOfRange { field, value, max });
            }
        }
        Ok(())
    }

    /// Deletes old windows; a failure only delays the cleanup, so it is logged and dropped.
    fn prune_quietly(&self) {
        if let Err(error) = self.meter.prune(self.options.clock.now_millis()) {
            tracing::warn!(error = %error, "pruning old usage windows failed");
        }
    }

    fn prepare(
        &self,
        snapshot: &Snapshot,
        request: &CheckRequest,
        base: &Entities,
    ) -> Result<Prepared, RequestError> {
        // Token counts are bounded by the ceiling and by COUNTER_MAX, so that the context's
        // sums of counters and estimates cannot overflow Cedar's 64-bit integers.
        let max = self.options.max_tokens.min(COUNTER_MAX);
        for (field, value) in [
            ("input_tokens", request.facts.input_tokens),
            ("max_output_tokens", request.facts.max_output_tokens),
        ] {
            if value > max {
                return Err(RequestError::TokensOutOfRange {
                    field,
                    value: value.to_string(),
                    max,
                });
            }
        }
        check_types(snapshot, request)?;

        let now_millis = match &request.now {
            Some(text) => {
                parse_rfc3339_millis(text).ok_or_else(|| RequestError::InvalidTime(text.clone()))?
            }
            None => self.options.clock.now_millis(),
        };
        let env = snapshot.action_envs.get(&request.action);
        let shape = env.map_or(ContextShape::Custom, |env| env.shape);
        let fast_path = request.context.is_empty() && shape != ContextShape::Custom;
        if fast_path {
            // The context is built from typed values in the shape that the schema declares
            // for this action (checked at load), so only the entity types need checking.
            if let Some(env) = env {
                check_applies_to(env, request)?;
            }
        }

        let (inline, entities, reached) = if request.entities.is_empty() {
            (None, None, None)
        } else {
            let inline = InlineEntities::parse(snapshot, &request.entities)?;
            if fast_path && self.options.policy_slicing {
                // The slice is not known yet, so this store has what the slicer reads; the
                // policies' entity literals are added once the slice is known.
                let (store, reached) =
                    inline.reachable_store(snapshot, base, request_entities(request))?;
                (Some(inline), Some(store), Some(reached))
            } else {
                // A caller-supplied context can refer to any entity.
                let store = inline.merge_into(snapshot, base)?;
                (Some(inline), Some(store), None)
            }
        };
        let effective = entities.as_ref().unwrap_or(base);
        let scopes = Scopes::resolve(effective, &request.principal);
        let prices = model_prices(effective, &request.resource).map_err(|attribute| {
            RequestError::InvalidModelPrice {
                resource: request.resource.to_string(),
                attribute,
            }
        })?;
        let facts = request.facts;
        let estimate = prices.counters(facts.input_tokens, facts.max_output_tokens);
        if estimate.cost_micro_usd > COUNTER_MAX {
            return Err(RequestError::EstimateOutOfRange {
                value: estimate.cost_micro_usd,
                max: COUNTER_MAX,
            });
        }
        Ok(Prepared {
            now_millis,
            fast_path,
            shape,
            inline,
            reached,
            entities,
            scopes,
            prices,
            estimate,
        })
    }

    /// Prepares a request and returns it with the policies to evaluate.
    fn prepare_sliced(
        &self,
        snapshot: &Snapshot,
        request: &CheckRequest,
        base: &Entities,
    ) -> Result<(Prepared, Option<Slice>), RequestError> {
        let mut prepared = self.prepare(snapshot, request, base)?;
        let slice = self.slice(snapshot, request, &mut prepared, base)?;
        Ok((prepared, slice))
    }

    /// Returns the policies to evaluate for a prepared request, or `None` to evaluate the
    /// whole set when slicing is off.
    ///
    /// For a request with inline entities whose store holds only the reachable entities,
    /// this also adds the entities that the slice's policies name to that store.
    fn slice(
        &self,
        snapshot: &Snapshot,
        request: &CheckRequest,
        prepared: &mut Prepared,
        base: &Entities,
    ) -> Result<Option<Slice>, RequestError> {
        let entities = prepared.entities.as_ref().unwrap_or(base);
        let slice = self.options.policy_slicing.then(|| {
            snapshot.index.slice(
                &request.principal,
                &request.action,
                &request.resource,
                entities,
            )
        });
        if let (Some(inline), Some(reached)) = (&prepared.inline, &prepared.reached) {
            let literals = slice.as_ref().and_then(|slice| slice.literals.clone());
            match literals {
                Some(literals) if literals.iter().all(|uid| reached.contains(uid)) => {}
                Some(literals) => {
                    let roots = request_entities(request).into_iter().chain(literals.iter());
                    let (store, reached) = inline.reachable_store(snapshot, base, roots)?;
                    prepared.entities = Some(store);
                    prepared.reached = Some(reached);
                }
                None => {
                    prepared.entities = Some(inline.merge_into(snapshot, base)?);
                    prepared.reached = None;
                }
            }
        }
        Ok(slice)
    }

    /// Evaluates a prepared request against the given usage, on `slice` or on the whole set.
    fn evaluate(
        &self,
        snapshot: &Snapshot,
        request: &CheckRequest,
        prepared: &Prepared,
        slice: Option<&Slice>,
        usage: &UsageView,
        base: &Entities,
    ) -> Result<Decision, RequestError> {
        let cost = prepared.estimate.cost_micro_usd;
        let entities = prepared.entities.as_ref().unwrap_or(base);
        let needs = slice.map_or(ContextNeeds::ALL, |slice| slice.needs);
        let cedar_request = if prepared.fast_path {
            let context = standard_context(
                prepared.shape,
                &request.facts,
                prepared.now_millis,
                cost,
                usage,
                needs,
            )?;
            Request::new(
                request.principal.clone(),
                request.action.clone(),
                request.resource.clone(),
                context,
                None,
            )
        } else {
            let now = format_millis(prepared.now_millis);
            let context = build_context(snapshot, request, prepared.shape, &now, cost, usage)?;
            Request::new(
                request.principal.clone(),
                request.action.clone(),
                request.resource.clone(),
                context,
                Some(&snapshot.schema),
            )
        }
        .map_err(|error| RequestError::SchemaMismatch(error.to_string()))?;

        let policies = slice.map_or(&snapshot.policies, |slice| slice.policies.as_ref());
        let response = self
            .authorizer
            .is_authorized(&cedar_request, policies, entities);
        let mut decision = self.decide(snapshot, request, entities, &response);
        decision.retry_after_secs = retry_after(&decision, prepared.now_millis);
        Ok(decision)
    }

    fn decide(
        &self,
        snapshot: &Snapshot,
        request: &CheckRequest,
        entities: &Entities,
        response: &cedar_policy::Response,
    ) -> Decision {
        let lookup = |id: &PolicyId| -> PolicyRef {
            snapshot.refs.get(id).cloned().unwrap_or_else(|| PolicyRef {
                id: id.to_string(),
                effect: Effect::Forbid,
                file: Default::default(),
                line: 0,
                column: 0,
                reason: None,
                status: None,
                window: None,
            })
        };
        let mut determining: Vec<PolicyRef> = response.diagnostics().reason().map(lookup).collect();
        determining.sort_by(|a, b| a.id.cmp(&b.id));
        let mut errors: Vec<EvaluationError> = response
            .diagnostics()
            .errors()
            .map(|error| match error {
                cedar_policy::AuthorizationError::PolicyEvaluationError(inner) => EvaluationError {
                    policy: lookup(inner.policy_id()),
                    message: inner.inner().to_string(),
                },
            })
            .collect();
        errors.sort_by(|a, b| a.policy.id.cmp(&b.policy.id));

        let counted_errors: Vec<&EvaluationError> = errors
            .iter()
            .filter(|error| match self.options.error_policy {
                ErrorPolicy::FailClosed => true,
                ErrorPolicy::IgnorePermitErrors => error.policy.effect == Effect::Forbid,
            })
            .collect();

        let cedar_allows = response.decision() == cedar_policy::Decision::Allow;
        let forbids_matched = !cedar_allows && !determining.is_empty();
        let generation = snapshot.generation;

        if forbids_matched {
            let status = strongest_status(determining.iter().map(|p| p.status));
            let explanation = explain_policies("denied by", &determining);
            return Decision {
                decision: Outcome::Deny,
                status: Some(status),
                reason: Reason::Forbidden,
                policies: determining,
                errors,
                explanation,
                generation,
                retry_after_secs: None,
            };
        }
        if !counted_errors.is_empty() {
            let failing: Vec<PolicyRef> = counted_errors.iter().map(|e| e.policy.clone()).collect();
            let status = strongest_status(
                failing
                    .iter()
                    .filter(|p| p.effect == Effect::Forbid)
                    .map(|p| p.status),
            );
            let first = counted_errors
                .first()
                .map(|e| format!("policy `{}` failed to evaluate: {}", e.policy.id, e.message))
                .unwrap_or_default();
            let explanation =
                format!("denied because {first}; modelgate denies when a policy fails");
            return Decision {
                decision: Outcome::Deny,
                status: Some(status),
                reason: Reason::EvaluationFailed,
                policies: failing,
                errors,
                explanation,
                generation,
                retry_after_secs: None,
            };
        }
        if cedar_allows {
            let explanation = explain_policies("allowed by", &determining);
            return Decision {
                decision: Outcome::Allow,
                status: None,
                reason: Reason::Permitted,
                policies: determining,
                errors,
                explanation,
                generation,
                retry_after_secs: None,
            };
        }
        Decision {
            decision: Outcome::Deny,
            status: Some(Status::Forbidden),
            reason: Reason::NoPermit,
            policies: Vec::new(),
            explanation: explain_default_deny(snapshot, request, entities),
            errors,
            generation,
            retry_after_secs: None,
        }
    }
}

struct Prepared {
    now_millis: i64,
    fast_path: bool,
    shape: ContextShape,
    /// The request's inline entities, if it has any.
    inline: Option<InlineEntities>,
    /// With inline entities, the references that `entities` followed when it holds only the
    /// reachable entities; `None` when it is the full merged store.
    reached: Option<HashSet<EntityUid>>,
    /// The entity store for a request with inline entities; `None` to use the base store.
    entities: Option<Entities>,
    scopes: Scopes,
    prices: Prices,
    estimate: Counters,
}

/// Returns the seconds until the longest window of the deciding 429 policies ends, for a
/// 429 denial.
fn retry_after(decision: &Decision, now_millis: i64) -> Option<u64> {
    if decision.status != Some(Status::TooManyRequests) {
        return None;
    }
    decision
        .policies
        .iter()
        .filter(|policy| policy.status == Some(Status::TooManyRequests))
        .filter_map(|policy| policy.window)
        .map(|window| window.seconds_until_end(now_millis))
        .max()
}

/// Returns the decision for usage counters that cannot be read: a denial, because an allow
/// would skip the quotas.
fn usage_unavailable(snapshot: &Snapshot, error: &crate::quota::LedgerError) -> Decision {
    Decision {
        decision: Outcome::Deny,
        status: Some(Status::ServiceUnavailable),
        reason: Reason::UsageUnavailable,
        policies: Vec::new(),
        errors: Vec::new(),
        explanation: format!(
            "denied because the usage counters could not be read ({error}); modelgate does not allow a request it cannot count"
        ),
        generation: snapshot.generation,
        retry_after_secs: None,
    }
}

fn strongest_status(statuses: impl Iterator<Item = Option<Status>>) -> Status {
    statuses
        .map(|status| status.unwrap_or(Status::Forbidden))
        .min_by_key(|status| status.precedence())
        .unwrap_or(Status::Forbidden)
}

fn explain_policies(verb: &str, policies: &[PolicyRef]) -> String {
    let parts: Vec<String> = policies
        .iter()
        .map(|policy| match &policy.reason {
            Some(reason) => format!("`{}` ({reason})", policy.id),
            None => format!("`{}`", policy.id),
        })
        .collect();
    format!("{verb} {}", parts.join(", "))
}

fn explain_default_deny(
    snapshot: &Snapshot,
    request: &CheckRequest,
    entities: &Entities,
) -> String {
    let mut explanation = format!(
        "denied because no permit policy matches {} calling {} on {}",
        request.principal, request.action, request.resource
    );
    for (role, uid) in [
        ("principal", &request.principal),
        ("resource", &request.resource),
    ] {
        if entities.get(uid).is_some() {
            continue;
        }
        explanation.push_str(&format!("; the {role} {uid} is not in the entity data"));
        let entity_type = uid.type_name().to_string();
        let known = snapshot.entity_ids_of_type(&entity_type);
        let id = uid.id().unescaped();
        if let Some(suggestion) = closest(id, known.iter().map(String::as_str)) {
            explanation.push_str(&format!(" (did you mean `{suggestion}`?)"));
        }
    }
    explanation
}

/// Rejects entity types and actions that the schema does not declare, with a suggestion.
fn check_types(snapshot: &Snapshot, request: &CheckRequest) -> Result<(), RequestError> {
    let callable = || {
        let mut ids: Vec<(String, &EntityUid)> = snapshot
            .action_envs
            .iter()
            .filter(|(_, env)| !env.principals.is_empty())
            .map(|(uid, _)| (uid.id().unescaped().to_string(), uid))
            .collect();
        ids.sort();
        ids
    };
    match snapshot.action_envs.get(&request.action) {
        None => {
            let action_id = request.action.id().unescaped();
            let known: Vec<String> = callable().into_iter().map(|(id, _)| id).collect();
            return Err(RequestError::UnknownAction {
                action: request.action.to_string(),
                suggestion: closest(action_id, known.iter().map(String::as_str)),
                known,
            });
        }
        // An action without `appliesTo` is an action group: policies may name it, requests
        // may not.
        Some(env) if env.principals.is_empty() => {
            let members = callable()
                .into_iter()
                .filter(|(_, uid)| snapshot.entities.is_ancestor_of(&request.action, uid))
                .map(|(id, _)| id)
                .collect();
            return Err(RequestError::ActionGroup {
                action: request.action.to_string(),
                members,
            });
        }
        Some(_) => {}
    }
    for (field, uid) in [
        ("principal", &request.principal),
        ("resource", &request.resource),
    ] {
        if !snapshot.entity_type_names.contains(uid.type_name()) {
            let entity_type = uid.type_name().to_string();
            let mut known: Vec<String> = snapshot
                .entity_type_names
                .iter()
                .map(ToString::to_string)
                .collect();
            known.sort();
            return Err(RequestError::UnknownEntityType {
                field,
                suggestion: closest(&entity_type, known.iter().map(String::as_str)),
                entity_type,
            });
        }
    }
    Ok(())
}

/// Returns the request's principal, action and resource.
fn request_entities(request: &CheckRequest) -> [&EntityUid; 3] {
    [&request.principal, &request.action, &request.resource]
}

/// Rejects a principal or resource type that the action does not apply to.
fn check_applies_to(
    env: &crate::snapshot::ActionEnv,
    request: &CheckRequest,
) -> Result<(), RequestError> {
    for (role, uid, allowed) in [
        ("principal", &request.principal, &env.principals),
        ("resource", &request.resource, &env.resources),
    ] {
        if !allowed.contains(uid.type_name()) {
            let mut names: Vec<String> = allowed.iter().map(ToString::to_string).collect();
            names.sort();
            return Err(RequestError::SchemaMismatch(format!(
                "{role} type `{}` is not valid for {}; expected one of: {}",
                uid.type_name(),
                request.action,
                names.join(", ")
            )));
        }
    }
    Ok(())
}
