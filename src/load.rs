//! Reads a policy directory, schema fragments and entity files from disk, parses them with
//! Cedar and maps every problem back to a file, line and column.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    entities_errors::EntitiesError, Entities, ParseErrors, PolicyId, PolicySet, Schema,
    SchemaFragment,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::decision::{Effect, PolicyRef, Status};
use crate::diagnostic::{Diagnostic, Severity, SourceFile};
use crate::parents::{ParentTypes, UndeclaredParent};

/// The locations of a policy set on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Directory searched recursively for `.cedar` policy files.
    pub policy_dir: PathBuf,
    /// Schema files (`.cedarschema`) or directories containing them. All fragments are merged.
    pub schema: Vec<PathBuf>,
    /// Entity files (Cedar entity JSON) or directories searched recursively for `.json` files.
    pub entities: Vec<PathBuf>,
    /// Accept a policy set with no policies. Off by default, because an empty set denies
    /// every request.
    pub allow_empty: bool,
}

impl LoadOptions {
    /// Creates options for `policy_dir` and one schema path; entities are read from
    /// `policy_dir/entities` when that directory exists.
    pub fn new(policy_dir: impl Into<PathBuf>, schema: impl Into<PathBuf>) -> Self {
        let policy_dir = policy_dir.into();
        let default_entities = policy_dir.join("entities");
        let entities = if default_entities.is_dir() {
            vec![default_entities]
        } else {
            Vec::new()
        };
        Self {
            policy_dir,
            schema: vec![schema.into()],
            entities,
            allow_empty: false,
        }
    }

    /// Replaces the entity paths.
    pub fn with_entities(mut self, entities: Vec<PathBuf>) -> Self {
        self.entities = entities;
        self
    }

    /// Sets whether an empty policy set may load.
    pub fn allow_empty(mut self, allow_empty: bool) -> Self {
        self.allow_empty = allow_empty;
        self
    }
}

/// Everything read from disk and parsed, before strict validation.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub schema: Schema,
    /// The parent types the schema declares for each entity type.
    pub parent_types: ParentTypes,
    pub policies: PolicySet,
    pub policy_refs: HashMap<PolicyId, PolicyRef>,
    /// Byte range of each policy in its file, for locating lints.
    pub policy_spans: HashMap<PolicyId, (usize, usize, usize)>,
    pub entities: Entities,
    pub sources: Vec<SourceFile>,
    pub fingerprint: String,
    /// False when some file failed to load: the set holds only what did load, which is
    /// enough to validate and lint it in the same run, but never to serve decisions.
    pub complete: bool,
    /// False when the entity files failed to load and `entities` holds only the schema's
    /// action entities, so lints about unknown entities would be wrong.
    pub entities_complete: bool,
}

/// Parse results of earlier loads, per file. A policy file is parsed again only when its
/// text changed, and an entity file when its text or the schema changed, so a reload after
/// an edit to one file parses only that file. Files gone from disk drop out at the next load.
#[derive(Debug, Default)]
pub(crate) struct ParseCache {
    policies: HashMap<PathBuf, (Arc<str>, PolicySet)>,
    /// Each entity file's text, the schema text it was parsed with, and the result.
    entities: HashMap<PathBuf, (Arc<str>, Arc<str>, Entities)>,
    /// The entity files of the last load, in order, and their entities merged into one store.
    merged_entities: Option<(Vec<PathBuf>, Entities)>,
    /// Number of policy and entity files that the last load parsed.
    pub(crate) last_parsed: usize,
}

/// The entries of the previous load to look up, and the entries of this load.
struct CacheRound<'a> {
    previous: ParseCache,
    next: &'a mut ParseCache,
    /// The texts of the schema files, which entity parsing depends on.
    schema_key: Arc<str>,
    /// Number of entity files parsed in this load.
    entity_files_parsed: usize,
}

