//! The two test file formats, modelgate's own and the `cedar run-tests` array, parsed into
//! one list of concrete cases with the line each case starts on.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::decision::{Outcome, Status};
use crate::diagnostic::{Diagnostic, SourceFile};
use crate::load::json_syntax_diagnostic;
use crate::quota::UsageView;
use crate::request::{closest, CheckRequest, RequestError, RequestFacts};
use crate::testing::expand::{expand_case, CaseFields};

/// Help shown with every problem in the shape of a test file.
const FORMAT_HELP: &str = "see \"Policy tests\" in the README for the test file format";

/// The format of a test file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// modelgate's format: an object with `name`, optional `fixtures` and `cases`.
    Modelgate,
    /// The `cedar run-tests` format: an array of cases with `request`, `entities`,
    /// `decision`, `reason` and `num_errors`.
    Cedar,
}

/// One parsed test file.
#[derive(Debug, Clone)]
pub struct TestFile {
    /// The file's text and path.
    pub source: SourceFile,
    /// The file's `name`, or its file name for the cedar format.
    pub name: String,
    /// The format the file is written in.
    pub format: FileFormat,
    /// The concrete cases, after expansion, in file order.
    pub cases: Vec<Case>,
}

/// The source of a case's entity data.
#[derive(Debug, Clone)]
pub enum EntitySource {
    /// The engine's entity data as loaded.
    Engine,
    /// The engine's entity data with these entities added or replacing entities of the same
    /// id (modelgate fixtures). Cases of one file share the list.
    Merged(Arc<Vec<Value>>),
    /// Exactly these entities, as `cedar run-tests` uses them.
    Replaced(Arc<Vec<Value>>),
}

/// The evaluation errors a case expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorExpectation {
    /// Every error must be matched by one of these texts and every text must match an error.
    /// A text matches an error when it equals the failing policy's id or occurs in the error
    /// message. An empty list means no error may occur.
    Matching(Vec<String>),
    /// Exactly this many errors (the cedar format's `num_errors`).
    Count(usize),
}

/// The comparison between expected and actual deciding policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyMatch {
    /// The actual set must equal the expected set.
    Exact,
    /// The actual set must contain the expected set.
    Subset,
}

/// The expectation of a case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expectation {
    /// Allow or deny.
    pub decision: Outcome,
    /// The HTTP status of a denial, when the case checks it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// The deciding policy ids, when the case checks them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<String>>,
    /// The comparison used for `policies`.
    pub policy_match: PolicyMatch,
    /// The expected evaluation errors.
    pub errors: ErrorExpectation,
}

/// A problem with one case that prevents running it, such as a malformed principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseError {
    /// The problem, in one lowercase sentence.
    pub message: String,
    /// Advice on what to write instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl CaseError {
    /// Creates an error with advice.
    pub fn new(message: impl Into<String>, help: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            help: Some(help.into()),
        }
    }
}

impl From<RequestError> for CaseError {
    fn from(error: RequestError) -> Self {
        let help = miette::Diagnostic::help(&error).map(|help| help.to_string());
        Self {
            message: error.to_string(),
            help,
        }
    }
}

impl fmt::Display for CaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A test file that cannot be read or parsed; none of its cases run.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{diagnostic}")]
pub struct TestFileError {
    diagnostic: Box<Diagnostic>,
}

impl TestFileError {
    /// Returns the problem, with its file, line, column and advice.
    pub fn diagnostic(&self) -> &Diagnostic {
        &self.diagnostic
    }
}

impl From<Diagnostic> for TestFileError {
    fn from(diagnostic: Diagnostic) -> Self {
        Self {
            diagnostic: Box::new(diagnostic),
        }
    }
}

impl miette::Diagnostic for TestFileError {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.diagnostic
            .help
            .as_ref()
            .map(|help| Box::new(help) as Box<dyn fmt::Display>)
    }
}

