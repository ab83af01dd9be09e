//! `modelgate test` driven as a user runs it, on the fixture directories under
//! `tests/fixtures/runner/` and on the shipped policy set.

#![allow(
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test stops with a message on a broken setup, and indexes JSON it asserts on"
)]

use std::path::Path;
use std::process::Command;

const FIXTURES: &str = "tests/fixtures/runner";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Returns the last line of standard output, the summary.
    fn summary(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }

    /// Formats the exit code, standard output and error for snapshots.
    fn transcript(&self) -> String {
        format!(
            "exit code: {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the binary from the repository root, where the shipped `policies/` and `schema/` are.
fn modelgate(args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .output();
    let output = match output {
        Ok(output) => output,
        Err(error) => panic!("cannot start modelgate: {error}"),
    };
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}")
}

/// Replaces durations and temporary paths, which change from run to run.
macro_rules! assert_redacted_snapshot {
    ($name:expr, $value:expr) => {
        insta::with_settings!({
            filters => vec![
                (r#""duration_ms":[0-9.e-]+"#, r#""duration_ms":"[duration]""#),
                (r#"time="[0-9.]+""#, r#"time="[time]""#),
                (r"/tmp/[^\s/`]+", "[temp]"),
            ],
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_snapshot!($name, $value);
        });
    };
}

#[test]
fn shipped_policies_pass_with_full_coverage() {
    let run = modelgate(&["test", "--min-coverage", "100", "--coverage"]);
    assert_eq!(run.code, 0, "{}", run.transcript());
    assert_eq!(run.summary(), "139 passed, 0 failed");
    assert!(
        run.stdout
            .contains("coverage: 31 of 31 policies decided at least one case (100.0%)"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("policies no case decided"));
}

#[test]
fn all_pass_exits_zero() {
    let run = modelgate(&["test", &fixture("all-pass")]);
    assert_eq!(run.code, 0);
    assert_eq!(run.summary(), "3 passed, 0 failed");
    assert_redacted_snapshot!("all_pass_human", run.transcript());
}

#[test]
fn some_fail_exits_one_and_explains() {
    let run = modelgate(&["test", &fixture("some-fail")]);
    assert_eq!(run.code, 1);
    assert_eq!(run.summary(), "2 passed, 3 failed");
    // Exact match by default: a missing deciding policy fails, a subset passes on request.
    assert!(run
        .stdout
        .contains("unexpected deciding policies: `analyst-token-cap`"));
    assert!(run
        .stdout
        .contains("PASS   tests/fixtures/runner/some-fail/mixed.test.json:27"));
    assert!(run
        .stdout
        .contains("forbid analyst-token-cap  policies/roles.cedar:11:1"));
    assert!(run.stdout.contains("expected status 403, got 401"));
    assert_redacted_snapshot!("some_fail_human", run.transcript());
}

#[test]
fn some_fail_json_lines() {
    let run = modelgate(&["test", "--format", "json", &fixture("some-fail")]);
    assert_eq!(run.code, 1);
    let events: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or(serde_json::Value::Null))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|event| event["event"].as_str().unwrap_or("not an event"))
        .collect();
    assert_eq!(
        kinds,
        [
            "run_started",
            "case_finished",
            "case_finished",
            "case_finished",
            "case_finished",
            "case_finished",
            "run_finished"
        ]
    );
    let finished = events.last().cloned().unwrap_or_default();
    assert_eq!(finished["summary"], "2 passed, 3 failed");
    assert_eq!(finished["verdict"], "failed");
    assert_redacted_snapshot!("some_fail_json", run.stdout);
}

#[test]
fn fail_fast_stops_after_first_failure() {
    let run = modelgate(&["test", "--fail-fast", &fixture("some-fail")]);
    assert_eq!(run.code, 1);
    assert_eq!(run.summary(), "1 passed, 1 failed");
    assert!(run.stderr.contains("stopped after the first failure"));
}

#[test]
fn parse_error_fails_the_run() {
    let run = modelgate(&["test", &fixture("parse-error")]);
    assert_eq!(run.code, 2, "{}", run.transcript());
    assert_eq!(run.summary(), "2 passed, 0 failed");
    assert!(run
        .stdout
        .contains("2 errors: test files or cases that could not run"));
    assert!(run
        .stderr
        .contains("--> tests/fixtures/runner/parse-error/broken.test.json:4:55"));
    assert!(run
        .stdout
        .contains("unknown action `Action::\"chta\"`; did you mean `chat`?"));
    assert!(!run.stdout.contains("SKIP"));
    assert_redacted_snapshot!("parse_error_human", run.transcript());
}

#[test]
fn parse_error_json_lines() {
    let run = modelgate(&["test", "--format", "json", &fixture("parse-error")]);
    assert_eq!(run.code, 2);
    assert!(run.stdout.contains(r#""event":"file_error""#));
    assert_redacted_snapshot!("parse_error_json", run.stdout);
}

#[test]
fn junit_report_has_the_standard_structure() {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("no temp dir: {error}"));
    let path = dir.path().join("report.xml");
    let path_text = path.display().to_string();
    let run = modelgate(&[
        "test",
        "--junit",
        &path_text,
        &fixture("parse-error"),
        &fixture("skip-fail"),
    ]);
    assert_eq!(run.code, 2, "{}", run.transcript());
    let xml = std::fs::read_to_string(&path).unwrap_or_default();
    let document = match roxmltree::Document::parse(&xml) {
        Ok(document) => document,
        Err(error) => panic!("invalid JUnit XML: {error}\n{xml}"),
    };

    let root = document.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    assert_eq!(root.attribute("tests"), Some("7"));
    assert_eq!(root.attribute("failures"), Some("1"));
    assert_eq!(root.attribute("errors"), Some("2"));
    assert_eq!(root.attribute("skipped"), Some("1"));

    let suites: Vec<_> = root.children().filter(|node| node.is_element()).collect();
    assert!(suites
        .iter()
        .all(|suite| suite.tag_name().name() == "testsuite"));
    assert_eq!(suites.len(), 4);
    let cases: Vec<_> = suites
        .iter()
        .flat_map(|suite| suite.children().filter(|node| node.is_element()))
        .collect();
    assert!(cases
        .iter()
        .all(|case| case.tag_name().name() == "testcase"));
    assert_eq!(cases.len(), 7);

    let with_child = |tag: &str| {
        cases
            .iter()
            .filter(|case| case.children().any(|child| child.tag_name().name() == tag))
            .count()
    };
    assert_eq!(with_child("failure"), 1);
    assert_eq!(with_child("error"), 2);
    assert_eq!(with_child("skipped"), 1);
    assert_redacted_snapshot!("junit_report", xml);
}

#[test]
fn empty_directory_fails_unless_allowed() {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("no temp dir: {error}"));
    let path = dir.path().display().to_string();

    let run = modelgate(&["test", &path]);
    assert_eq!(run.code, 2);
    assert_eq!(run.summary(), "0 passed, 0 failed");
    assert!(run.stderr.contains("error: no tests were run"));

    let allowed = modelgate(&["test", "--allow-empty", &path]);
    assert_eq!(allowed.code, 0);
    assert_eq!(allowed.summary(), "0 passed, 0 failed");
    assert!(allowed.stderr.contains("warning: no tests were run"));
}

#[test]
fn filter_matching_nothing_fails() {
    let run = modelgate(&["test", "--filter", "no-such-test", &fixture("all-pass")]);
    assert_eq!(run.code, 2);
    assert_eq!(run.summary(), "0 passed, 0 failed");
    assert!(run.stderr.contains("no tests were run"));
    assert!(run.stdout.contains("(3 filtered out)"));

    let json = modelgate(&[
        "test",
        "--format",
        "json",
        "--filter",
        "no-such-test",
        &fixture("all-pass"),
    ]);
    assert_eq!(json.code, 2);
    assert!(json.stderr.contains("error: no tests were run"));
    assert!(json.stdout.contains(r#""no_tests_run":true"#));
}

#[test]
fn filter_selects_by_case_name() {
    let run = modelgate(&["test", "--filter", "revoked", &fixture("all-pass")]);
    assert_eq!(run.code, 0);
    assert_eq!(run.summary(), "1 passed, 0 failed");
}

#[test]
fn misnamed_test_file_is_not_run() {
    let run = modelgate(&["test", &fixture("misnamed")]);
    assert_eq!(run.code, 2);
    assert_eq!(run.summary(), "0 passed, 0 failed");
    assert!(run
        .stderr
        .contains("`tests/fixtures/runner/misnamed/policies.tests.json` was not run"));
}

#[test]
fn coverage_below_minimum_fails() {
    let run = modelgate(&["test", "--min-coverage", "100", &fixture("all-pass")]);
    assert_eq!(run.code, 1);
    assert_eq!(run.summary(), "3 passed, 0 failed");
    assert!(run
        .stderr
        .contains("error: policy coverage 6.5% is below the required 100%"));
    assert!(run.stdout.contains("policies no case decided:"));
    assert!(run
        .stdout
        .contains("forbid unknown-user  policies/keys.cedar:9"));
    assert!(run
        .stdout
        .contains("permit admin-models  policies/roles.cedar:43"));

    let lenient = modelgate(&["test", "--min-coverage", "6", &fixture("all-pass")]);
    assert_eq!(lenient.code, 0);
}

#[test]
fn coverage_report_snapshot() {
    let run = modelgate(&["test", "--coverage", &fixture("all-pass")]);
    assert_eq!(run.code, 0);
    assert_redacted_snapshot!("coverage_human", run.transcript());
}

#[test]
fn cedar_run_tests_file_runs_unchanged() {
    let run = modelgate(&["test", &fixture("cedar/run-tests.json")]);
    assert_eq!(run.code, 0, "{}", run.transcript());
    assert_eq!(run.summary(), "4 passed, 0 failed");
    assert!(run.stdout.contains("run-tests.json:18  case 2"));
}

#[test]
fn skip_does_not_mask_failure() {
    let run = modelgate(&["test", &fixture("skip-fail")]);
    assert_eq!(run.code, 1);
    assert_eq!(run.summary(), "1 passed, 1 failed, 1 skipped");
    assert!(run.stdout.contains("SKIP   tests/fixtures/runner/skip-fail/skip.test.json:7  skipped case (waiting for the frontier grant)"));
}

#[test]
fn bad_input_is_reported_with_locations() {
    let run = modelgate(&["test", &fixture("bad-input")]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("missing field `expect`"));
    assert!(run.stderr.contains("missing-expect.test.json:8:5"));
    assert!(run
        .stderr
        .contains("unknown decision `permit`, expected `allow` or `deny`"));
    assert!(run.stderr.contains("missing-fixture.test.json:4:22"));
    assert!(run.stderr.contains("did you mean `max_output_tokens`?"));
    assert!(run.stdout.contains("duplicate case name `duplicate name`"));
    assert!(run.stdout.contains("did you mean `analyst-models`?"));
    assert!(run.stdout.contains("did you mean `mistral-small-latest`?"));
    assert!(!run.stdout.contains("SKIP"));
    assert_redacted_snapshot!("bad_input_human", run.transcript());
}

#[test]
fn evaluation_errors_are_checked() {
    let run = modelgate(&["test", &fixture("evaluation-errors")]);
    assert_eq!(run.code, 2);
    assert_eq!(run.summary(), "2 passed, 3 failed");
    assert!(run
        .stdout
        .contains("ERROR  tests/fixtures/runner/evaluation-errors/errors.test.json:8"));
    assert!(run.stdout.contains(
        "`context.request.input_tokens` must be a non-negative integer, found `\"9000\"`"
    ));
    assert!(run.stdout.contains("- expected 0 evaluation errors, got 2"));
    assert!(run
        .stdout
        .contains("unexpected evaluation error in `service-key-models`"));
    assert!(run
        .stdout
        .contains("expected an evaluation error matching `does not exist`, but none occurred"));
    assert_redacted_snapshot!("evaluation_errors_human", run.transcript());
}

#[test]
fn invalid_policy_set_is_an_error() {
    let policies = fixture("invalid-policy/policies");
    let run = modelgate(&["test", "--policies", &policies, &fixture("all-pass")]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("broken.cedar:2"));

    let validate = modelgate(&["validate", "--policies", &policies]);
    assert_ne!(validate.code, 0);
}

#[test]
fn missing_test_path_is_an_error() {
    let run = modelgate(&["test", "tests/fixtures/runner/no-such-dir"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("test path does not exist"));
}

#[test]
fn fixture_directories_exist() {
    for name in [
        "all-pass",
        "some-fail",
        "parse-error",
        "cedar",
        "skip-fail",
        "bad-input",
    ] {
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(FIXTURES)
                .join(name)
                .is_dir(),
            "{name}"
        );
    }
}

#[test]
fn fixture_entities_override_engine_data() {
    let run = modelgate(&["test", &fixture("entity-override")]);
    assert_eq!(run.code, 0, "{}", run.transcript());
    assert_eq!(run.summary(), "3 passed, 0 failed");
}

#[test]
fn unwritable_junit_path_is_an_error() {
    let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("no temp dir: {error}"));
    let path = dir.path().join("missing-dir").join("report.xml");
    let path_text = path.display().to_string();
    let run = modelgate(&["test", "--junit", &path_text, &fixture("all-pass")]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("cannot write test results"));
    assert_eq!(run.summary(), "3 passed, 0 failed");
}

/// Reads the child's standard output line by line on a thread, so that the test can wait
/// for a line with a timeout.
fn line_reader(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, wanted: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if line == wanted => return seen,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!(
        "no line `{wanted}` within 30 s; output so far:\n{}",
        seen.join("\n")
    );
}

#[test]
fn watch_reruns_after_test_file_change() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tests_dir = dir.path().join("tests");
    std::fs::create_dir(&tests_dir).expect("create tests dir");
    let case = |expect: &str| {
        format!(
            r#"{{"name": "watch", "fixtures": {{"now": "2026-12-04T12:00:00Z"}}, "cases": [
                {{"name": "analyst chats", "principal": "ApiKey::key-ana-ml", "model": "mistral-small-latest", "expect": "{expect}"}}
            ]}}"#
        )
    };
    let file = tests_dir.join("watch.test.json");
    std::fs::write(&file, case("allow")).expect("write test file");

    // Relative paths, as typed at a terminal: the policy set is given from the repository,
    // the test directory relative to the temporary directory the command runs in.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .current_dir(dir.path())
        .args(["test", "--watch", "--debounce-ms", "100", "--policies"])
        .arg(root.join("policies"))
        .arg("--schema")
        .arg(root.join("schema"))
        .arg("tests")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("modelgate starts");
    let lines = line_reader(child.stdout.take().expect("piped stdout"));

    wait_for_line(&lines, "1 passed, 0 failed");
    // Save the way editors do: write a temporary file, then rename it over the original.
    let temporary = tests_dir.join(".watch.test.json.tmp");
    std::fs::write(&temporary, case("deny")).expect("write temporary file");
    std::fs::rename(&temporary, &file).expect("rename over the test file");
    let between = wait_for_line(&lines, "0 passed, 1 failed");

    child.kill().expect("stop the watcher");
    let _ = child.wait();
    assert!(
        between.iter().any(|line| line.starts_with("changed: ")),
        "no change line before the second run: {between:?}"
    );
}

#[test]
fn invalid_case_usage_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("usage.test.json");
    std::fs::write(
        &file,
        r#"{"name": "usage", "cases": [
  {"name": "negative usage", "principal": "ApiKey::key-ana-ml", "model": "mistral-small-latest",
   "usage": {"user": {"day": {"input_tokens": -1}}}, "expect": "allow"}
]}"#,
    )
    .expect("write test file");
    let run = modelgate(&["test", file.to_str().expect("utf-8 path")]);
    assert_eq!(run.code, 2, "{}", run.transcript());
    assert!(run.stderr.contains("invalid `usage`"), "{}", run.stderr);
    assert!(run.stderr.contains("usage.test.json:2:"), "{}", run.stderr);
}
