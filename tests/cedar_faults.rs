//! Known ways Cedar deployments fail open or go silent, each with its inputs under
//! `tests/fixtures/cases/` (schema, `policy.cedar`, `entities.json`, and `requests.json` whose
//! requests carry the expected decision). modelgate must give the expected decision for every
//! request, treat a request error as a denial, and refuse to load a set without a schema or
//! that fails strict validation.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test helpers stop the test on a broken fixture"
)]

use std::fs;
use std::path::{Path, PathBuf};

use modelgate::{CheckRequest, Engine, LoadOptions, Outcome};
use serde_json::Value;

fn case_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cases")
        .join(name)
}

fn load(name: &str) -> Result<Engine, modelgate::LoadError> {
    let dir = case_dir(name);
    let options = LoadOptions::new(&dir, dir.join("schema.cedarschema"))
        .with_entities(vec![dir.join("entities.json")]);
    Engine::load(options)
}

/// Decides every request of the case and returns (note, expected, actual, error text).
fn run_requests(engine: &Engine, name: &str) -> Vec<(String, Outcome, Outcome, String)> {
    let text = fs::read_to_string(case_dir(name).join("requests.json")).expect("requests");
    let requests: Vec<Value> = serde_json::from_str(&text).expect("requests parse");
    requests
        .iter()
        .map(|item| {
            let expected = match item["expect"].as_str() {
                Some("Allow") => Outcome::Allow,
                _ => Outcome::Deny,
            };
            let mut request = CheckRequest::new(
                item["principal"].as_str().expect("principal"),
                item["action"].as_str().expect("action"),
                item["resource"].as_str().expect("resource"),
            )
            .expect("request parses");
            if let Some(context) = item["context"].as_object() {
                request.context = context.clone();
            }
            let (actual, detail) = match engine.check(&request) {
                Ok(decision) => (decision.decision, format!("{decision:?}")),
                // A request error is never evaluated, so it counts as a denial.
                Err(error) => (Outcome::Deny, error.to_string()),
            };
            let note = item["note"].as_str().unwrap_or_default().to_string();
            (note, expected, actual, detail)
        })
        .collect()
}

fn assert_all_expected(name: &str) -> usize {
    let engine = load(name).unwrap_or_else(|error| panic!("{name} does not load: {error}"));
    let results = run_requests(&engine, name);
    for (note, expected, actual, detail) in &results {
        assert_eq!(actual, expected, "{name}: {note}: {detail}");
    }
    results.len()
}

#[test]
fn action_groups_work_with_schema() {
    assert_eq!(assert_all_expected("action-group-with-schema"), 2);
}

#[test]
fn sets_without_schema_are_refused() {
    for name in [
        "action-group-without-schema",
        "action-group-entities-without-schema",
        "in-on-string-without-schema",
    ] {
        let error = load(name)
            .err()
            .unwrap_or_else(|| panic!("{name} loaded without a schema"));
        assert!(error.to_string().contains("schema"), "{name}: {error}");
    }
}

#[test]
fn in_on_string_fails_strict_validation() {
    let error = load("in-on-string-with-schema").expect_err("strict validation rejects it");
    let first = error.errors().next().expect("one error");
    assert_eq!(first.code, "validation");
    assert!(
        first
            .file
            .as_ref()
            .is_some_and(|f| f.ends_with("policy.cedar")),
        "{first}"
    );
    assert!(first.location.is_some(), "{first}");
}

#[test]
fn fixed_region_forbid_denies() {
    assert_eq!(assert_all_expected("in-on-string-fixed"), 1);
}

#[test]
fn overflowing_forbid_fails_closed() {
    let engine = load("overflowing-forbid").expect("loads");
    let results = run_requests(&engine, "overflowing-forbid");
    assert_eq!(results.len(), 3);
    for (note, expected, actual, detail) in &results {
        assert_eq!(actual, expected, "{note}: {detail}");
    }
    // Plain Cedar allows the overflowing request; modelgate must name the error.
    let overflow = &results[2];
    assert!(overflow.3.contains("overflow"), "{}", overflow.3);
}

#[test]
fn guarded_overflow_denies() {
    assert!(assert_all_expected("overflowing-forbid-guarded") >= 3);
}

#[test]
fn wrong_context_types_are_denied() {
    assert_eq!(assert_all_expected("context-types"), 5);
}