/// One concrete case, ready to run.
#[derive(Debug, Clone)]
pub struct Case {
    /// The case name, unique within its file.
    pub name: String,
    /// The test file.
    pub file: PathBuf,
    /// 1-based line of the case in the file.
    pub line: usize,
    /// The request, or why it could not be built.
    pub request: Result<CheckRequest, CaseError>,
    /// The entity data the case runs against.
    pub entities: EntitySource,
    /// Entities the case names on purpose although the entity data does not contain them.
    pub unknown_entities: Vec<String>,
    /// Whether entities named by the request must exist in the entity data.
    pub require_known_entities: bool,
    /// The case's expectation.
    pub expect: Expectation,
    /// `Some(reason)` when the case is skipped.
    pub skip: Option<String>,
    /// Usage counters the case runs against instead of the engine's ledger.
    pub usage: Option<UsageView>,
}

/// Reads and parses one test file.
///
/// A problem in the file's shape is an `Err` with the file, line and column. A problem of
/// one case, such as a principal that does not parse, stays with that case.
pub fn parse_file(path: &Path) -> Result<TestFile, TestFileError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        Diagnostic::error("unreadable-file", format!("cannot read test file: {error}"))
            .in_file(path)
            .with_help("check that the file exists and is readable UTF-8 text")
    })?;
    parse_text(path, &text)
}

/// Parses the text of a test file; `path` is used for messages and to resolve fixture paths.
pub fn parse_text(path: &Path, text: &str) -> Result<TestFile, TestFileError> {
    let source = SourceFile::new(path.to_path_buf(), text);
    match text.trim_start().chars().next() {
        Some('[') => parse_cedar(source),
        Some('{') => parse_modelgate(source),
        _ => Err(Diagnostic::error(
            "test-file-shape",
            "a test file must hold a JSON object (modelgate format) or a JSON array (cedar run-tests format)",
        )
        .at_line_column(&source, 1, 1)
        .with_help(FORMAT_HELP)
        .into()),
    }
}

fn data_diagnostic(source: &SourceFile, error: &serde_json::Error) -> Diagnostic {
    if error.is_syntax() || error.is_eof() {
        return json_syntax_diagnostic(source, error);
    }
    let message = error.to_string();
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(head, _)| head)
        .to_string();
    let help = if message.contains("missing field `expect`") {
        "add an expectation such as `\"expect\": \"allow\"` or `\"expect\": {\"decision\": \"deny\", \"status\": 403}`".to_string()
    } else if message.contains("missing field `name`") {
        "give the file and every case a `\"name\"`".to_string()
    } else if message.contains("unknown decision") {
        "write `\"expect\": \"allow\"` or `\"expect\": \"deny\"`, or an object with `\"decision\"`"
            .to_string()
    } else if let Some(suggestion) = suggest_field(&message) {
        format!("did you mean `{suggestion}`?")
    } else {
        FORMAT_HELP.to_string()
    };
    Diagnostic::error("test-file-invalid", format!("invalid test file: {message}"))
        .at_line_column(source, error.line().max(1), error.column().max(1))
        .with_help(help)
}

/// Finds the field closest to the unknown one in serde's "unknown field `x`, expected one
/// of `a`, `b`" message.
fn suggest_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    if let Some(suggestion) = closest(unknown, candidates.iter().copied()) {
        return Some(suggestion);
    }
    // Also catch a shortened name such as `max_tokens` for `max_output_tokens`: the
    // candidate sharing at least two `_`-separated words.
    let words: Vec<&str> = unknown.split('_').collect();
    candidates
        .into_iter()
        .map(|candidate| {
            let shared = candidate
                .split('_')
                .filter(|word| words.contains(word))
                .count();
            (shared, candidate)
        })
        .filter(|(shared, _)| *shared >= 2)
        .max_by_key(|(shared, _)| *shared)
        .map(|(_, candidate)| candidate.to_string())
}

// --- modelgate format ----------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireFile {
    name: String,
    #[serde(default)]
    #[allow(dead_code, reason = "documentation for readers of the file")]
    description: Option<String>,
    #[serde(default)]
    fixtures: WireFixtures,
    cases: Vec<WireCase>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireFixtures {
    #[serde(default)]
    entity_files: Vec<String>,
    #[serde(default)]
    entities: Vec<Value>,
    now: Option<String>,
}

