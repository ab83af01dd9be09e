//! The SQLite ledger: durability across a restart and a SIGKILL, pruning, and clear errors
//! for corrupted, foreign and locked files.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test helpers stop the test on a broken fixture"
)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;

use modelgate::clock::parse_rfc3339_millis;
use modelgate::quota::{Bucket, LedgerEntry, LedgerError};
use modelgate::{Counters, Ledger, SqliteLedger, Window};

const NOW: &str = "2026-12-04T12:00:00Z";

fn now() -> i64 {
    parse_rfc3339_millis(NOW).expect("valid time")
}

fn entry(at_millis: i64, tokens: u64) -> LedgerEntry {
    LedgerEntry {
        scopes: vec![
            "ApiKey::\"k1\"".to_string(),
            "Workspace::\"w1\"".to_string(),
        ],
        key: Some("ApiKey::\"k1\"".to_string()),
        at_millis,
        usage: Counters {
            requests: 1,
            input_tokens: tokens,
            output_tokens: 0,
            cost_micro_usd: tokens,
        },
    }
}

fn counters(ledger: &dyn Ledger, scope: &str, window: Window) -> Counters {
    counters_at(ledger, scope, window, now())
}

fn counters_at(ledger: &dyn Ledger, scope: &str, window: Window, at_millis: i64) -> Counters {
    ledger
        .current(at_millis)
        .expect("ledger reads")
        .into_iter()
        .find(|(bucket, _)| bucket.scope == scope && bucket.window == window)
        .map(|(_, counters)| counters)
        .unwrap_or_default()
}

#[test]
fn usage_survives_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ledger.sqlite3");
    {
        let ledger = SqliteLedger::open(&path).expect("opens");
        ledger.add(&entry(now(), 700)).expect("adds");
        ledger.add(&entry(now(), 300)).expect("adds");
    }
    let ledger = SqliteLedger::open(&path).expect("reopens");
    let day = counters(&ledger, "ApiKey::\"k1\"", Window::Day);
    assert_eq!(day.requests, 2);
    assert_eq!(day.input_tokens, 1_000);
    let last = ledger.last_used().expect("reads");
    assert_eq!(last.get("ApiKey::\"k1\""), Some(&now()));
}

#[test]
fn prune_deletes_only_expired_windows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = SqliteLedger::open(dir.path().join("ledger.sqlite3")).expect("opens");
    let three_hours_ago = now() - 3 * 3_600_000;
    ledger.add(&entry(three_hours_ago, 5)).expect("adds");
    ledger.add(&entry(now(), 7)).expect("adds");

    let deleted = ledger.prune(now()).expect("prunes");

    // The minute rows of three hours ago (one per scope) are past the 2-hour retention.
    assert_eq!(deleted, 2);
    let old_hour = ledger
        .read(&Bucket {
            scope: "ApiKey::\"k1\"".to_string(),
            window: Window::Hour,
            start: Window::Hour.start(three_hours_ago),
        })
        .expect("reads");
    assert_eq!(old_hour.input_tokens, 5, "hours are kept for 2 days");
    assert_eq!(
        counters(&ledger, "ApiKey::\"k1\"", Window::Day).input_tokens,
        12
    );
}

#[test]
fn counters_saturate_in_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = SqliteLedger::open(dir.path().join("ledger.sqlite3")).expect("opens");
    let mut huge = entry(now(), modelgate::quota::COUNTER_MAX);
    ledger.add(&huge).expect("adds");
    huge.usage.input_tokens = 1_000;
    ledger.add(&huge).expect("adds");
    let day = counters(&ledger, "ApiKey::\"k1\"", Window::Day);
    assert_eq!(day.input_tokens, modelgate::quota::COUNTER_MAX);
}

#[test]
fn corrupted_file_is_rejected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ledger.sqlite3");
    std::fs::write(
        &path,
        "this is not a database, but it is long enough to look like one",
    )
    .expect("write");
    let error = SqliteLedger::open(&path).expect_err("corrupted");
    assert!(matches!(error, LedgerError::Open { .. }), "{error}");
    assert!(error.to_string().contains("not a database"), "{error}");
}

