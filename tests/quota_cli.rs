//! `modelgate usage`, `check --usage`/`--ledger` and `keys audit` on the shipped policy set.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test helpers stop the test on a broken fixture"
)]

mod common;

use common::modelgate;

const NOW: &str = "2026-12-04T12:00:00Z";

/// Returns the current time. Commands prune windows older than their retention by the wall
/// clock, so usage recorded at a fixed past time could be gone when these tests run.
fn wall_clock_now() -> String {
    modelgate::clock::format_millis(modelgate::Clock::now_millis(&modelgate::SystemClock))
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).expect("one JSON value per line"))
        .collect()
}

#[test]
fn record_then_show_in_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = dir.path().join("ledger.sqlite3");
    let ledger = ledger.to_str().expect("utf-8 path");
    let now = wall_clock_now();
    let run = modelgate(
        &[
            "usage",
            "record",
            "--ledger",
            ledger,
            "--principal",
            "ApiKey::key-devon-dev",
            "--model",
            "codestral-latest",
            "--input-tokens",
            "1000",
            "--output-tokens",
            "2000",
            "--now",
            &now,
        ],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    // 1,000 x 0.3 + 2,000 x 0.9 micro-USD.
    assert!(run.stdout.contains("0.002100 USD"), "{}", run.stdout);

    let run = modelgate(
        &[
            "usage",
            "show",
            "--ledger",
            ledger,
            "--now",
            &now,
            "--scope",
            "Workspace::dev-workspace",
            "--format",
            "json",
        ],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON array");
    let rows = rows.as_array().expect("array");
    assert_eq!(rows.len(), 4, "one row per window");
    for row in rows {
        assert_eq!(row["scope"], "Workspace::\"dev-workspace\"");
        assert_eq!(row["kind"], "workspace");
        assert_eq!(row["tokens"], 3000);
        assert_eq!(row["cost_micro_usd"], 2100);
    }
}

#[test]
fn check_with_ledger_counts_recorded_usage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = dir.path().join("ledger.sqlite3");
    let ledger = ledger.to_str().expect("utf-8 path");
    let now = wall_clock_now();
    let record = format!(
        "{{\"principal\": \"ApiKey::key-ana-ml\", \"model\": \"mistral-small-latest\", \"input_tokens\": 99600, \"now\": \"{now}\"}}\n"
    );
    let run = modelgate(&["usage", "record", "--ledger", ledger, "-"], Some(&record));
    assert_eq!(run.code, 0, "{}", run.stderr);

    let check = |tokens: &str| {
        modelgate(
            &[
                "check",
                "--ledger",
                ledger,
                "--now",
                &now,
                "--principal",
                "ApiKey::key-ana-ml",
                "--model",
                "mistral-small-latest",
                "--input-tokens",
                tokens,
                "--format",
                "json",
            ],
            None,
        )
    };
    let run = check("400");
    assert_eq!(run.code, 0, "99,600 + 400 fits: {}", run.stdout);
    let run = check("401");
    assert_eq!(run.code, 1);
    let decision = &json_lines(&run.stdout)[0];
    assert_eq!(decision["status"], 429);
    assert_eq!(decision["policies"][0]["id"], "analyst-daily-tokens");
    assert_eq!(decision["policies"][0]["window"], "day");
    let retry_after = decision["retry_after_secs"].as_u64().expect("retry-after");
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
}

#[test]
fn check_with_usage_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let usage = dir.path().join("usage.json");
    std::fs::write(&usage, r#"{"workspace": {"minute": {"requests": 60}}}"#).expect("write usage");
    let run = modelgate(
        &[
            "check",
            "--usage",
            usage.to_str().expect("utf-8 path"),
            "--now",
            "2026-12-04T12:00:45Z",
            "--principal",
            "ApiKey::key-devon-dev",
            "--model",
            "mistral-small-latest",
        ],
        None,
    );
    assert_eq!(run.code, 1);
    assert!(run.stdout.starts_with("DENY 429"), "{}", run.stdout);
    assert!(run.stdout.contains("dev-workspace-rate"), "{}", run.stdout);
    assert!(run.stdout.contains("retry after: 15 s"), "{}", run.stdout);
}

#[test]
fn invalid_usage_file_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let usage = dir.path().join("usage.json");
    for text in [
        r#"{"user": {"day": {"input_tokens": 9223372036854775807}}}"#,
        r#"{"user": {"day": {"input_tokens": -5}}}"#,
        r#"{"user": {"week": {"requests": 1}}}"#,
    ] {
        std::fs::write(&usage, text).expect("write usage");
        let run = modelgate(
            &[
                "check",
                "--usage",
                usage.to_str().expect("utf-8 path"),
                "--principal",
                "ApiKey::key-ana-ml",
                "--model",
                "mistral-small-latest",
            ],
            None,
        );
        assert_eq!(run.code, 2, "{text}");
        assert_eq!(run.stdout, "", "{text}");
        assert!(run.stderr.contains("error: usage file"), "{}", run.stderr);
    }
}