/// One case as written. Unknown fields are rejected so that typos fail. Request facts are
/// top-level fields, so a later addition such as a `usage` object for quota tests is one
/// more optional field and existing files stay valid.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WireCase {
    pub name: String,
    #[serde(default)]
    #[allow(dead_code, reason = "documentation for readers of the file")]
    pub description: Option<String>,
    pub principal: Option<String>,
    pub action: Option<String>,
    pub model: Option<String>,
    pub resource: Option<String>,
    pub input_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub stream: Option<bool>,
    pub now: Option<String>,
    pub context: Option<Map<String, Value>>,
    /// Preset usage counters, in the format of `modelgate check --usage`.
    pub usage: Option<Value>,
    #[serde(default)]
    pub unknown_entities: Vec<String>,
    pub expect: WireExpect,
    #[serde(default)]
    pub skip: Option<WireSkip>,
    #[serde(default)]
    pub for_each: Option<WireForEach>,
}

/// Lists of values a case expands over; every combination becomes one case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WireForEach {
    pub principal: Option<Vec<String>>,
    pub action: Option<Vec<String>>,
    pub model: Option<Vec<String>>,
    pub resource: Option<Vec<String>>,
    pub input_tokens: Option<Vec<u64>>,
    pub max_output_tokens: Option<Vec<u64>>,
}

#[derive(Debug)]
pub(crate) enum WireSkip {
    Flag(bool),
    Reason(String),
}

impl<'de> Deserialize<'de> for WireSkip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SkipVisitor;
        impl Visitor<'_> for SkipVisitor {
            type Value = WireSkip;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`true`, `false` or a reason string")
            }
            fn visit_bool<E: de::Error>(self, value: bool) -> Result<WireSkip, E> {
                Ok(WireSkip::Flag(value))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<WireSkip, E> {
                Ok(WireSkip::Reason(value.to_string()))
            }
        }
        deserializer.deserialize_any(SkipVisitor)
    }
}

/// `allow`/`deny` in any letter case.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecisionWord(pub Outcome);

impl<'de> Deserialize<'de> for DecisionWord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let word = String::deserialize(deserializer)?;
        parse_decision_word(&word).map_err(de::Error::custom)
    }
}

fn parse_decision_word(word: &str) -> Result<DecisionWord, String> {
    match word.to_ascii_lowercase().as_str() {
        "allow" => Ok(DecisionWord(Outcome::Allow)),
        "deny" => Ok(DecisionWord(Outcome::Deny)),
        _ => Err(format!(
            "unknown decision `{word}`, expected `allow` or `deny`"
        )),
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct StatusCode(pub Status);

impl<'de> Deserialize<'de> for StatusCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = u16::deserialize(deserializer)?;
        Status::from_annotation(&code.to_string())
            .map(StatusCode)
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "unknown status `{code}`, expected `401`, `403` or `429`"
                ))
            })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WireExpectFull {
    pub decision: DecisionWord,
    pub status: Option<StatusCode>,
    pub policies: Option<Vec<String>>,
    pub policies_include: Option<Vec<String>>,
    pub errors: Option<Vec<String>>,
}

/// `"expect": "deny"` or `"expect": {"decision": "deny", ...}`.
#[derive(Debug)]
pub(crate) struct WireExpect(pub WireExpectFull);

impl<'de> Deserialize<'de> for WireExpect {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ExpectVisitor;
        impl<'de> Visitor<'de> for ExpectVisitor {
            type Value = WireExpect;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`\"allow\"`, `\"deny\"` or an object with a `decision`")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<WireExpect, E> {
                let decision = parse_decision_word(value).map_err(E::custom)?;
                Ok(WireExpect(WireExpectFull {
                    decision,
                    status: None,
                    policies: None,
                    policies_include: None,
                    errors: None,
                }))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<WireExpect, A::Error> {
                WireExpectFull::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(WireExpect)
            }
        }
        deserializer.deserialize_any(ExpectVisitor)
    }
}