#[test]
fn foreign_database_is_rejected() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("other.sqlite3");
    let other = rusqlite::Connection::open(&path).expect("opens");
    other
        .execute_batch("CREATE TABLE notes (text TEXT);")
        .expect("creates");
    drop(other);
    let error = SqliteLedger::open(&path).expect_err("foreign");
    assert!(
        error.to_string().contains("not a modelgate ledger"),
        "{error}"
    );
}

#[test]
fn locked_ledger_fails_with_locked_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ledger.sqlite3");
    let ledger = SqliteLedger::open(&path).expect("opens");
    let other = rusqlite::Connection::open(&path).expect("opens");
    other.execute_batch("BEGIN EXCLUSIVE;").expect("locks");

    // Waits for the busy timeout (5 seconds), then fails.
    let error = ledger.add(&entry(now(), 1)).expect_err("locked");
    assert!(matches!(error, LedgerError::Locked(_)), "{error}");

    other.execute_batch("ROLLBACK;").expect("unlocks");
    ledger.add(&entry(now(), 1)).expect("adds after unlock");
    assert_eq!(counters(&ledger, "ApiKey::\"k1\"", Window::Day).requests, 1);
}

/// Streams usage records into `modelgate usage record -`, kills it with SIGKILL after
/// 150 confirmations, and checks that every confirmed record is in the ledger and that each
/// record updated every scope or none.
#[test]
fn sigkill_loses_no_confirmed_usage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger_path = dir.path().join("ledger.sqlite3");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["usage", "record", "--ledger"])
        .arg(&ledger_path)
        .arg("-")
        .current_dir(root)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("modelgate starts");

    // The records carry the current time: the command prunes windows older than their
    // retention by the wall clock, so records at a fixed past time could be pruned.
    let started = modelgate::Clock::now_millis(&modelgate::SystemClock);
    let at = modelgate::clock::format_millis(started);
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let writer = thread::spawn(move || {
        let line = format!(
            "{{\"principal\": \"ApiKey::\\\"key-ana-ml\\\"\", \"model\": \"mistral-small-latest\", \"input_tokens\": 10, \"output_tokens\": 5, \"now\": \"{at}\"}}\n"
        );
        let mut sent = 0_u64;
        // Stops when the pipe breaks, which is when the child has been killed.
        while sent < 100_000 && stdin.write_all(line.as_bytes()).is_ok() {
            sent += 1;
        }
        sent
    });

    let stdout = child.stdout.take().expect("stdout is piped");
    let mut confirmed = 0_u64;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("reads output");
        assert!(line.starts_with("recorded "), "{line}");
        confirmed += 1;
        if confirmed == 150 {
            child.kill().expect("sends SIGKILL");
            break;
        }
    }
    let status = child.wait().expect("child ends");
    let sent = writer.join().expect("writer ends");
    assert_eq!(confirmed, 150);
    assert!(!status.success(), "killed, not finished: {status:?}");

    let ledger = SqliteLedger::open(&ledger_path).expect("ledger opens after the kill");
    let key = counters_at(&ledger, "ApiKey::\"key-ana-ml\"", Window::Day, started);
    assert!(
        key.requests >= confirmed,
        "{} recorded, {confirmed} confirmed",
        key.requests
    );
    assert!(
        key.requests <= sent,
        "{} recorded, {sent} sent",
        key.requests
    );
    assert_eq!(key.input_tokens, key.requests * 10);
    assert_eq!(key.output_tokens, key.requests * 5);
    for scope in [
        "User::\"ana\"",
        "Team::\"data-science\"",
        "Role::\"analyst\"",
        "Workspace::\"ml-workspace\"",
        "Organization::\"larkspur\"",
    ] {
        for window in Window::ALL {
            assert_eq!(
                counters_at(&ledger, scope, window, started),
                key,
                "{scope} {window} matches the key"
            );
        }
    }
}
