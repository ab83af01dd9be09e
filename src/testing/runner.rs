//! Runs test cases against a loaded policy set and reports progress as one stream of
//! events, which the reporters turn into terminal, JSON and JUnit output.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cedar_policy::{Entities, EntityUid};
use serde::Serialize;
use serde_json::Value;

use crate::decision::{Decision, Outcome};
use crate::diagnostic::Diagnostic;
use crate::engine::Engine;
use crate::inline::InlineEntities;
use crate::load::discover;
use crate::request::{closest, parse_entity, CheckRequest};
use crate::snapshot::Snapshot;
use crate::testing::coverage::{Coverage, CoverageCounter};
use crate::testing::format::{
    parse_file, Case, CaseError, EntitySource, ErrorExpectation, Expectation, PolicyMatch, TestFile,
};

/// The suffix that marks test files when a directory is searched.
pub const TEST_FILE_SUFFIX: &str = ".test.json";

/// Settings of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run only cases whose name contains this text.
    pub filter: Option<String>,
    /// Stop after the first failing or erroring case.
    pub fail_fast: bool,
    /// Let a run that executes no case pass.
    pub allow_empty: bool,
    /// Compute policy coverage.
    pub coverage: bool,
    /// Fail the run when less than this percentage of policies is covered; implies coverage.
    pub min_coverage: Option<f64>,
}

/// The first event: what is about to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunStarted {
    /// Test files found, including those that failed to parse.
    pub files: usize,
    /// Cases selected to run (after `--filter`), skipped ones included.
    pub cases: usize,
    /// Cases left out by `--filter`.
    pub filtered_out: usize,
}

/// The result of one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseStatus {
    /// The decision matched every expectation.
    Passed,
    /// The decision did not match.
    Failed,
    /// The case could not run: a malformed request, an unknown entity, action or policy id,
    /// or a duplicate name.
    Error,
    /// The case is marked `skip`; it was checked but not evaluated.
    Skipped,
}

/// One finished case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// The case name.
    pub name: String,
    /// The test file.
    pub file: PathBuf,
    /// 1-based line of the case in the file.
    pub line: usize,
    /// The result.
    pub status: CaseStatus,
    /// The case's expectation.
    pub expected: Expectation,
    /// The decision, when the case was evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<Decision>,
    /// Each way the decision differs from the expectation; empty unless `Failed`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// The reason the case could not run, set only for `Error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<CaseError>,
    /// The reason given for a skip (may be empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<String>,
    /// Wall-clock time of the evaluation.
    #[serde(skip)]
    pub duration: Duration,
}

/// The last event: counts, coverage and the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
    /// Cases marked `skip`.
    pub skipped: usize,
    /// Cases that could not run plus test files that could not be read or parsed.
    pub errors: usize,
    /// `true` when no case was evaluated (none found, all filtered out or all skipped).
    pub no_tests_run: bool,
    /// Whether `--allow-empty` lets an empty run pass.
    pub allow_empty: bool,
    /// `true` when `--fail-fast` stopped the run before every case ran.
    pub stopped_early: bool,
    /// Policy coverage, when requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Coverage>,
    /// The required coverage percentage, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_coverage: Option<f64>,
    /// Files named `*.json` that look like tests but do not end in `.test.json`, so were not
    /// run; reported when no tests ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unmatched_files: Vec<PathBuf>,
    /// Wall-clock time of the whole run.
    #[serde(skip)]
    pub duration: Duration,
}

/// The outcome of a run, from which the CLI takes its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every selected case passed, and coverage (if required) is met.
    Passed,
    /// A case failed, or coverage is below `--min-coverage`.
    Failed,
    /// A test file or case has an error, or no test ran without `--allow-empty`.
    Error,
}

impl Summary {
    /// Formats the closing line, `N passed, M failed` with `, K skipped` when cases were
    /// skipped. CI tools parse this exact form, so errors are reported on a line of their own.
    pub fn line(&self) -> String {
        let mut line = format!("{} passed, {} failed", self.passed, self.failed);
        if self.skipped > 0 {
            line.push_str(&format!(", {} skipped", self.skipped));
        }
        line
    }

    /// Returns `true` when coverage was required and is below the requirement.
    pub fn coverage_below_minimum(&self) -> bool {
        match (&self.coverage, self.min_coverage) {
            (Some(coverage), Some(minimum)) => coverage.percent < minimum,
            _ => false,
        }
    }

    /// Errors win over failures, so a broken test file is never reported as a plain failure.
    pub fn verdict(&self) -> Verdict {
        if self.errors > 0 || (self.no_tests_run && !self.allow_empty) {
            Verdict::Error
        } else if self.failed > 0 || self.coverage_below_minimum() {
            Verdict::Failed
        } else {
            Verdict::Passed
        }
    }
}