fn parse_modelgate(source: SourceFile) -> Result<TestFile, TestFileError> {
    let wire: WireFile =
        serde_json::from_str(&source.text).map_err(|error| data_diagnostic(&source, &error))?;
    let offsets = array_element_offsets(&source.text, Some("cases"));
    let base_dir = source
        .path
        .parent()
        .map_or_else(PathBuf::new, Path::to_path_buf);

    let mut fixture_entities = wire.fixtures.entities.clone();
    for relative in &wire.fixtures.entity_files {
        let path = base_dir.join(relative);
        let offset = find_string_literal(&source.text, relative).unwrap_or(0);
        let text = std::fs::read_to_string(&path).map_err(|error| {
            Diagnostic::error(
                "missing-fixture",
                format!("cannot read fixture file `{}`: {error}", path.display()),
            )
            .at(&source, offset, relative.len() + 2)
            .with_help("paths in `entity_files` are relative to the test file; fix the path or create the file")
        })?;
        let fixture_source = SourceFile::new(path.clone(), text);
        match serde_json::from_str::<Value>(&fixture_source.text) {
            Ok(Value::Array(items)) => fixture_entities.extend(items),
            Ok(_) => {
                return Err(Diagnostic::error(
                    "test-file-invalid",
                    format!(
                        "fixture file `{}` must hold a JSON array of entities",
                        path.display()
                    ),
                )
                .at(&source, offset, relative.len() + 2)
                .with_help("write `[ {\"uid\": ..., \"attrs\": ..., \"parents\": ...}, ... ]`")
                .into())
            }
            Err(error) => return Err(json_syntax_diagnostic(&fixture_source, &error).into()),
        }
    }
    let entities = if fixture_entities.is_empty() {
        EntitySource::Engine
    } else {
        EntitySource::Merged(Arc::new(fixture_entities))
    };

    let mut cases = Vec::new();
    for (index, wire_case) in wire.cases.into_iter().enumerate() {
        let offset = offsets.get(index).copied().unwrap_or(0);
        let line = source.location(offset).line;
        let fields = CaseFields::from_wire(&wire_case, wire.fixtures.now.as_deref());
        let expanded = expand_case(&wire_case, &fields).map_err(|message| {
            Diagnostic::error("test-file-invalid", message)
                .at(&source, offset, 1)
                .with_help(FORMAT_HELP)
        })?;
        let expect = expectation(&wire_case.expect.0).map_err(|message| {
            Diagnostic::error("test-file-invalid", message)
                .at(&source, offset, 1)
                .with_help("use `policies` for the exact set or `policies_include` for a subset, and `status` only with `deny`")
        })?;
        let usage = match &wire_case.usage {
            None => None,
            Some(value) => Some(UsageView::from_json(&value.to_string()).map_err(|error| {
                Diagnostic::error("test-file-invalid", format!("invalid `usage`: {error}"))
                    .at(&source, offset, 1)
                    .with_help("write `\"usage\": {\"user\": {\"day\": {\"input_tokens\": 90000}}}`: scopes, then windows, then counters")
            })?),
        };
        let skip = match &wire_case.skip {
            None | Some(WireSkip::Flag(false)) => None,
            Some(WireSkip::Flag(true)) => Some(String::new()),
            Some(WireSkip::Reason(reason)) => Some(reason.clone()),
        };
        for (name, fields) in expanded {
            cases.push(Case {
                name,
                file: source.path.clone(),
                line,
                request: fields.request(),
                entities: entities.clone(),
                unknown_entities: wire_case.unknown_entities.clone(),
                require_known_entities: true,
                expect: expect.clone(),
                skip: skip.clone(),
                usage,
            });
        }
    }
    Ok(TestFile {
        name: wire.name,
        format: FileFormat::Modelgate,
        cases,
        source,
    })
}

fn expectation(wire: &WireExpectFull) -> Result<Expectation, String> {
    let decision = wire.decision.0;
    if decision == Outcome::Allow && wire.status.is_some() {
        return Err(
            "`status` is only checked for `deny`; an allowed request has no status".to_string(),
        );
    }
    let (policies, policy_match) = match (&wire.policies, &wire.policies_include) {
        (Some(_), Some(_)) => {
            return Err("give either `policies` or `policies_include`, not both".to_string())
        }
        (Some(exact), None) => (Some(exact.clone()), PolicyMatch::Exact),
        (None, Some(subset)) => (Some(subset.clone()), PolicyMatch::Subset),
        (None, None) => (None, PolicyMatch::Exact),
    };
    Ok(Expectation {
        decision,
        status: wire.status.map(|status| status.0),
        policies,
        policy_match,
        errors: ErrorExpectation::Matching(wire.errors.clone().unwrap_or_default()),
    })
}

// --- cedar run-tests format ----------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CedarCase {
    name: Option<String>,
    request: CedarRequest,
    entities: Value,
    decision: DecisionWord,
    reason: Vec<String>,
    num_errors: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CedarRequest {
    principal: String,
    action: String,
    resource: String,
    #[serde(default)]
    context: Map<String, Value>,
}

