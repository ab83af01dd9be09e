//! `modelgate check` on the shipped policy set: output formats, batch mode and exit codes.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test helpers stop the test on a broken fixture"
)]

mod common;

use common::modelgate;

const NOW: &str = "2026-12-04T12:00:00Z";

fn check(extra: &[&str]) -> common::Run {
    let mut args = vec!["check", "--now", NOW];
    args.extend_from_slice(extra);
    modelgate(&args, None)
}

#[test]
fn allow_in_human_format() {
    let run = check(&[
        "--principal",
        "ApiKey::\"key-ana-ml\"",
        "--model",
        "mistral-small-latest",
        "--input-tokens",
        "120",
        "--max-output-tokens",
        "300",
    ]);
    assert_eq!(run.code, 0);
    insta::assert_snapshot!(run.transcript());
}

#[test]
fn revoked_key_in_human_and_json() {
    for format in ["human", "json"] {
        let run = check(&[
            "--principal",
            "ApiKey::\"key-ana-old\"",
            "--model",
            "mistral-small-latest",
            "--format",
            format,
        ]);
        assert_eq!(run.code, 1);
        insta::assert_snapshot!(format!("revoked_{format}"), run.transcript());
    }
}

#[test]
fn json_decision_has_status_and_policy_location() {
    let run = check(&[
        "--principal",
        "ApiKey::key-devon-trial",
        "--model",
        "codestral-latest",
        "--format",
        "json",
    ]);
    let decision: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON object");
    assert_eq!(decision["decision"], "deny");
    assert_eq!(decision["status"], 401);
    assert_eq!(decision["policies"][0]["id"], "expired-api-key");
    assert_eq!(decision["policies"][0]["file"], "policies/keys.cedar");
    assert!(decision["policies"][0]["line"].as_u64().unwrap_or(0) > 0);
}

#[test]
fn default_deny_suggests_model_name() {
    let run = check(&[
        "--principal",
        "User::\"ana\"",
        "--model",
        "mistral-smal-latest",
    ]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("no permit policy matches"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("did you mean `mistral-small-latest`?"),
        "{}",
        run.stdout
    );
    insta::assert_snapshot!(run.transcript());
}

#[test]
fn unknown_action_is_an_error_with_suggestion() {
    let run = check(&[
        "--principal",
        "User::\"ana\"",
        "--action",
        "chta",
        "--model",
        "mistral-small-latest",
    ]);
    assert_eq!(run.code, 2);
    assert_eq!(run.stdout, "");
    insta::assert_snapshot!(run.transcript());
}

#[test]
fn unknown_entity_type_is_an_error() {
    let run = check(&[
        "--principal",
        "Usr::\"ana\"",
        "--model",
        "mistral-small-latest",
    ]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("unknown entity type `Usr`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("did you mean `User`?"),
        "{}",
        run.stderr
    );
}

#[test]
fn token_count_above_ceiling_is_rejected() {
    let run = check(&[
        "--principal",
        "User::\"ada\"",
        "--model",
        "mistral-small-latest",
        "--max-output-tokens",
        "4611686018427387904",
    ]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("max_output_tokens is 4611686018427387904"),
        "{}",
        run.stderr
    );
}

#[test]
fn undeclared_context_attribute_is_rejected() {
    let run = check(&[
        "--principal",
        "User::\"ada\"",
        "--model",
        "mistral-small-latest",
        "--context",
        "{\"region\": \"eu\"}",
    ]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("does not match the schema"),
        "{}",
        run.stderr
    );
}

#[test]
fn request_file_is_decided() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("request.json");
    std::fs::write(
        &path,
        r#"{"principal": "ApiKey::\"key-sam-ml\"", "action": "chat", "model": "mistral-large-latest",
            "input_tokens": 1000, "max_output_tokens": 3000, "now": "2026-12-04T12:00:00Z"}"#,
    )
    .expect("write request");
    let run = modelgate(&["check", path.to_str().expect("utf-8 path")], None);
    assert_eq!(run.code, 0, "{}", run.transcript());
    assert!(run.stdout.starts_with("ALLOW"), "{}", run.stdout);
}

#[test]
fn malformed_request_file_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("request.json");
    std::fs::write(
        &path,
        r#"{"principal": "User::\"ana\"", "action": "chat", }"#,
    )
    .expect("write request");
    let run = modelgate(&["check", path.to_str().expect("utf-8 path")], None);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("invalid request JSON"),
        "{}",
        run.stderr
    );
}

