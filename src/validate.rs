//! Strict validation of a parsed policy set against its schema, plus review lints.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use cedar_policy::{EntityUid, PolicyId, PolicySet, ValidationMode, Validator};
use serde_json::Value;

use crate::decision::Effect;
use crate::diagnostic::{Diagnostic, Severity};
use crate::load::{parse_all, schema_key, LoadOptions, ParseCache, Parsed};

/// The outcome of validating a policy directory: every problem found, in one run.
#[derive(Debug, Clone)]
pub struct ValidationReport {
    /// Errors and warnings, in file order.
    pub diagnostics: Vec<Diagnostic>,
    /// Number of policies parsed (0 when parsing failed).
    pub policy_count: usize,
    /// Number of entities loaded, including action entities from the schema (0 when an
    /// entity file failed to load).
    pub entity_count: usize,
}

impl ValidationReport {
    /// Number of errors.
    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    /// Number of warnings.
    pub fn warning_count(&self) -> usize {
        self.diagnostics.len() - self.error_count()
    }
}

/// Parses and strictly validates everything `options` names, collecting every problem.
pub fn validate(options: &LoadOptions) -> ValidationReport {
    let (parsed, mut diagnostics) = parse_all(options, &mut ParseCache::default());
    let Some(parsed) = parsed else {
        return ValidationReport {
            diagnostics,
            policy_count: 0,
            entity_count: 0,
        };
    };
    diagnostics.extend(validate_parsed(&parsed));
    sort_diagnostics(&mut diagnostics);
    ValidationReport {
        diagnostics,
        policy_count: parsed.policy_refs.len(),
        // Without the entity files only the schema's action entities are loaded, which is not
        // the count a reader expects.
        entity_count: if parsed.entities_complete {
            parsed.entities.len()
        } else {
            0
        },
    }
}