#[test]
fn corrupted_ledger_is_an_error_for_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = dir.path().join("ledger.sqlite3");
    std::fs::write(&ledger, "garbage that is not an SQLite database at all").expect("write");
    let run = modelgate(
        &[
            "check",
            "--ledger",
            ledger.to_str().expect("utf-8 path"),
            "--principal",
            "ApiKey::key-ana-ml",
            "--model",
            "mistral-small-latest",
        ],
        None,
    );
    assert_eq!(run.code, 2);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.contains("cannot open the usage ledger"),
        "{}",
        run.stderr
    );
}

#[test]
fn record_rejects_bad_lines_and_keeps_going() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = dir.path().join("ledger.sqlite3");
    let ledger = ledger.to_str().expect("utf-8 path");
    let input = [
        r#"{"principal": "ApiKey::nobody", "model": "mistral-small-latest", "input_tokens": 1}"#,
        r#"{"principal": "ApiKey::key-ana-ml", "model": "mistral-small-latest", "input_tokens": -1}"#,
        r#"{"principal": "ApiKey::key-ana-ml", "model": "mistral-small-latest", "input_tokens": 99999999999}"#,
        r#"{"principal": "ApiKey::key-ana-ml", "model": "mistral-small-latest", "input_tokens": 3}"#,
    ]
    .join("\n");
    let run = modelgate(
        &[
            "usage", "record", "--ledger", ledger, "--format", "json", "-",
        ],
        Some(&input),
    );
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("line 1: principal"), "{}", run.stderr);
    assert!(
        run.stderr.contains("line 2: invalid usage record"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("line 3: input_tokens is 99999999999"),
        "{}",
        run.stderr
    );
    let recorded = json_lines(&run.stdout);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["input_tokens"], 3);
}

#[test]
fn keys_audit_lists_keys_needing_attention() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = dir.path().join("ledger.sqlite3");
    let ledger = ledger.to_str().expect("utf-8 path");
    // key-devon-dev used 40 days before the audit, key-devon-ml 1 day before.
    for (key, at) in [
        ("key-devon-dev", "2026-10-25T12:00:00Z"),
        ("key-devon-ml", "2026-12-03T12:00:00Z"),
    ] {
        let principal = format!("ApiKey::{key}");
        let run = modelgate(
            &[
                "usage",
                "record",
                "--ledger",
                ledger,
                "--principal",
                &principal,
                "--model",
                "mistral-small-latest",
                "--input-tokens",
                "1",
                "--now",
                at,
            ],
            None,
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let run = modelgate(
        &[
            "keys", "audit", "--ledger", ledger, "--now", NOW, "--format", "json",
        ],
        None,
    );
    assert_eq!(run.code, 1, "some keys need attention");
    let reports: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON array");
    let find = |key: &str| {
        reports
            .as_array()
            .expect("array")
            .iter()
            .find(|report| report["key"] == format!("ApiKey::\"{key}\""))
            .cloned()
    };
    let kinds = |key: &str| -> Vec<String> {
        find(key)
            .map(|report| {
                report["findings"]
                    .as_array()
                    .expect("findings")
                    .iter()
                    .map(|f| f["kind"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(kinds("key-devon-dev"), ["unused"]);
    assert!(
        find("key-devon-ml").is_none(),
        "used yesterday, created 53 days ago"
    );
    assert_eq!(
        kinds("key-ana-old"),
        ["revoked", "never-used", "rotation-due"]
    );
    assert_eq!(
        kinds("key-devon-trial"),
        ["expired", "never-used", "rotation-due"]
    );
    assert_eq!(kinds("key-ana-dev"), ["never-used", "rotation-due"]);

    let run = modelgate(
        &[
            "keys",
            "audit",
            "--ledger",
            ledger,
            "--now",
            NOW,
            "--unused-days",
            "60",
            "--rotation-days",
            "400",
        ],
        None,
    );
    // Used 40 days ago and created 53 days ago: within both thresholds.
    assert!(!run.stdout.contains("key-devon-dev"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("ApiKey::\"key-ana-old\"  revoked, never used\n"),
        "{}",
        run.stdout
    );
    assert!(run
        .stdout
        .contains("keys need attention (unused 60 days, rotation 400 days)"));
}