fn parse_cedar(source: SourceFile) -> Result<TestFile, TestFileError> {
    let wire: Vec<CedarCase> =
        serde_json::from_str(&source.text).map_err(|error| data_diagnostic(&source, &error))?;
    let offsets = array_element_offsets(&source.text, None);
    let base_dir = source
        .path
        .parent()
        .map_or_else(PathBuf::new, Path::to_path_buf);
    let file_name = source.path.file_name().map_or_else(
        || source.path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );

    let mut cases = Vec::new();
    for (index, wire_case) in wire.into_iter().enumerate() {
        let offset = offsets.get(index).copied().unwrap_or(0);
        let line = source.location(offset).line;
        let name = wire_case
            .name
            .clone()
            .unwrap_or_else(|| format!("case {}", index + 1));
        let entities = match &wire_case.entities {
            Value::Array(items) => Ok(items.clone()),
            Value::String(relative) => read_cedar_entities(&base_dir, relative),
            _ => Err(CaseError::new(
                "`entities` must be an array of entities or the path of an entity file",
                "write `\"entities\": []` or `\"entities\": \"entities.json\"`",
            )),
        };
        let request = entities
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|_| cedar_request(&wire_case.request));
        cases.push(Case {
            name,
            file: source.path.clone(),
            line,
            request,
            entities: EntitySource::Replaced(Arc::new(entities.unwrap_or_default())),
            unknown_entities: Vec::new(),
            require_known_entities: false,
            expect: Expectation {
                decision: wire_case.decision.0,
                status: None,
                policies: Some(wire_case.reason.clone()),
                policy_match: PolicyMatch::Subset,
                errors: ErrorExpectation::Count(wire_case.num_errors),
            },
            skip: None,
            usage: None,
        });
    }
    Ok(TestFile {
        name: file_name,
        format: FileFormat::Cedar,
        cases,
        source,
    })
}

fn read_cedar_entities(base_dir: &Path, relative: &str) -> Result<Vec<Value>, CaseError> {
    let path = base_dir.join(relative);
    let text = std::fs::read_to_string(&path).map_err(|error| {
        CaseError::new(
            format!("cannot read entity file `{}`: {error}", path.display()),
            "the path is relative to the test file",
        )
    })?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(items)) => Ok(items),
        Ok(_) => Err(CaseError::new(
            format!("entity file `{}` must hold a JSON array", path.display()),
            "write `[ {\"uid\": ..., \"attrs\": ..., \"parents\": ...}, ... ]`",
        )),
        Err(error) => Err(CaseError::new(
            format!("invalid JSON in entity file `{}`: {error}", path.display()),
            "fix the JSON syntax",
        )),
    }
}

/// Maps a cedar request onto a modelgate request: `context.now` and `context.request`
/// become the request time and token facts, other context attributes stay context.
fn cedar_request(wire: &CedarRequest) -> Result<CheckRequest, CaseError> {
    let mut request = CheckRequest::new(&wire.principal, &wire.action, &wire.resource)?;
    let mut context = wire.context.clone();
    if let Some(now) = context.remove("now") {
        let text = now
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                now.pointer("/__extn/arg")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .ok_or_else(|| {
                CaseError::new(
                    format!("`context.now` must be a datetime, found `{now}`"),
                    "write `{\"__extn\": {\"fn\": \"datetime\", \"arg\": \"2026-12-04T12:00:00Z\"}}`",
                )
            })?;
        request.now = Some(text);
    }
    if let Some(facts) = context.remove("request") {
        request.facts = cedar_facts(&facts)?;
    }
    request.context = context;
    Ok(request)
}