impl CacheRound<'_> {
    /// Returns the merged store of the previous load if this load parsed no entity file and
    /// found the same files, so that the merge is not redone.
    fn merged_entities(&mut self, files: &[PathBuf]) -> Option<Entities> {
        let (previous_files, merged) = self.previous.merged_entities.take()?;
        (self.entity_files_parsed == 0 && previous_files == files).then_some(merged)
    }

    fn policies(&mut self, source: &SourceFile) -> Result<PolicySet, Box<ParseErrors>> {
        let cached = self
            .previous
            .policies
            .remove(&source.path)
            .filter(|(text, _)| *text == source.text);
        let set = match cached {
            Some((_, set)) => set,
            None => {
                self.next.last_parsed += 1;
                PolicySet::from_str(&source.text).map_err(Box::new)?
            }
        };
        self.next
            .policies
            .insert(source.path.clone(), (Arc::clone(&source.text), set.clone()));
        Ok(set)
    }

    fn entities(
        &mut self,
        source: &SourceFile,
        schema: &Schema,
        parent_types: &ParentTypes,
    ) -> Result<Entities, EntityFileError> {
        let cached = self
            .previous
            .entities
            .remove(&source.path)
            .filter(|(text, schema_key, _)| *text == source.text && *schema_key == self.schema_key);
        let entities = match cached {
            Some((_, _, entities)) => entities,
            None => {
                self.next.last_parsed += 1;
                self.entity_files_parsed += 1;
                let entities = Entities::from_json_str(&source.text, Some(schema))
                    .map_err(|error| EntityFileError::Cedar(Box::new(error)))?;
                // Cedar accepted the file, so it is a JSON array of entities.
                let json: Value = serde_json::from_str(&source.text).unwrap_or_default();
                let undeclared =
                    parent_types.undeclared(json.as_array().map(Vec::as_slice).unwrap_or_default());
                if !undeclared.is_empty() {
                    return Err(EntityFileError::UndeclaredParents(undeclared));
                }
                entities
            }
        };
        self.next.entities.insert(
            source.path.clone(),
            (
                Arc::clone(&source.text),
                Arc::clone(&self.schema_key),
                entities.clone(),
            ),
        );
        Ok(entities)
    }
}

/// The reason an entity file was rejected.
enum EntityFileError {
    Cedar(Box<EntitiesError>),
    UndeclaredParents(Vec<UndeclaredParent>),
}

/// Returns the paths and texts of the schema files among `sources`, the key under which
/// results that depend on the schema are kept between loads.
pub(crate) fn schema_key(sources: &[SourceFile]) -> String {
    sources
        .iter()
        .filter(|source| {
            source
                .path
                .extension()
                .is_some_and(|ext| ext == "cedarschema")
        })
        .map(|source| format!("{}\0{}\0", source.path.display(), source.text))
        .collect()
}

/// Reads and parses all sources, collecting every problem rather than stopping at the first.
/// Files unchanged since the load that filled `cache` are not parsed again.
pub(crate) fn parse_all(
    options: &LoadOptions,
    cache: &mut ParseCache,
) -> (Option<Parsed>, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let mut sources = Vec::new();

    let started = std::time::Instant::now();
    let schema = load_schema(&options.schema, &mut sources, &mut diagnostics);
    let schema_done = started.elapsed();
    let mut round = CacheRound {
        previous: std::mem::take(cache),
        next: cache,
        schema_key: Arc::from(schema_key(&sources)),
        entity_files_parsed: 0,
    };
    let policies = load_policies(options, &mut sources, &mut diagnostics, &mut round);
    let policies_done = started.elapsed();
    let entities = match &schema {
        Some((schema, parent_types)) => load_entities(
            &options.entities,
            schema,
            parent_types,
            &mut sources,
            &mut diagnostics,
            &mut round,
        ),
        None => None,
    };
    tracing::debug!(
        schema_ms = schema_done.as_secs_f64() * 1e3,
        policies_ms = (policies_done - schema_done).as_secs_f64() * 1e3,
        entities_ms = (started.elapsed() - policies_done).as_secs_f64() * 1e3,
        "parsed policy set sources"
    );

    let complete = !diagnostics.iter().any(Diagnostic::is_error);
    // Without a schema nothing can be validated; without any policy there is nothing to lint.
    let (Some((schema, parent_types)), Some((policies, policy_refs, policy_spans))) =
        (schema, policies)
    else {
        return (None, diagnostics);
    };
    let entities_complete = entities.is_some();
    let entities = match entities {
        Some(entities) => entities,
        None => match schema.action_entities() {
            Ok(actions) => actions,
            Err(_) => return (None, diagnostics),
        },
    };
    let fingerprint = fingerprint(&sources);
    let parsed = Parsed {
        schema,
        parent_types,
        policies,
        policy_refs,
        policy_spans,
        entities,
        sources,
        fingerprint,
        complete,
        entities_complete,
    };
    (Some(parsed), diagnostics)
}

