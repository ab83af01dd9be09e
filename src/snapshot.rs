//! One immutable, fully validated policy set: schema, policies with their sources, and
//! entities. A decision reads exactly one snapshot.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::time::SystemTime;

use cedar_policy::{
    Context, Entities, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet, Request, Schema,
};

use crate::context::ContextShape;
use crate::decision::PolicyRef;
use crate::diagnostic::{Diagnostic, SourceFile};
use crate::load::ParseCache;
use crate::load::{parse_all, LoadOptions};
use crate::slice::PolicyIndex;
use crate::validate::{sort_diagnostics, validate_parsed_with, ValidationCache};

/// Loading a policy set failed; every problem found is kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    diagnostics: Vec<Diagnostic>,
}

impl LoadError {
    /// Creates an error from diagnostics found outside [`Snapshot::load`], such as a reload
    /// check that rejects a snapshot that loaded.
    pub(crate) fn from_diagnostics(diagnostics: Vec<Diagnostic>) -> Self {
        Self { diagnostics }
    }

    /// Returns every error and warning found, in file order.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// Returns the errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut errors = self.errors();
        match errors.next() {
            Some(first) => {
                write!(f, "cannot load the policy set: ")?;
                if let Some(file) = &first.file {
                    write!(f, "{}", file.display())?;
                    if let Some(location) = first.location {
                        write!(f, ":{}:{}", location.line, location.column)?;
                    }
                    write!(f, ": ")?;
                }
                write!(f, "{}", first.message)?;
                let more = errors.count();
                if more > 0 {
                    let noun = if more == 1 { "error" } else { "errors" };
                    write!(f, " (and {more} more {noun})")?;
                }
                Ok(())
            }
            None => f.write_str("cannot load the policy set"),
        }
    }
}

impl miette::Diagnostic for LoadError {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(
            "run `modelgate validate` to list every problem with its file and line",
        ))
    }
}

/// The principal and resource types that the schema allows for one action, precomputed so that a request built from typed
/// values needs no schema validation per decision.
#[derive(Debug, Clone)]
pub(crate) struct ActionEnv {
    pub principals: HashSet<EntityTypeName>,
    pub resources: HashSet<EntityTypeName>,
    /// The set of modelgate's context attributes that the action declares. Requests for a `Custom`
    /// action, and requests with extra context attributes, are validated by Cedar.
    pub shape: ContextShape,
}

fn action_envs(schema: &Schema) -> HashMap<EntityUid, ActionEnv> {
    let mut envs = HashMap::new();
    for action in schema.actions() {
        let principals: HashSet<EntityTypeName> = schema
            .principals_for_action(action)
            .map(|types| types.cloned().collect())
            .unwrap_or_default();
        let resources: HashSet<EntityTypeName> = schema
            .resources_for_action(action)
            .map(|types| types.cloned().collect())
            .unwrap_or_default();
        let shape = match (principals.iter().next(), resources.iter().next()) {
            (Some(principal), Some(resource)) => {
                let probe = |entity_type: &EntityTypeName| {
                    EntityUid::from_type_name_and_id(entity_type.clone(), EntityId::new("probe"))
                };
                let fits = |shape: ContextShape| {
                    crate::context::standard_context(
                        shape,
                        &crate::request::RequestFacts::default(),
                        0,
                        0,
                        &crate::quota::UsageView::default(),
                        crate::slice::ContextNeeds::ALL,
                    )
                    .ok()
                    .is_some_and(|context: Context| {
                        Request::new(
                            probe(principal),
                            action.clone(),
                            probe(resource),
                            context,
                            Some(schema),
                        )
                        .is_ok()
                    })
                };
                [ContextShape::Quota, ContextShape::Basic]
                    .into_iter()
                    .find(|shape| fits(*shape))
                    .unwrap_or(ContextShape::Custom)
            }
            _ => ContextShape::Custom,
        };
        envs.insert(
            action.clone(),
            ActionEnv {
                principals,
                resources,
                shape,
            },
        );
    }
    envs
}

/// Work kept between the loads of one engine, so that a reload redoes only what changed.
#[derive(Debug, Default)]
pub(crate) struct LoadCache {
    pub parse: ParseCache,
    pub validation: ValidationCache,
}

/// A loaded policy set. Cheap to share behind an `Arc`; never changes after loading.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) schema: Schema,
    pub(crate) parent_types: crate::parents::ParentTypes,
    pub(crate) policies: PolicySet,
    pub(crate) refs: HashMap<PolicyId, PolicyRef>,
    pub(crate) entities: Entities,
    pub(crate) sources: Vec<SourceFile>,
    pub(crate) action_ids: BTreeSet<String>,
    pub(crate) entity_type_names: HashSet<EntityTypeName>,
    pub(crate) action_envs: HashMap<EntityUid, ActionEnv>,
    pub(crate) index: PolicyIndex,
    fingerprint: String,
    warnings: Vec<Diagnostic>,
    loaded_at: SystemTime,
    pub(crate) generation: u64,
    /// Number of policies that this load validated strictly (the rest came from the cache).
    pub(crate) validated_policies: usize,
    /// Number of policy and entity files that this load parsed.
    pub(crate) parsed_files: usize,
}