/// One step of a run. Every run emits `RunStarted`, then each `FileError`, then one
/// `CaseFinished` per selected case that ran, then `RunFinished`.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// The run is about to start.
    RunStarted(&'a RunStarted),
    /// A test file could not be read or parsed; none of its cases run.
    FileError(&'a Diagnostic),
    /// A case finished.
    CaseFinished(&'a CaseResult),
    /// The run finished.
    RunFinished(&'a Summary),
}

/// Test files found by [`discover_test_files`].
#[derive(Debug, Default)]
pub struct Discovery {
    /// Files to run, sorted within each given directory.
    pub files: Vec<PathBuf>,
    /// Paths that do not exist or cannot be listed.
    pub errors: Vec<Diagnostic>,
    /// JSON files with `test` in their name that do not match `*.test.json`.
    pub unmatched: Vec<PathBuf>,
}

/// Lists test files. Each directory is searched recursively for `*.test.json`, skipping
/// hidden files and directories. A file path is taken as it is, whatever its name.
pub fn discover_test_files(paths: &[PathBuf]) -> Discovery {
    let mut discovery = Discovery::default();
    for path in paths {
        if path.is_file() {
            discovery.files.push(path.clone());
            continue;
        }
        if !path.exists() {
            discovery.errors.push(
                Diagnostic::error("missing-path", "test path does not exist")
                    .in_file(path)
                    .with_help(
                        "pass an existing test file or directory, or create `policies/tests/`",
                    ),
            );
            continue;
        }
        match discover(path, "json") {
            Ok(found) => {
                for file in found {
                    let name = file
                        .file_name()
                        .map(|name| name.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if name.ends_with(TEST_FILE_SUFFIX) {
                        discovery.files.push(file);
                    } else if name.contains("test") {
                        discovery.unmatched.push(file);
                    }
                }
            }
            Err(error) => discovery.errors.push(
                Diagnostic::error("unreadable-file", format!("cannot list directory: {error}"))
                    .in_file(path),
            ),
        }
    }
    discovery
}

/// Finds, parses and runs the test files under `paths` against the engine's current
/// snapshot, calling `on_event` for every event, and returns the summary.
pub fn run(
    engine: &Engine,
    paths: &[PathBuf],
    options: &RunOptions,
    on_event: &mut dyn FnMut(&Event<'_>),
) -> Summary {
    let started_at = Instant::now();
    let discovery = discover_test_files(paths);
    let mut file_errors = discovery.errors;
    let mut files = Vec::new();
    for path in &discovery.files {
        match parse_file(path) {
            Ok(file) => files.push(file),
            Err(error) => {
                tracing::debug!(file = %path.display(), %error, "test file rejected");
                file_errors.push(error.diagnostic().clone());
            }
        }
    }
    let file_count = discovery.files.len();
    run_files(
        engine,
        file_count,
        files,
        file_errors,
        discovery.unmatched,
        options,
        on_event,
        started_at,
    )
}

/// Runs already parsed test files; `run` without the discovery, for benchmarks and tests.
pub fn run_parsed(
    engine: &Engine,
    files: Vec<TestFile>,
    options: &RunOptions,
    on_event: &mut dyn FnMut(&Event<'_>),
) -> Summary {
    let count = files.len();
    run_files(
        engine,
        count,
        files,
        Vec::new(),
        Vec::new(),
        options,
        on_event,
        Instant::now(),
    )
}

#[allow(
    clippy::too_many_arguments,
    reason = "private helper shared by the two entry points"
)]
fn run_files(
    engine: &Engine,
    file_count: usize,
    mut files: Vec<TestFile>,
    file_errors: Vec<Diagnostic>,
    unmatched_files: Vec<PathBuf>,
    options: &RunOptions,
    on_event: &mut dyn FnMut(&Event<'_>),
    started_at: Instant,
) -> Summary {
    let snapshot = engine.snapshot();
    for file in &mut files {
        mark_duplicate_names(&mut file.cases);
    }
    let all_cases: Vec<Case> = files.into_iter().flat_map(|file| file.cases).collect();
    let total = all_cases.len();
    let selected: Vec<Case> = match &options.filter {
        Some(pattern) => all_cases
            .into_iter()
            .filter(|case| case.name.contains(pattern.as_str()))
            .collect(),
        None => all_cases,
    };

    let started = RunStarted {
        files: file_count,
        cases: selected.len(),
        filtered_out: total - selected.len(),
    };
    on_event(&Event::RunStarted(&started));
    for diagnostic in &file_errors {
        on_event(&Event::FileError(diagnostic));
    }

    let mut summary = Summary {
        passed: 0,
        failed: 0,
        skipped: 0,
        errors: file_errors.len(),
        no_tests_run: false,
        allow_empty: options.allow_empty,
        stopped_early: false,
        coverage: None,
        min_coverage: options.min_coverage,
        unmatched_files,
        duration: Duration::ZERO,
    };
    let mut stores = EntityStores::default();
    let mut counter = CoverageCounter::default();
    let mut evaluated = 0usize;
    let stop_now = options.fail_fast && !file_errors.is_empty();
    for (index, case) in selected.iter().enumerate() {
        if stop_now {
            summary.stopped_early = index < selected.len();
            break;
        }
        let result = run_case(engine, &snapshot, &mut stores, case);
        if let Some(decision) = &result.actual {
            counter.record(decision);
            evaluated += 1;
        }
        match result.status {
            CaseStatus::Passed => summary.passed += 1,
            CaseStatus::Failed => summary.failed += 1,
            CaseStatus::Error => summary.errors += 1,
            CaseStatus::Skipped => summary.skipped += 1,
        }
        on_event(&Event::CaseFinished(&result));
        let bad = matches!(result.status, CaseStatus::Failed | CaseStatus::Error);
        if options.fail_fast && bad {
            summary.stopped_early = index + 1 < selected.len();
            break;
        }
    }
    summary.no_tests_run = evaluated == 0;
    if options.coverage || options.min_coverage.is_some() {
        summary.coverage = Some(counter.finish(&snapshot));
    }
    summary.duration = started_at.elapsed();
    on_event(&Event::RunFinished(&summary));
    summary
}

/// Turns every repeat of a case name within one file into an error case.
fn mark_duplicate_names(cases: &mut [Case]) {
    let mut first_lines: HashMap<String, usize> = HashMap::new();
    for case in cases.iter_mut() {
        match first_lines.get(&case.name) {
            Some(first_line) => {
                case.request = Err(CaseError::new(
                    format!(
                        "duplicate case name `{}`; the first case with this name is at line {first_line}",
                        case.name
                    ),
                    "give every case in a file a unique name",
                ));
            }
            None => {
                first_lines.insert(case.name.clone(), case.line);
            }
        }
    }
}

/// Entity stores built from fixtures, shared by the cases of one file.
#[derive(Default)]
struct EntityStores {
    built: HashMap<usize, Result<Arc<Entities>, CaseError>>,
}

impl EntityStores {
    /// Returns the store for `source`, or `None` for the snapshot's own entities.
    fn get(
        &mut self,
        snapshot: &Snapshot,
        source: &EntitySource,
    ) -> Result<Option<Arc<Entities>>, CaseError> {
        let (values, replace) = match source {
            EntitySource::Engine => return Ok(None),
            EntitySource::Merged(values) => (values, false),
            EntitySource::Replaced(values) => (values, true),
        };
        // Cases of one file share the `Arc`, so its address identifies the fixture.
        let key = Arc::as_ptr(values) as usize;
        let built = self
            .built
            .entry(key)
            .or_insert_with(|| build_store(snapshot, values, replace).map(Arc::new));
        built.clone().map(Some)
    }
}

fn build_store(
    snapshot: &Snapshot,
    values: &[Value],
    replace: bool,
) -> Result<Entities, CaseError> {
    let help = "make each fixture entity match its type in the schema";
    if replace {
        Entities::from_json_value(Value::Array(values.to_vec()), Some(&snapshot.schema))
            .map_err(|error| CaseError::new(format!("invalid entities: {error}"), help))
    } else {
        InlineEntities::parse(snapshot, values)
            .and_then(|inline| inline.merge_into(snapshot, &snapshot.entities))
            .map_err(|error| CaseError::new(format!("invalid fixture entities: {error}"), help))
    }
}

fn run_case(
    engine: &Engine,
    snapshot: &Snapshot,
    stores: &mut EntityStores,
    case: &Case,
) -> CaseResult {
    let mut result = CaseResult {
        name: case.name.clone(),
        file: case.file.clone(),
        line: case.line,
        status: CaseStatus::Error,
        expected: case.expect.clone(),
        actual: None,
        failures: Vec::new(),
        error: None,
        skip_reason: None,
        duration: Duration::ZERO,
    };
    let prepared = case.request.clone().and_then(|request| {
        let store = stores.get(snapshot, &case.entities)?;
        check_names(snapshot, store.as_deref(), case, &request)?;
        Ok((request, store))
    });
    let (request, store) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            result.error = Some(error);
            return result;
        }
    };
    if let Some(reason) = &case.skip {
        result.status = CaseStatus::Skipped;
        result.skip_reason = Some(reason.clone());
        return result;
    }

    let started = Instant::now();
    let base = store.as_deref().unwrap_or(&snapshot.entities);
    let decision = engine.check_with(snapshot, &request, base, case.usage.as_ref());
    result.duration = started.elapsed();
    match decision {
        Ok(decision) => {
            result.failures = compare(&case.expect, &decision);
            result.status = if result.failures.is_empty() {
                CaseStatus::Passed
            } else {
                CaseStatus::Failed
            };
            result.actual = Some(decision);
        }
        Err(error) => result.error = Some(error.into()),
    }
    result
}

/// Rejects names that do not exist: the action, the policy ids the case expects, and (for
/// modelgate files) the principal and resource, unless listed in `unknown_entities`.
fn check_names(
    snapshot: &Snapshot,
    store: Option<&Entities>,
    case: &Case,
    request: &CheckRequest,
) -> Result<(), CaseError> {
    let action_id = request.action.id().unescaped();
    if request.action.type_name().to_string() != "Action"
        || !snapshot.action_ids.contains(action_id)
    {
        let suggestion = closest(action_id, snapshot.action_ids())
            .map(|name| format!("; did you mean `{name}`?"))
            .unwrap_or_default();
        return Err(CaseError::new(
            format!("unknown action `{}`{suggestion}", request.action),
            "the schema lists the declared actions",
        ));
    }
    if let Some(expected) = &case.expect.policies {
        for id in expected {
            if snapshot.policy(id).is_none() {
                let suggestion =
                    closest(id, snapshot.policies().into_iter().map(|p| p.id.as_str()))
                        .map(|name| format!("; did you mean `{name}`?"))
                        .unwrap_or_default();
                return Err(CaseError::new(
                    format!("unknown policy id `{id}`{suggestion}"),
                    "expected policies are named by their `@id` annotation",
                ));
            }
        }
    }
    if !case.require_known_entities {
        return Ok(());
    }
    let entities = store.unwrap_or(&snapshot.entities);
    let mut allowed_unknown = BTreeSet::new();
    for text in &case.unknown_entities {
        let uid = parse_entity("unknown_entities", text, None)?;
        if entities.get(&uid).is_some() {
            return Err(CaseError::new(
                format!("`{uid}` is listed in `unknown_entities` but exists in the entity data"),
                "remove it from `unknown_entities`, or name an entity that does not exist",
            ));
        }
        allowed_unknown.insert(uid);
    }
    for (field, uid) in [
        ("principal", &request.principal),
        ("model", &request.resource),
    ] {
        if allowed_unknown.contains(uid) || entities.get(uid).is_some() {
            continue;
        }
        let field = if uid.type_name().to_string() == "Model" {
            field
        } else {
            "entity"
        };
        return Err(unknown_entity(entities, field, uid));
    }
    Ok(())
}

fn unknown_entity(entities: &Entities, field: &str, uid: &EntityUid) -> CaseError {
    let entity_type = uid.type_name().to_string();
    let ids: Vec<String> = entities
        .iter()
        .filter(|entity| entity.uid().type_name().to_string() == entity_type)
        .map(|entity| entity.uid().id().unescaped().to_string())
        .collect();
    let suggestion = closest(uid.id().unescaped(), ids.iter().map(String::as_str))
        .map(|name| format!("; did you mean `{name}`?"))
        .unwrap_or_default();
    CaseError::new(
        format!("unknown {field} `{uid}`: not in the entity data{suggestion}"),
        "fix the name, add the entity to a fixture, or list it in `unknown_entities` to test an unregistered caller",
    )
}

/// Lists every difference between the expectation and the decision.
fn compare(expect: &Expectation, decision: &Decision) -> Vec<String> {
    let mut failures = Vec::new();
    if expect.decision != decision.decision {
        failures.push(format!(
            "expected {}, got {}",
            expect.decision,
            describe_outcome(decision)
        ));
    }
    if let (Some(expected), Outcome::Deny) = (expect.status, decision.decision) {
        if decision.status != Some(expected) {
            let actual = decision
                .status
                .map_or_else(|| "none".to_string(), |status| status.to_string());
            failures.push(format!("expected status {expected}, got {actual}"));
        }
    }
    if let Some(expected) = &expect.policies {
        let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
        let actual: BTreeSet<&str> = decision.policy_ids().into_iter().collect();
        let missing: Vec<&str> = expected.difference(&actual).copied().collect();
        let extra: Vec<&str> = actual.difference(&expected).copied().collect();
        if !missing.is_empty() {
            failures.push(format!(
                "expected deciding policies not in the decision: {}",
                quote_list(&missing)
            ));
        }
        if expect.policy_match == PolicyMatch::Exact && !extra.is_empty() {
            failures.push(format!(
                "unexpected deciding policies: {}",
                quote_list(&extra)
            ));
        }
    }
    match &expect.errors {
        ErrorExpectation::Matching(patterns) => {
            for error in &decision.errors {
                let expected = patterns
                    .iter()
                    .any(|pattern| error_matches(pattern, &error.policy.id, &error.message));
                if !expected {
                    failures.push(format!(
                        "unexpected evaluation error in `{}`: {}",
                        error.policy.id, error.message
                    ));
                }
            }
            for pattern in patterns {
                let occurred = decision
                    .errors
                    .iter()
                    .any(|error| error_matches(pattern, &error.policy.id, &error.message));
                if !occurred {
                    failures.push(format!(
                        "expected an evaluation error matching `{pattern}`, but none occurred"
                    ));
                }
            }
        }
        ErrorExpectation::Count(count) => {
            if decision.errors.len() != *count {
                let messages: Vec<String> = decision
                    .errors
                    .iter()
                    .map(|error| format!("`{}`: {}", error.policy.id, error.message))
                    .collect();
                let detail = if messages.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", messages.join("; "))
                };
                failures.push(format!(
                    "expected {count} evaluation errors, got {}{detail}",
                    decision.errors.len()
                ));
            }
        }
    }
    failures
}

fn error_matches(pattern: &str, policy_id: &str, message: &str) -> bool {
    pattern == policy_id || message.contains(pattern)
}

fn describe_outcome(decision: &Decision) -> String {
    match decision.status {
        Some(status) if decision.decision == Outcome::Deny => format!("deny {status}"),
        _ => decision.decision.to_string(),
    }
}

fn quote_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|item| format!("`{item}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            passed: 1,
            failed: 0,
            skipped: 0,
            errors: 0,
            no_tests_run: false,
            allow_empty: false,
            stopped_early: false,
            coverage: None,
            min_coverage: None,
            unmatched_files: Vec::new(),
            duration: Duration::ZERO,
        }
    }

    #[test]
    fn summary_line_has_the_parsed_form() {
        let mut summary = summary();
        assert_eq!(summary.line(), "1 passed, 0 failed");
        summary.skipped = 2;
        summary.errors = 3;
        assert_eq!(summary.line(), "1 passed, 0 failed, 2 skipped");
    }

    #[test]
    fn errors_win_over_failures() {
        let mut summary = summary();
        summary.failed = 1;
        assert_eq!(summary.verdict(), Verdict::Failed);
        summary.errors = 1;
        assert_eq!(summary.verdict(), Verdict::Error);
    }

    #[test]
    fn skips_do_not_mask_failures() {
        let mut summary = summary();
        summary.skipped = 5;
        assert_eq!(summary.verdict(), Verdict::Passed);
        summary.failed = 1;
        assert_eq!(summary.verdict(), Verdict::Failed);
    }

    #[test]
    fn empty_run_fails_unless_allowed() {
        let mut summary = summary();
        summary.passed = 0;
        summary.no_tests_run = true;
        assert_eq!(summary.verdict(), Verdict::Error);
        summary.allow_empty = true;
        assert_eq!(summary.verdict(), Verdict::Passed);
    }

    #[test]
    fn exact_policy_match_reports_extra_policies() {
        let decision = Decision {
            decision: Outcome::Deny,
            status: Some(crate::decision::Status::Unauthorized),
            reason: crate::decision::Reason::Forbidden,
            policies: ["a", "b"]
                .into_iter()
                .map(|id| crate::decision::PolicyRef {
                    id: id.to_string(),
                    effect: crate::decision::Effect::Forbid,
                    file: PathBuf::from("p.cedar"),
                    line: 1,
                    column: 1,
                    reason: None,
                    status: None,
                    window: None,
                })
                .collect(),
            errors: Vec::new(),
            explanation: String::new(),
            generation: 1,
            retry_after_secs: None,
        };
        let mut expect = Expectation {
            decision: Outcome::Deny,
            status: None,
            policies: Some(vec!["a".to_string()]),
            policy_match: PolicyMatch::Exact,
            errors: ErrorExpectation::Matching(Vec::new()),
        };
        assert_eq!(
            compare(&expect, &decision),
            vec!["unexpected deciding policies: `b`".to_string()]
        );
        expect.policy_match = PolicyMatch::Subset;
        assert!(compare(&expect, &decision).is_empty());
    }
}
