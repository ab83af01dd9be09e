//! Strict validation of a parsed policy set against its schema, plus review lints.

use std::collections::HashSet;

use cedar_policy::{EntityUid, PolicyId, ValidationMode, Validator};
use serde_json::Value;

use crate::decision::Effect;
use crate::diagnostic::{Diagnostic, Severity};
use crate::load::{parse_all, LoadOptions, Parsed};

/// The outcome of validating a policy directory: every problem found, in one run.
#[derive(Debug, Clone)]
pub struct ValidationReport {
    /// Errors and warnings, in file order.
    pub diagnostics: Vec<Diagnostic>,
    /// Number of policies parsed (0 when parsing failed).
    pub policy_count: usize,
    /// Number of entities loaded, including action entities from the schema.
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
    let (parsed, mut diagnostics) = parse_all(options);
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
        entity_count: parsed.entities.len(),
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
    let mut diagnostics = Vec::new();
    let validator = Validator::new(parsed.schema.clone());
    let result = validator.validate(&parsed.policies, ValidationMode::Strict);
    for error in result.validation_errors() {
        diagnostics.push(cedar_validation_diagnostic(
            parsed,
            Severity::Error,
            "validation",
            error.policy_id(),
            error,
        ));
    }
    for warning in result.validation_warnings() {
        diagnostics.push(cedar_validation_diagnostic(
            parsed,
            Severity::Warning,
            "validation-warning",
            warning.policy_id(),
            warning,
        ));
    }
    diagnostics.extend(lints(parsed));
    diagnostics
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
        let Some(policy) = parsed.policies.policy(id) else {
            continue;
        };
        let Ok(json) = policy.to_json() else {
            continue;
        };
        let mut named = Vec::new();
        collect_entity_literals(&json, &mut named);
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
            if parsed.entities.get(&uid).is_some() {
                continue;
            }
            let policy_text = source.text.get(*offset..offset + len).unwrap_or("");
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