#[test]
fn batch_mode_prints_one_decision_per_line() {
    let input = [
        r#"{"principal": "ApiKey::\"key-ana-ml\"", "action": "chat", "model": "mistral-small-latest", "input_tokens": 10, "now": "2026-12-04T12:00:00Z"}"#,
        r#"{"principal": "ApiKey::\"key-ana-ml\"", "action": "chat", "model": "mistral-large-latest", "now": "2026-12-04T12:00:00Z"}"#,
        r#"{"principal": "ApiKey::\"key-ana-ml\"", "action": "chat", "model": "mistral-small-latest", "input_tokens": -1}"#,
        "",
        r#"{"principal": "ApiKey::\"key-ana-old\"", "action": "chat", "model": "mistral-small-latest", "now": "2026-12-04T12:00:00Z"}"#,
    ]
    .join("\n");
    let run = modelgate(&["check", "-", "--format", "json"], Some(&input));
    // A malformed line makes the whole run an error, after every line was decided.
    assert_eq!(run.code, 2);
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("each output line is JSON"))
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["decision"], "allow");
    assert_eq!(lines[1]["decision"], "deny");
    assert_eq!(lines[2]["decision"], "deny");
    assert_eq!(lines[2]["line"], 3);
    assert!(lines[2]["error"]
        .as_str()
        .unwrap_or("")
        .contains("input_tokens"));
    assert_eq!(lines[3]["status"], 401);
    insta::assert_snapshot!(run.transcript());
}

#[test]
fn batch_exit_code_is_deny_without_errors() {
    let input = r#"{"principal": "ApiKey::\"key-ana-old\"", "action": "chat", "model": "mistral-small-latest"}"#;
    let run = modelgate(&["check", "-"], Some(input));
    assert_eq!(run.code, 1, "{}", run.transcript());
}

#[test]
fn broken_policy_set_fails_check_with_error_code() {
    let run = check(&[
        "--policies",
        "tests/fixtures/validate/syntax/policies",
        "--principal",
        "User::\"ada\"",
        "--model",
        "mistral-small-latest",
    ]);
    assert_eq!(run.code, 2);
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("broken.cedar:3:27"), "{}", run.stderr);
}

#[test]
fn admin_action_on_workspace() {
    let run = check(&[
        "--principal",
        "User::\"devon\"",
        "--action",
        "create_key",
        "--resource",
        "Workspace::\"dev-workspace\"",
    ]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.starts_with("DENY 403"), "{}", run.stdout);
}

#[test]
fn action_group_is_rejected_with_its_members() {
    let run = check(&[
        "--principal",
        "User::\"ana\"",
        "--action",
        "inference",
        "--model",
        "mistral-small-latest",
    ]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("is an action group"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("name one of its actions: agents, batch_jobs, chat"),
        "{}",
        run.stderr
    );
}

#[test]
fn empty_batch_is_an_error() {
    let run = modelgate(&["check", "-"], Some(""));
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("no request was read"), "{}", run.stderr);
}

#[test]
fn request_without_action_defaults_to_chat() {
    let input = r#"{"principal": "ApiKey::\"key-ana-ml\"", "model": "mistral-small-latest", "now": "2026-12-04T12:00:00Z"}"#;
    let run = modelgate(&["check", "-"], Some(input));
    assert_eq!(run.code, 0, "{}", run.transcript());
    assert!(run.stdout.contains("Action::\"chat\""), "{}", run.stdout);
}

#[test]
fn request_file_conflicts_with_request_flags() {
    let run = modelgate(
        &["check", "request.json", "--principal", "User::\"ana\""],
        None,
    );
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("cannot be used with"), "{}", run.stderr);
}

#[test]
fn missing_model_is_an_incomplete_request() {
    let run = check(&["--principal", "User::\"ana\""]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("incomplete request: missing `--model MODEL`"),
        "{}",
        run.stderr
    );
}

#[test]
fn request_file_error_names_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("requests.jsonl");
    let line = r#"{"principal": "User::\"ana\"", "model": "mistral-small-latest"}"#;
    std::fs::write(&path, format!("{line}\n{line}\n")).expect("write requests");
    let run = modelgate(&["check", path.to_str().expect("utf-8 path")], None);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("in request file `"), "{}", run.stderr);
    assert!(run.stderr.contains("requests.jsonl"), "{}", run.stderr);
    assert!(
        run.stderr.contains("modelgate check - < FILE"),
        "{}",
        run.stderr
    );
}

#[test]
fn load_error_summary_names_the_location_once() {
    let run = check(&[
        "--policies",
        "tests/fixtures/validate/syntax/policies",
        "--principal",
        "User::\"ada\"",
        "--model",
        "mistral-small-latest",
    ]);
    assert_eq!(run.code, 2);
    let summary = run
        .stderr
        .lines()
        .find(|line| line.starts_with("error: cannot load"))
        .expect("a summary line");
    assert_eq!(
        summary,
        "error: cannot load the policy set: tests/fixtures/validate/syntax/policies/also-broken.cedar:5:39: unexpected token `}` (and 1 more error)"
    );
}