/// Orders diagnostics by file and position so that output is stable.
pub(crate) fn sort_diagnostics(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by(|a, b| {
        let key = |d: &Diagnostic| {
            (
                d.file.clone(),
                d.location.map(|l| (l.line, l.column)),
                d.severity,
                d.message.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
}

/// Runs Cedar's strict validator and modelgate's lints over an already parsed set.
pub(crate) fn validate_parsed(parsed: &Parsed) -> Vec<Diagnostic> {
    validate_parsed_with(parsed, &mut ValidationCache::default())
}

/// Strict-validation results from earlier loads, so that a reload validates only the
/// policies that changed. Cedar validates each policy on its own against the schema, so a
/// file, or a policy, whose text and schema are unchanged gives the same result. Problems
/// across files (duplicate ids) are found by the loader, and the review lints always run in
/// full.
#[derive(Debug, Default)]
pub(crate) struct ValidationCache {
    files: HashMap<PathBuf, CachedFile>,
    /// The texts of policies that validated without any diagnostic under `clean_schema`.
    /// Only clean results are kept per policy, because a diagnostic's location moves when
    /// the policy moves within its file.
    clean: HashSet<String>,
    clean_schema: String,
    /// Number of policies strictly validated by the last load, for tests and logs.
    pub(crate) last_validated: usize,
}

#[derive(Debug)]
struct CachedFile {
    text: Arc<str>,
    schema: String,
    diagnostics: Vec<Diagnostic>,
}

/// Runs strict validation, reusing `cache` for files unchanged since an earlier load, then
/// the review lints.
pub(crate) fn validate_parsed_with(
    parsed: &Parsed,
    cache: &mut ValidationCache,
) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let schema_key = schema_key(&parsed.sources);

    // Group the policies by file.
    let mut by_file: HashMap<usize, Vec<&PolicyId>> = HashMap::new();
    for (id, (source_index, _, _)) in &parsed.policy_spans {
        by_file.entry(*source_index).or_default().push(id);
    }
    let validator = Validator::new(parsed.schema.clone());
    let mut validated = 0;
    let mut next_files = HashMap::new();
    let mut clean = std::mem::take(&mut cache.clean);
    if cache.clean_schema != schema_key {
        clean.clear();
    }
    for (source_index, ids) in by_file {
        let Some(source) = parsed.sources.get(source_index) else {
            continue;
        };
        let cached = cache
            .files
            .remove(&source.path)
            .filter(|cached| cached.text == source.text && cached.schema == schema_key);
        let file_diagnostics = match cached {
            Some(cached) => cached.diagnostics,
            None => {
                // Only the policies whose text has not validated cleanly before are validated.
                let changed: Vec<(&PolicyId, String)> = ids
                    .iter()
                    .filter_map(|id| Some((*id, parsed.policies.policy(id)?.to_string())))
                    .filter(|(_, text)| !clean.contains(text))
                    .collect();
                validated += changed.len();
                let policies = changed
                    .iter()
                    .filter_map(|(id, _)| parsed.policies.policy(id).cloned());
                let (file_diagnostics, flagged) = match PolicySet::from_policies(policies) {
                    Ok(set) => validate_set(parsed, &validator, &set),
                    // INVARIANT: the ids are unique within the full set, so a subset builds;
                    // should it not, the whole set is validated instead.
                    Err(_) => validate_set(parsed, &validator, &parsed.policies),
                };
                for (id, text) in changed {
                    if !flagged.contains(id) {
                        clean.insert(text);
                    }
                }
                file_diagnostics
            }
        };
        diagnostics.extend(file_diagnostics.iter().cloned());
        next_files.insert(
            source.path.clone(),
            CachedFile {
                text: Arc::clone(&source.text),
                schema: schema_key.clone(),
                diagnostics: file_diagnostics,
            },
        );
    }
    // Texts of deleted or edited policies stay until the set of texts outgrows the policy
    // set by a wide margin.
    if clean.len() > parsed.policies.policies().count().saturating_mul(4) {
        clean.clear();
    }
    cache.clean = clean;
    cache.clean_schema = schema_key;
    cache.files = next_files;
    cache.last_validated = validated;
    tracing::debug!(
        policies = validated,
        "strictly validated changed policy files"
    );

    let started = std::time::Instant::now();
    diagnostics.extend(lints(parsed));
    tracing::debug!(
        lints_ms = started.elapsed().as_secs_f64() * 1e3,
        "ran review lints"
    );
    diagnostics
}

/// Validates `set` strictly. Returns the diagnostics and the ids of the policies that have one.
fn validate_set(
    parsed: &Parsed,
    validator: &Validator,
    set: &PolicySet,
) -> (Vec<Diagnostic>, HashSet<PolicyId>) {
    let mut diagnostics = Vec::new();
    let mut flagged = HashSet::new();
    let result = validator.validate(set, ValidationMode::Strict);
    for error in result.validation_errors() {
        flagged.insert(error.policy_id().clone());
        diagnostics.push(cedar_validation_diagnostic(
            parsed,
            Severity::Error,
            "validation",
            error.policy_id(),
            error,
        ));
    }
    for warning in result.validation_warnings() {
        flagged.insert(warning.policy_id().clone());
        diagnostics.push(cedar_validation_diagnostic(
            parsed,
            Severity::Warning,
            "validation-warning",
            warning.policy_id(),
            warning,
        ));
    }
    (diagnostics, flagged)
}

fn cedar_validation_diagnostic(
    parsed: &Parsed,
    severity: Severity,
    code: &'static str,
    policy_id: &PolicyId,
    error: &dyn miette::Diagnostic,
) -> Diagnostic {
    let source = parsed
        .policy_spans
        .get(policy_id)
        .and_then(|(index, _, _)| parsed.sources.get(*index));
    let mut diagnostic = Diagnostic::from_cedar(severity, code, error, source);
    if diagnostic.location.is_none() {
        if let (Some(source), Some((_, offset, len))) = (source, parsed.policy_spans.get(policy_id))
        {
            diagnostic = diagnostic.at(source, *offset, *len);
        }
    }
    diagnostic.for_policy(policy_id.to_string())
}

/// Review lints: advice that Cedar's validator does not give.
fn lints(parsed: &Parsed) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let mut ids: Vec<&PolicyId> = parsed.policy_refs.keys().collect();
    ids.sort();
    for id in ids {
        let (Some(reference), Some((index, offset, len))) =
            (parsed.policy_refs.get(id), parsed.policy_spans.get(id))
        else {
            continue;
        };
        let Some(source) = parsed.sources.get(*index) else {
            continue;
        };
        if reference.reason.is_none() {
            diagnostics.push(
                Diagnostic::warning(
                    "missing-reason",
                    format!("policy `{id}` has no `@reason`, so its decisions cannot be explained"),
                )
                .at(source, *offset, *len)
                .for_policy(id.to_string())
                .with_help("add `@reason(\"...\")` in words a caller can act on"),
            );
        }
        if reference.effect == Effect::Forbid && reference.status.is_none() {
            diagnostics.push(
                Diagnostic::warning(
                    "missing-status",
                    format!("forbid policy `{id}` has no `@status`; its denials report 403"),
                )
                .at(source, *offset, *len)
                .for_policy(id.to_string())
                .with_help("add `@status(\"401\")`, `@status(\"403\")` or `@status(\"429\")`"),
            );
        }
        if reference.effect == Effect::Forbid
            && reference.status == Some(crate::decision::Status::TooManyRequests)
            && reference.window.is_none()
        {
            diagnostics.push(
                Diagnostic::warning(
                    "missing-window",
                    format!(
                        "forbid policy `{id}` answers 429 but has no `@window`, so its denials carry no retry-after"
                    ),
                )
                .at(source, *offset, *len)
                .for_policy(id.to_string())
                .with_help("add `@window(\"minute\")`, `@window(\"hour\")`, `@window(\"day\")` or `@window(\"month\")`: the window its limit counts in"),
            );
        }
        let policy_text = source.text.get(*offset..offset + len).unwrap_or("");
        let named = match scan_entity_literals(policy_text) {
            Some(named) => named,
            // The scanner gives up on escapes it does not decode; Cedar's JSON form is exact
            // but about ten times slower.
            None => {
                let Some(json) = parsed.policies.policy(id).and_then(|p| p.to_json().ok()) else {
                    continue;
                };
                let mut named = Vec::new();
                collect_entity_literals(&json, &mut named);
                named
            }
        };
        let mut reported = HashSet::new();
        for (entity_type, entity_id) in named {
            if entity_type == "Action" || !reported.insert((entity_type.clone(), entity_id.clone()))
            {
                continue;
            }
            let Ok(uid) = format!("{entity_type}::{}", quote(&entity_id)).parse::<EntityUid>()
            else {
                continue;
            };
            if !parsed.entities_complete || parsed.entities.get(&uid).is_some() {
                continue;
            }
            let needle = quote(&entity_id);
            let at = policy_text
                .find(&needle)
                .map_or(*offset, |found| offset + found);
            diagnostics.push(
                Diagnostic::warning(
                    "unknown-entity",
                    format!("policy `{id}` names `{uid}`, which is not in the entity data"),
                )
                .at(source, at, needle.len())
                .for_policy(id.to_string())
                .with_help("check the spelling, or add the entity to an entity file"),
            );
        }
    }
    diagnostics
}

fn quote(id: &str) -> String {
    serde_json::to_string(id).unwrap_or_else(|_| format!("\"{id}\""))
}

/// Finds the entity literals (`Type::"id"`, `Ns::Type::"id"`) in Cedar policy text, skipping
/// comments and string literals. Returns `None` when an id uses an escape other than `\"`
/// and `\\`, so that the caller can fall back to an exact method.
fn scan_entity_literals(text: &str) -> Option<Vec<(String, String)>> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    let mut path_start: Option<usize> = None;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                path_start = None;
                while bytes.get(i).is_some_and(|b| *b != b'\n') {
                    i += 1;
                }
            }
            b'"' => {
                let (value, end) = read_string(bytes, i)?;
                let entity_type = path_start
                    .and_then(|start| text.get(start..i))
                    .and_then(|path| path.strip_suffix("::"));
                if let Some(entity_type) = entity_type {
                    found.push((entity_type.to_string(), value));
                }
                path_start = None;
                i = end;
                continue;
            }
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b':' => {
                if path_start.is_none() && b != b':' {
                    path_start = Some(i);
                }
            }
            _ => path_start = None,
        }
        i += 1;
    }
    Some(found)
}