/// Lists files below `root` with the extension `ext`, sorted by path, skipping hidden
/// files and directories (editor swap and backup files start with a dot).
pub(crate) fn discover(root: &Path, ext: &str) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    if root.is_file() {
        found.push(root.to_path_buf());
        return Ok(found);
    }
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden {
                continue;
            }
            // `metadata` follows symlinks, so ConfigMap-style links to files count as files.
            let metadata = fs::metadata(&path)?;
            if metadata.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|found| found == ext) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

fn read_source(path: &Path, diagnostics: &mut Vec<Diagnostic>) -> Option<SourceFile> {
    match fs::read_to_string(path) {
        Ok(text) => Some(SourceFile::new(path.to_path_buf(), text)),
        Err(error) => {
            diagnostics.push(
                Diagnostic::error("unreadable-file", format!("cannot read file: {error}"))
                    .in_file(path)
                    .with_help("check that the file exists and is readable UTF-8 text"),
            );
            None
        }
    }
}

fn discover_or_report(
    root: &Path,
    ext: &str,
    what: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<PathBuf> {
    if !root.exists() {
        diagnostics.push(
            Diagnostic::error("missing-path", format!("{what} path does not exist"))
                .in_file(root)
                .with_help(format!(
                    "create it or pass the right path to the `--{what}` option"
                )),
        );
        return Vec::new();
    }
    match discover(root, ext) {
        Ok(found) => found,
        Err(error) => {
            diagnostics.push(
                Diagnostic::error("unreadable-file", format!("cannot list directory: {error}"))
                    .in_file(root),
            );
            Vec::new()
        }
    }
}

fn load_schema(
    paths: &[PathBuf],
    sources: &mut Vec<SourceFile>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<(Schema, ParentTypes)> {
    let mut files = Vec::new();
    for path in paths {
        files.extend(discover_or_report(
            path,
            "cedarschema",
            "schema",
            diagnostics,
        ));
    }
    if files.is_empty() {
        if !paths.iter().any(|path| !path.exists()) {
            diagnostics.push(
                Diagnostic::error("missing-schema", "no `.cedarschema` schema file found")
                    .with_help(
                    "modelgate validates policies strictly and needs a schema; pass `--schema DIR`",
                ),
            );
        }
        return None;
    }

    let mut fragments = Vec::new();
    let mut parent_types = ParentTypes::default();
    let before = diagnostics.len();
    for path in files {
        let Some(source) = read_source(&path, diagnostics) else {
            continue;
        };
        match SchemaFragment::from_cedarschema_str(&source.text) {
            Ok((fragment, warnings)) => {
                for warning in warnings {
                    diagnostics.push(Diagnostic::from_cedar(
                        Severity::Warning,
                        "schema-warning",
                        &warning,
                        Some(&source),
                    ));
                }
                // Cedar's JSON form of the fragment lists each type's declared parents.
                match fragment
                    .to_json_string()
                    .map(|json| serde_json::from_str(&json))
                {
                    Ok(Ok(json)) => parent_types.add_fragment(&json),
                    _ => diagnostics.push(
                        Diagnostic::error(
                            "schema-parents",
                            "cannot read the declared parent types of the schema's entity types",
                        )
                        .in_file(&source.path)
                        .with_help("report this schema to the modelgate maintainers"),
                    ),
                }
                fragments.push(fragment);
            }
            Err(error) => diagnostics.push(Diagnostic::from_cedar(
                Severity::Error,
                "schema-syntax",
                &error,
                Some(&source),
            )),
        }
        sources.push(source);
    }
    if diagnostics.iter().skip(before).any(Diagnostic::is_error) {
        return None;
    }
    match Schema::from_schema_fragments(fragments) {
        Ok(schema) => Some((schema, parent_types)),
        Err(error) => {
            let mut diagnostic =
                Diagnostic::from_cedar(Severity::Error, "schema-invalid", &error, None);
            if let [only] = paths {
                diagnostic = diagnostic.in_file(only);
            }
            diagnostics.push(diagnostic);
            None
        }
    }
}

type LoadedPolicies = (
    PolicySet,
    HashMap<PolicyId, PolicyRef>,
    HashMap<PolicyId, (usize, usize, usize)>,
);

fn load_policies(
    options: &LoadOptions,
    sources: &mut Vec<SourceFile>,
    diagnostics: &mut Vec<Diagnostic>,
    cache: &mut CacheRound<'_>,
) -> Option<LoadedPolicies> {
    let dir = &options.policy_dir;
    if !dir.is_dir() {
        let message = if dir.exists() {
            "policy path is not a directory"
        } else {
            "policy directory does not exist"
        };
        diagnostics.push(
            Diagnostic::error("missing-path", message)
                .in_file(dir)
                .with_help(
                    "pass the directory that holds your `.cedar` files with `--policies DIR`",
                ),
        );
        return None;
    }
    let files = discover_or_report(dir, "cedar", "policies", diagnostics);

    let mut set = PolicySet::new();
    let mut refs: HashMap<PolicyId, PolicyRef> = HashMap::new();
    let mut spans = HashMap::new();
    let mut ok = true;
    for path in &files {
        let Some(source) = read_source(path, diagnostics) else {
            ok = false;
            continue;
        };
        let source_index = sources.len();
        if !parse_policy_file(
            &source,
            source_index,
            &mut set,
            &mut refs,
            &mut spans,
            diagnostics,
            cache,
        ) {
            ok = false;
        }
        sources.push(source);
    }

    if ok && refs.is_empty() && !options.allow_empty {
        diagnostics.push(
            Diagnostic::error(
                "empty-policy-set",
                "the policy set contains no policies, so every request would be denied",
            )
            .in_file(dir)
            .with_help("add `.cedar` files, or pass `--allow-empty` if an empty set is intended"),
        );
        return None;
    }
    // Policies from the files that parsed are kept even when another file failed, so that
    // validation still reports their problems in the same run.
    if !ok && refs.is_empty() {
        return None;
    }
    Some((set, refs, spans))
}

/// Parses one policy file and adds its policies to `set` under their `@id`.
fn parse_policy_file(
    source: &SourceFile,
    source_index: usize,
    set: &mut PolicySet,
    refs: &mut HashMap<PolicyId, PolicyRef>,
    spans: &mut HashMap<PolicyId, (usize, usize, usize)>,
    diagnostics: &mut Vec<Diagnostic>,
    cache: &mut CacheRound<'_>,
) -> bool {
    let parsed = match cache.policies(source) {
        Ok(parsed) => parsed,
        Err(errors) => {
            for error in errors.iter() {
                diagnostics.push(
                    Diagnostic::from_cedar(Severity::Error, "policy-syntax", error, Some(source))
                        .with_help_if_missing(
                            "check the Cedar syntax near the marked text (https://docs.cedarpolicy.com/policies/syntax-policy.html)",
                        ),
                );
            }
            return false;
        }
    };
    let mut ok = true;
    if parsed.templates().next().is_some() {
        diagnostics.push(
            Diagnostic::error(
                "template-unsupported",
                "policy templates (`?principal`, `?resource`) are not supported",
            )
            .in_file(&source.path)
            .with_help("write a policy per principal or resource instead of a template"),
        );
        ok = false;
    }

    // Cedar names the policies of one text `policy0`, `policy1`, ... in source order.
    let mut ordered: Vec<(usize, cedar_policy::Policy)> = parsed
        .policies()
        .map(|policy| {
            let index = policy
                .id()
                .to_string()
                .trim_start_matches("policy")
                .parse::<usize>()
                .unwrap_or(usize::MAX);
            (index, policy.clone())
        })
        .collect();
    ordered.sort_by_key(|(index, _)| *index);

    let mut search_from = 0;
    for (position, (_, policy)) in ordered.into_iter().enumerate() {
        // Display prints the policy's original text, a slice of the file. Policies appear in
        // source order, so the next occurrence after the previous policy is this one.
        // NOTE: a comment between two policies that repeats the next policy verbatim would
        // be found first and shift the reported line to the comment.
        let text = policy.to_string();
        let offset = source
            .text
            .get(search_from..)
            .and_then(|rest| rest.find(&text))
            .map_or(search_from, |found| search_from + found);
        search_from = offset + text.len();
        let location = source.location(offset);

        // `Policy::annotation` parses its key with Cedar's grammar on each call, which made up
        // a seventh of a reload of 10,000 policies, so the annotations are read in one pass.
        let annotation = annotation_reader(&policy);
        let explicit_id = annotation("id").map(str::to_string);
        let id = explicit_id.clone().unwrap_or_else(|| {
            let file_name = source.path.file_name().map_or_else(
                || source.path.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            );
            format!("{file_name}#{}", position + 1)
        });
        let policy_id = PolicyId::new(&id);

        let status = match annotation("status") {
            None => None,
            Some(value) => {
                match Status::from_annotation(value) {
                    Some(status) => Some(status),
                    None => {
                        diagnostics.push(
                        Diagnostic::error(
                            "invalid-status",
                            format!("`@status(\"{value}\")` is not a status modelgate uses"),
                        )
                        .at(source, offset, text.len())
                        .for_policy(&id)
                        .with_help("write `@status(\"401\")`, `@status(\"403\")` or `@status(\"429\")`"),
                    );
                        ok = false;
                        None
                    }
                }
            }
        };

        let window = match annotation("window") {
            None => None,
            Some(value) => match value.parse::<crate::quota::Window>() {
                Ok(window) => Some(window),
                Err(_) => {
                    diagnostics.push(
                        Diagnostic::error(
                            "invalid-window",
                            format!("`@window(\"{value}\")` is not a usage window"),
                        )
                        .at(source, offset, text.len())
                        .for_policy(&id)
                        .with_help(
                            "write `@window(\"minute\")`, `@window(\"hour\")`, `@window(\"day\")` or `@window(\"month\")`",
                        ),
                    );
                    ok = false;
                    None
                }
            },
        };

        if let Some(existing) = refs.get(&policy_id) {
            diagnostics.push(
                Diagnostic::error(
                    "duplicate-id",
                    format!(
                        "policy id `{id}` is used twice: here and at {}:{}",
                        existing.file.display(),
                        existing.line
                    ),
                )
                .at(source, offset, text.len())
                .for_policy(&id)
                .with_help(
                    "give every policy a unique `@id(\"...\")`; rename the one that was added last",
                ),
            );
            ok = false;
            continue;
        }

        let effect = match policy.effect() {
            cedar_policy::Effect::Permit => Effect::Permit,
            cedar_policy::Effect::Forbid => Effect::Forbid,
        };
        let reference = PolicyRef {
            id: id.clone(),
            effect,
            file: source.path.clone(),
            line: location.line,
            column: location.column,
            reason: annotation("reason").map(str::to_string),
            status,
            window,
        };
        if let Err(error) = set.add(policy.new_id(policy_id.clone())) {
            diagnostics.push(
                Diagnostic::from_cedar(Severity::Error, "policy-set", &error, None)
                    .at(source, offset, text.len())
                    .for_policy(&id),
            );
            ok = false;
            continue;
        }
        refs.insert(policy_id.clone(), reference);
        spans.insert(policy_id, (source_index, offset, text.len()));
        if explicit_id.is_none() {
            diagnostics.push(
                Diagnostic::warning(
                    "missing-id",
                    format!("policy has no `@id`; it is named `{id}`"),
                )
                .at(source, offset, text.len())
                .for_policy(&id)
                .with_help("add `@id(\"a-stable-name\")` so that decisions and tests can name it"),
            );
        }
    }
    ok
}

trait HelpIfMissing {
    fn with_help_if_missing(self, help: &str) -> Self;
}

impl HelpIfMissing for Diagnostic {
    fn with_help_if_missing(self, help: &str) -> Self {
        if self.help.is_some() {
            self
        } else {
            self.with_help(help)
        }
    }
}

fn load_entities(
    paths: &[PathBuf],
    schema: &Schema,
    parent_types: &ParentTypes,
    sources: &mut Vec<SourceFile>,
    diagnostics: &mut Vec<Diagnostic>,
    cache: &mut CacheRound<'_>,
) -> Option<Entities> {
    let mut files = Vec::new();
    for path in paths {
        files.extend(discover_or_report(path, "json", "entities", diagnostics));
    }

    let mut parsed_files: Vec<(usize, Entities)> = Vec::new();
    let mut ok = true;
    for path in &files {
        let Some(source) = read_source(path, diagnostics) else {
            ok = false;
            continue;
        };
        // Cedar parses the text directly; serde_json runs only to explain a failure, because
        // its errors carry a line and column.
        match cache.entities(&source, schema, parent_types) {
            Ok(entities) => parsed_files.push((sources.len(), entities)),
            Err(EntityFileError::UndeclaredParents(problems)) => {
                ok = false;
                for problem in problems {
                    let mut diagnostic = Diagnostic::error("entity-parent-type", problem.message())
                        .in_file(&source.path)
                        .with_help(
                            "give the entity a parent of a declared type, or add the parent's type to `in [...]` in the schema",
                        );
                    if let Some(offset) = locate_entity_in(&source.text, &problem.entity) {
                        diagnostic = diagnostic.at(&source, offset, 1);
                    }
                    diagnostics.push(diagnostic);
                }
            }
            Err(EntityFileError::Cedar(error)) => {
                ok = false;
                match serde_json::from_str::<Value>(&source.text) {
                    Err(syntax) => diagnostics.push(json_syntax_diagnostic(&source, &syntax)),
                    Ok(Value::Array(items)) => {
                        // Cedar stops at the first bad entity; parsing each one on its own
                        // reports them all. Problems between entities (a duplicate id, a
                        // cycle) show only in Cedar's own error.
                        let per_entity: Vec<Diagnostic> = items
                            .iter()
                            .filter_map(|item| {
                                cedar_policy::Entity::from_json_value(item.clone(), Some(schema))
                                    .err()
                            })
                            .map(|error| entity_diagnostic(&source, &error))
                            .collect();
                        if per_entity.is_empty() {
                            diagnostics.push(entity_diagnostic(&source, &error));
                        } else {
                            diagnostics.extend(per_entity);
                        }
                    }
                    Ok(_) => diagnostics.push(
                        Diagnostic::error(
                            "entities-shape",
                            "an entity file must hold a JSON array",
                        )
                        .at(&source, 0, 1)
                        .with_help(
                            "write `[ {\"uid\": ..., \"attrs\": ..., \"parents\": ...}, ... ]`",
                        ),
                    ),
                }
            }
        }
        sources.push(source);
    }
    if !ok {
        return None;
    }
    let merged = match cache.merged_entities(&files) {
        Some(merged) => merged,
        None => merge_entity_files(parsed_files, schema, sources, diagnostics)?,
    };
    cache.next.merged_entities = Some((files, merged.clone()));
    Some(merged)
}

/// Merges the entities of several files into one store, reporting an entity that appears in
/// more than one file.
fn merge_entity_files(
    mut parsed_files: Vec<(usize, Entities)>,
    schema: &Schema,
    sources: &[SourceFile],
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Entities> {
    // Merge into the largest file's store. Entities were validated per file, and identical
    // copies (the schema's action entities) merge silently.
    parsed_files.sort_by_key(|(_, entities)| std::cmp::Reverse(entities.len()));
    let mut files = parsed_files.into_iter();
    let Some((_, mut merged)) = files.next() else {
        return Entities::from_json_str("[]", Some(schema)).ok();
    };
    for (source_index, entities) in files {
        let additions: Vec<cedar_policy::Entity> = entities.iter().cloned().collect();
        merged = match merged.add_entities(additions, None) {
            Ok(merged) => merged,
            Err(error) => {
                let mut diagnostic =
                    Diagnostic::from_cedar(Severity::Error, "entities-invalid", &error, None);
                if let Some(source) = sources.get(source_index) {
                    diagnostic = diagnostic.in_file(&source.path);
                    if let Some(offset) = locate_entity_in(&source.text, &diagnostic.message) {
                        diagnostic = diagnostic.at(source, offset, 1);
                    }
                }
                diagnostics.push(diagnostic.with_help(
                    "each entity may appear in only one entity file; remove the duplicate",
                ));
                return None;
            }
        };
    }
    Some(merged)
}

/// Returns a lookup of `policy`'s annotation values by key.
fn annotation_reader<'a>(policy: &'a cedar_policy::Policy) -> impl Fn(&str) -> Option<&'a str> {
    let annotations: Vec<(&str, &str)> = policy.annotations().collect();
    move |key| {
        annotations
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| *value)
    }
}