fn cedar_facts(value: &Value) -> Result<RequestFacts, CaseError> {
    let help = "modelgate fills `context.request` from `input_tokens`, `max_output_tokens` and `stream`; `total_tokens` must be their sum";
    let count = |field: &str| -> Result<u64, CaseError> {
        match value.get(field) {
            None => Ok(0),
            Some(number) => number.as_u64().ok_or_else(|| {
                CaseError::new(
                    format!("`context.request.{field}` must be a non-negative integer, found `{number}`"),
                    help,
                )
            }),
        }
    };
    let facts = RequestFacts {
        input_tokens: count("input_tokens")?,
        max_output_tokens: count("max_output_tokens")?,
        stream: value
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    let total = count("total_tokens")?;
    let sum = facts.input_tokens.saturating_add(facts.max_output_tokens);
    if value.get("total_tokens").is_some() && total != sum {
        return Err(CaseError::new(
            format!("`context.request.total_tokens` is {total} but `input_tokens` + `max_output_tokens` is {sum}"),
            help,
        ));
    }
    Ok(facts)
}

// --- locating cases in the text ------------------------------------------------

/// Returns the byte offset of each element of a JSON array: the top-level array when `key`
/// is `None`, or the array under the top-level object's `key`. The text must already have
/// parsed as JSON; on anything unexpected the list is shorter and callers fall back to 0.
pub(crate) fn array_element_offsets(text: &str, key: Option<&str>) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut offsets = Vec::new();
    let mut depth = 0usize;
    // Depth of the array whose elements are wanted, once found.
    let mut target: Option<usize> = None;
    let mut expect_element = false;
    let mut last_string: Option<(usize, usize)> = None;
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        match byte {
            b'"' => {
                let start = index;
                index += 1;
                while let Some(&inner) = bytes.get(index) {
                    if inner == b'\\' {
                        index += 2;
                        continue;
                    }
                    if inner == b'"' {
                        break;
                    }
                    index += 1;
                }
                if expect_element {
                    offsets.push(start);
                    expect_element = false;
                }
                last_string = Some((start + 1, index));
            }
            b'[' | b'{' => {
                if expect_element {
                    offsets.push(index);
                    expect_element = false;
                }
                depth += 1;
                if byte == b'[' && target.is_none() {
                    let wanted = match key {
                        None => depth == 1,
                        Some(key) => {
                            depth == 2
                                && last_string
                                    .and_then(|(start, end)| text.get(start..end))
                                    .is_some_and(|name| name == key)
                        }
                    };
                    if wanted {
                        target = Some(depth);
                        expect_element = true;
                    }
                }
            }
            b']' | b'}' => {
                if target == Some(depth) {
                    return offsets;
                }
                depth = depth.saturating_sub(1);
                expect_element = false;
            }
            b',' => {
                if target == Some(depth) {
                    expect_element = true;
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' | b':' => {}
            _ => {
                if expect_element {
                    offsets.push(index);
                    expect_element = false;
                }
            }
        }
        index += 1;
    }
    offsets
}

/// Finds the first occurrence of `value` written as a JSON string literal.
fn find_string_literal(text: &str, value: &str) -> Option<usize> {
    let literal = serde_json::to_string(value).ok()?;
    text.find(&literal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_of_cases_array() {
        let text =
            "{\n \"name\": \"x\",\n \"cases\": [\n  {\"a\": [1, {}]},\n  {\"b\": \"]\"}\n ]\n}";
        let offsets = array_element_offsets(text, Some("cases"));
        let source = SourceFile::new(PathBuf::from("t"), text);
        let lines: Vec<usize> = offsets.iter().map(|o| source.location(*o).line).collect();
        assert_eq!(lines, vec![4, 5]);
    }

    #[test]
    fn offsets_of_top_level_array() {
        let text = "[\n {\"request\": {}},\n\n {\"x\": [\"[\"]}\n]";
        let offsets = array_element_offsets(text, None);
        let source = SourceFile::new(PathBuf::from("t"), text);
        let lines: Vec<usize> = offsets.iter().map(|o| source.location(*o).line).collect();
        assert_eq!(lines, vec![2, 4]);
    }

    #[test]
    fn nested_cases_key_is_ignored() {
        let text = r#"{"fixtures": {"cases": [1]}, "cases": [{"n": 1}]}"#;
        let offsets = array_element_offsets(text, Some("cases"));
        assert_eq!(offsets.len(), 1);
        let first = offsets.first().copied().unwrap_or(0);
        assert_eq!(text.get(first..first + 1), Some("{"));
    }

    #[test]
    fn unknown_decision_word_is_rejected() {
        let result = parse_decision_word("permit");
        assert_eq!(
            result.err(),
            Some("unknown decision `permit`, expected `allow` or `deny`".to_string())
        );
    }
}