impl Snapshot {
    /// Reads, parses and strictly validates everything `options` names.
    ///
    /// Fails on any error, keeping every diagnostic; warnings alone do not fail.
    ///
    /// ```
    /// use modelgate::{LoadOptions, Snapshot};
    /// let snapshot = Snapshot::load(&LoadOptions::new("policies", "schema")).unwrap();
    /// assert!(snapshot.policy_count() > 0);
    /// ```
    pub fn load(options: &LoadOptions) -> Result<Self, LoadError> {
        Self::load_with_cache(options, &mut LoadCache::default(), None)
    }

    /// Loads like [`Snapshot::load`], but parses and strictly validates only the files whose
    /// text (or the schema) changed since the load that filled `cache`, and reuses the work
    /// that `previous` (the snapshot this one replaces) did for unchanged policies.
    pub(crate) fn load_with_cache(
        options: &LoadOptions,
        cache: &mut LoadCache,
        previous: Option<&Snapshot>,
    ) -> Result<Self, LoadError> {
        let (parsed, mut diagnostics) = parse_all(options, &mut cache.parse);
        let Some(parsed) = parsed.filter(|parsed| parsed.complete) else {
            sort_diagnostics(&mut diagnostics);
            return Err(LoadError { diagnostics });
        };
        let started = std::time::Instant::now();
        diagnostics.extend(validate_parsed_with(&parsed, &mut cache.validation));
        let validated = started.elapsed();
        sort_diagnostics(&mut diagnostics);
        if diagnostics.iter().any(Diagnostic::is_error) {
            return Err(LoadError { diagnostics });
        }

        let action_ids = parsed
            .schema
            .actions()
            .map(|uid| uid.id().unescaped().to_string())
            .collect();
        let action_envs = action_envs(&parsed.schema);
        let index = PolicyIndex::new(&parsed.policies, previous.map(|previous| &previous.index));
        tracing::debug!(
            validation_ms = validated.as_secs_f64() * 1e3,
            indexing_ms = (started.elapsed() - validated).as_secs_f64() * 1e3,
            "validated and indexed policy set"
        );
        let entity_type_names = parsed.schema.entity_types().cloned().collect();
        Ok(Self {
            action_envs,
            index,
            schema: parsed.schema,
            parent_types: parsed.parent_types,
            policies: parsed.policies,
            refs: parsed.policy_refs,
            entities: parsed.entities,
            sources: parsed.sources,
            action_ids,
            entity_type_names,
            fingerprint: parsed.fingerprint,
            warnings: diagnostics,
            loaded_at: SystemTime::now(),
            generation: 0,
            validated_policies: cache.validation.last_validated,
            parsed_files: cache.parse.last_parsed,
        })
    }

    /// Returns the number of policies.
    pub fn policy_count(&self) -> usize {
        self.refs.len()
    }

    /// Returns the number of entities, including the action entities that the schema declares.
    pub fn entity_count(&self) -> usize {
        self.entities.len()
    }

    /// Returns the SHA-256 over the paths and contents of every file the snapshot was built from.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Returns the warnings found while loading.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// Returns when the snapshot finished loading.
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// Returns the engine generation this snapshot was published as (0 before publication).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Returns every policy, sorted by id.
    pub fn policies(&self) -> Vec<&PolicyRef> {
        let mut policies: Vec<&PolicyRef> = self.refs.values().collect();
        policies.sort_by(|a, b| a.id.cmp(&b.id));
        policies
    }

    /// Returns the policy with this id.
    pub fn policy(&self, id: &str) -> Option<&PolicyRef> {
        self.refs.get(&PolicyId::new(id))
    }

    /// Returns the files the snapshot was read from.
    pub fn sources(&self) -> &[SourceFile] {
        &self.sources
    }

    /// Returns `true` when the entity data contains `uid`.
    pub fn contains_entity(&self, uid: &EntityUid) -> bool {
        self.entities.get(uid).is_some()
    }

    /// Returns the ids of the entities of one type, sorted.
    pub fn entity_ids_of_type(&self, entity_type: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .entities
            .iter()
            .filter(|entity| entity.uid().type_name().to_string() == entity_type)
            .map(|entity| entity.uid().id().unescaped().to_string())
            .collect();
        ids.sort();
        ids
    }

    /// Returns the Cedar policy set, with every policy named by its modelgate id.
    pub fn cedar_policies(&self) -> &PolicySet {
        &self.policies
    }

    /// Returns the Cedar entity store, including the schema's action entities.
    pub fn cedar_entities(&self) -> &Entities {
        &self.entities
    }

    /// Returns the Cedar schema.
    pub fn cedar_schema(&self) -> &Schema {
        &self.schema
    }

    /// Returns the action ids that the schema declares, sorted.
    pub fn action_ids(&self) -> impl Iterator<Item = &str> {
        self.action_ids.iter().map(String::as_str)
    }
}