pub(crate) fn json_syntax_diagnostic(source: &SourceFile, error: &serde_json::Error) -> Diagnostic {
    let message = error.to_string();
    // serde_json appends " at line L column C"; the location is reported separately.
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(head, _)| head)
        .to_string();
    Diagnostic::error("json-syntax", format!("invalid JSON: {message}"))
        .at_line_column(source, error.line().max(1), error.column().max(1))
        .with_help("fix the JSON syntax (a trailing comma or a missing quote is the usual cause)")
}

fn entity_diagnostic(
    source: &SourceFile,
    error: &cedar_policy::entities_errors::EntitiesError,
) -> Diagnostic {
    let mut diagnostic = Diagnostic::from_cedar(Severity::Error, "entities-invalid", error, None)
        .in_file(&source.path);
    if let Some(offset) = locate_entity_in(&source.text, &diagnostic.message) {
        let attribute_offset = attribute_in_message(&diagnostic.message).and_then(|attribute| {
            let needle = format!("\"{attribute}\"");
            let rest = source.text.get(offset..)?;
            rest.find(&needle)
                .map(|found| (offset + found, needle.len()))
        });
        diagnostic = match attribute_offset {
            Some((at, len)) => diagnostic.at(source, at, len),
            None => diagnostic.at(source, offset, 1),
        };
    }
    if diagnostic.help.is_none() {
        diagnostic = diagnostic.with_help("make the entity match its type in the schema");
    }
    diagnostic
}

/// Finds the byte offset of the entity named in a Cedar message (`Type::"id"`) in an
/// entity file, by looking for its quoted id.
fn locate_entity_in(text: &str, message: &str) -> Option<usize> {
    let marker = message.find("::\"")?;
    let after = message.get(marker + 3..)?;
    let id = after.get(..after.find('"')?)?;
    let needle = format!("\"{id}\"");
    text.find(&needle)
}

/// Extracts `X` from Cedar's "in attribute `X`" phrasing.
fn attribute_in_message(message: &str) -> Option<&str> {
    let start = message.find("attribute `")? + "attribute `".len();
    let rest = message.get(start..)?;
    rest.get(..rest.find('`')?)
}

fn fingerprint(sources: &[SourceFile]) -> String {
    let mut ordered: BTreeMap<&Path, &Arc<str>> = BTreeMap::new();
    for source in sources {
        ordered.insert(&source.path, &source.text);
    }
    let mut hasher = Sha256::new();
    for (path, text) in ordered {
        hasher.update(path.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}
