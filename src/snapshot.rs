//! One immutable, fully validated policy set: schema, policies with their sources, and
//! entities. A decision reads exactly one snapshot.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::SystemTime;

use cedar_policy::{Entities, EntityTypeName, EntityUid, PolicyId, PolicySet, Schema};

use crate::decision::PolicyRef;
use crate::diagnostic::{Diagnostic, SourceFile};
use crate::load::{parse_all, LoadOptions};
use crate::validate::{sort_diagnostics, validate_parsed};

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

    /// Every error and warning found, in file order.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut errors = self.errors();
        match errors.next() {
            Some(first) => {
                write!(f, "cannot load the policy set: {first}")?;
                let more = errors.count();
                if more > 0 {
                    write!(f, " (and {more} more errors)")?;
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

/// A loaded policy set. Cheap to share behind an `Arc`; never changes after loading.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) schema: Schema,
    pub(crate) policies: PolicySet,
    pub(crate) refs: HashMap<PolicyId, PolicyRef>,
    pub(crate) entities: Entities,
    pub(crate) sources: Vec<SourceFile>,
    pub(crate) action_ids: BTreeSet<String>,
    pub(crate) entity_types: BTreeSet<String>,
    fingerprint: String,
    warnings: Vec<Diagnostic>,
    loaded_at: SystemTime,
    pub(crate) generation: u64,
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
        let (parsed, mut diagnostics) = parse_all(options);
        let Some(parsed) = parsed else {
            sort_diagnostics(&mut diagnostics);
            return Err(LoadError { diagnostics });
        };
        diagnostics.extend(validate_parsed(&parsed));
        sort_diagnostics(&mut diagnostics);
        if diagnostics.iter().any(Diagnostic::is_error) {
            return Err(LoadError { diagnostics });
        }

        let action_ids = parsed
            .schema
            .actions()
            .map(|uid| uid.id().unescaped().to_string())
            .collect();
        let entity_types = parsed
            .schema
            .entity_types()
            .map(EntityTypeName::to_string)
            .collect();
        Ok(Self {
            schema: parsed.schema,
            policies: parsed.policies,
            refs: parsed.policy_refs,
            entities: parsed.entities,
            sources: parsed.sources,
            action_ids,
            entity_types,
            fingerprint: parsed.fingerprint,
            warnings: diagnostics,
            loaded_at: SystemTime::now(),
            generation: 0,
        })
    }

    /// Number of policies.
    pub fn policy_count(&self) -> usize {
        self.refs.len()
    }

    /// Number of entities, including the action entities that the schema declares.
    pub fn entity_count(&self) -> usize {
        self.entities.len()
    }

    /// SHA-256 over the paths and contents of every file the snapshot was built from.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The warnings found while loading.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// When the snapshot finished loading.
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// The engine generation this snapshot was published as (0 before publication).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every policy, sorted by id.
    pub fn policies(&self) -> Vec<&PolicyRef> {
        let mut policies: Vec<&PolicyRef> = self.refs.values().collect();
        policies.sort_by(|a, b| a.id.cmp(&b.id));
        policies
    }

    /// The policy with this id.
    pub fn policy(&self, id: &str) -> Option<&PolicyRef> {
        self.refs.get(&PolicyId::new(id))
    }

    /// The files the snapshot was read from.
    pub fn sources(&self) -> &[SourceFile] {
        &self.sources
    }

    /// Returns `true` when the entity data contains `uid`.
    pub fn contains_entity(&self, uid: &EntityUid) -> bool {
        self.entities.get(uid).is_some()
    }

    /// Ids of the entities of one type, sorted.
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

    /// The action ids that the schema declares, sorted.
    pub fn action_ids(&self) -> impl Iterator<Item = &str> {
        self.action_ids.iter().map(String::as_str)
    }
}