/// Reads the string literal starting at the quote at `start`; returns its value and the index
/// after the closing quote.
fn read_string(bytes: &[u8], start: usize) -> Option<(String, usize)> {
    let mut value = Vec::new();
    let mut i = start + 1;
    loop {
        match *bytes.get(i)? {
            b'"' => return Some((String::from_utf8(value).ok()?, i + 1)),
            b'\\' => {
                match *bytes.get(i + 1)? {
                    escaped @ (b'"' | b'\\') => value.push(escaped),
                    _ => return None,
                }
                i += 2;
            }
            other => {
                value.push(other);
                i += 1;
            }
        }
    }
}

/// Collects `(type, id)` of every entity literal in a policy's JSON form.
fn collect_entity_literals(value: &Value, found: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            if map.len() == 2 {
                if let (Some(Value::String(t)), Some(Value::String(i))) =
                    (map.get("type"), map.get("id"))
                {
                    found.push((t.clone(), i.clone()));
                    return;
                }
            }
            for child in map.values() {
                collect_entity_literals(child, found);
            }
        }
        Value::Array(items) => {
            for child in items {
                collect_entity_literals(child, found);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_finds_entity_literals() {
        let text = r#"permit (principal in Role::"analyst", action == Action::"chat", resource)
// Role::"commented"
when { resource in [Model::"a\"b", Ns::Model::"c"] && context.x == "Team::\"no\"" };"#;
        let found = scan_entity_literals(text).expect("no unusual escapes");
        assert_eq!(
            found,
            vec![
                ("Role".to_string(), "analyst".to_string()),
                ("Action".to_string(), "chat".to_string()),
                ("Model".to_string(), "a\"b".to_string()),
                ("Ns::Model".to_string(), "c".to_string()),
            ]
        );
    }

    #[test]
    fn scanner_gives_up_on_unicode_escapes() {
        assert_eq!(scan_entity_literals(r#"principal == User::"\u{41}""#), None);
    }
}
