//! Atomic check-and-reserve under concurrency: threads released by a barrier race
//! reservations against a small per-key token budget, and no counter passes the limit.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test helpers stop the test on a broken fixture"
)]

use std::fs;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::thread;

use modelgate::quota::Window;
use modelgate::{
    ActualUsage, CheckRequest, Engine, EngineOptions, Ledger, LoadOptions, ManualClock,
    MemoryLedger, Outcome, ReservationId, ScopeKind, SqliteLedger, Status,
};
use serde_json::json;

const NOW: &str = "2026-12-04T12:00:00Z";

const POLICIES: &str = r#"
@id("allow-all")
@reason("every request is allowed unless a budget forbids it")
permit (principal, action, resource);

@id("k1-daily-tokens")
@reason("k1 may use at most 100,000 tokens a day")
@status("429")
@window("day")
forbid (principal == ApiKey::"k1", action, resource)
when { context.usage.key.day.tokens + context.request.total_tokens > 100000 };

@id("k-new-daily-tokens")
@reason("k-new may use at most 2,500 tokens a day")
@status("429")
@window("day")
forbid (principal == ApiKey::"k-new", action, resource)
when { context.usage.key.day.tokens + context.request.total_tokens > 2500 };
"#;

fn api_key(id: &str) -> serde_json::Value {
    json!({
        "uid": {"type": "ApiKey", "id": id},
        "attrs": {
            "created_at": {"__extn": {"fn": "datetime", "arg": "2026-01-01T00:00:00Z"}},
            "revoked": false
        },
        "parents": [{"type": "Workspace", "id": "w1"}]
    })
}

/// Writes the budget policies, two keys, a workspace and a model into a temp dir.
fn policy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("quota.cedar"), POLICIES).expect("write policies");
    fs::create_dir(dir.path().join("entities")).expect("create entities dir");
    let entities = json!([
        {"uid": {"type": "Organization", "id": "o1"}, "attrs": {"name": "o1"}, "parents": []},
        {"uid": {"type": "Workspace", "id": "w1"},
         "attrs": {"name": "w1", "purpose": "development"},
         "parents": [{"type": "Organization", "id": "o1"}]},
        api_key("k1"),
        api_key("k-new"),
        {"uid": {"type": "Model", "id": "m"},
         "attrs": {"provider": "test", "family": "test", "context_window": 100000,
                   "input_price_micro_usd_per_mtok": 1000000,
                   "output_price_micro_usd_per_mtok": 2000000,
                   "price_source": "test"},
         "parents": []}
    ]);
    fs::write(
        dir.path().join("entities/entities.json"),
        entities.to_string(),
    )
    .expect("write entities");
    dir
}

fn engine(dir: &Path, ledger: Arc<dyn Ledger>) -> Arc<Engine> {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
    let options = EngineOptions {
        clock: Arc::new(ManualClock::at(NOW).expect("valid time")),
        ledger,
        ..EngineOptions::default()
    };
    Arc::new(Engine::with_options(LoadOptions::new(dir, schema), options).expect("loads"))
}

/// Builds a request for `tokens` tokens: a fifth as input, the rest as `max_tokens`.
fn request(key: &str, tokens: u64) -> CheckRequest {
    CheckRequest::for_model(&format!("ApiKey::\"{key}\""), "chat", "m")
        .expect("valid request")
        .with_tokens(tokens / 5, tokens - tokens / 5)
}

/// Sends `per_thread` requests from each of `threads` threads at once; returns the
/// reservations made and the denials.
fn race(
    engine: &Arc<Engine>,
    key: &str,
    threads: usize,
    per_thread: usize,
) -> (Vec<ReservationId>, Vec<modelgate::Decision>) {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let engine = Arc::clone(engine);
            let barrier = Arc::clone(&barrier);
            let key = key.to_string();
            thread::spawn(move || {
                barrier.wait();
                let mut admitted = Vec::new();
                let mut denied = Vec::new();
                for _ in 0..per_thread {
                    let admission = engine
                        .check_and_reserve(&request(&key, 1_000))
                        .expect("well-formed request");
                    match admission.reservation {
                        Some(id) => admitted.push(id),
                        None => denied.push(admission.decision),
                    }
                }
                (admitted, denied)
            })
        })
        .collect();
    let mut admitted = Vec::new();
    let mut denied = Vec::new();
    for handle in handles {
        let (mut a, mut d) = handle.join().expect("thread finishes");
        admitted.append(&mut a);
        denied.append(&mut d);
    }
    (admitted, denied)
}

fn key_day_tokens(ledger: &dyn Ledger, key: &str) -> u64 {
    let now = modelgate::clock::parse_rfc3339_millis(NOW).expect("valid time");
    ledger
        .current(now)
        .expect("ledger reads")
        .into_iter()
        .find(|(bucket, _)| {
            bucket.scope == format!("ApiKey::\"{key}\"") && bucket.window == Window::Day
        })
        .map(|(_, counters)| counters.tokens())
        .unwrap_or(0)
}

#[test]
fn sixty_four_threads_admit_exactly_one_hundred() {
    let dir = policy_dir();
    let engine = engine(dir.path(), Arc::new(MemoryLedger::default()));

    let (admitted, denied) = race(&engine, "k1", 64, 4);

    assert_eq!(admitted.len(), 100, "100 x 1,000 tokens fill 100,000");
    assert_eq!(denied.len(), 64 * 4 - 100);
    assert_eq!(engine.pending_reservations(), 100);
    for decision in &denied {
        assert_eq!(decision.decision, Outcome::Deny);
        assert_eq!(decision.status, Some(Status::TooManyRequests));
        assert_eq!(decision.policy_ids(), ["k1-daily-tokens"]);
    }
}

#[test]
fn budget_with_prior_usage_admits_ten_of_twenty() {
    let dir = policy_dir();
    let ledger_dir = tempfile::tempdir().expect("temp dir");
    let ledger: Arc<dyn Ledger> =
        Arc::new(SqliteLedger::open(ledger_dir.path().join("ledger.sqlite3")).expect("opens"));
    let engine = engine(dir.path(), Arc::clone(&ledger));
    engine
        .record_usage(
            &request("k1", 0),
            ActualUsage {
                input_tokens: 90_000,
                output_tokens: 0,
            },
        )
        .expect("records prior usage");
    assert_eq!(key_day_tokens(ledger.as_ref(), "k1"), 90_000);

    let (admitted, denied) = race(&engine, "k1", 20, 1);
    assert_eq!(admitted.len(), 10, "90,000 + 10 x 1,000 = 100,000");
    assert_eq!(denied.len(), 10);
    for decision in &denied {
        assert_eq!(decision.policy_ids(), ["k1-daily-tokens"]);
        // 12:00 UTC: the day window ends in 12 hours.
        assert_eq!(decision.retry_after_secs, Some(12 * 3600));
    }

    for id in admitted {
        let recorded = engine
            .commit(
                id,
                ActualUsage {
                    input_tokens: 200,
                    output_tokens: 700,
                },
            )
            .expect("commits");
        assert_eq!(recorded.tokens(), 900);
    }
    assert_eq!(engine.pending_reservations(), 0);
    assert_eq!(key_day_tokens(ledger.as_ref(), "k1"), 99_000);

    let next = engine
        .check_and_reserve(&request("k1", 1_000))
        .expect("well-formed request");
    assert!(next.reservation.is_some(), "99,000 + 1,000 fits");
    let after = engine
        .check_and_reserve(&request("k1", 1_000))
        .expect("well-formed request");
    assert!(after.reservation.is_none(), "100,000 + 1,000 does not fit");
    assert_eq!(after.decision.policy_ids(), ["k1-daily-tokens"]);
}

#[test]
fn first_requests_without_usage_admit_two_of_eight() {
    let dir = policy_dir();
    let ledger_dir = tempfile::tempdir().expect("temp dir");
    let ledger: Arc<dyn Ledger> =
        Arc::new(SqliteLedger::open(ledger_dir.path().join("ledger.sqlite3")).expect("opens"));
    let engine = engine(dir.path(), Arc::clone(&ledger));

    let (admitted, denied) = race(&engine, "k-new", 8, 1);
    assert_eq!(
        admitted.len(),
        2,
        "2 x 1,000 fit in 2,500, a third does not"
    );
    assert_eq!(denied.len(), 6);

    for id in admitted {
        engine
            .commit(
                id,
                ActualUsage {
                    input_tokens: 200,
                    output_tokens: 800,
                },
            )
            .expect("commits");
    }
    let now = modelgate::clock::parse_rfc3339_millis(NOW).expect("valid time");
    let rows: Vec<_> = ledger
        .current(now)
        .expect("ledger reads")
        .into_iter()
        .filter(|(bucket, _)| bucket.scope == "ApiKey::\"k-new\"" && bucket.window == Window::Day)
        .collect();
    assert_eq!(rows.len(), 1, "one usage row for the key's day");
    assert_eq!(rows[0].1.requests, 2);
    assert_eq!(rows[0].1.tokens(), 2_000);
}

#[test]
fn racing_commits_and_releases_keep_counters_exact() {
    let dir = policy_dir();
    let engine = engine(dir.path(), Arc::new(MemoryLedger::default()));
    let (admitted, _) = race(&engine, "k1", 16, 4);
    assert_eq!(admitted.len(), 64);

    // Half are committed at 500 tokens, half released, from 8 threads at once.
    let chunks: Vec<Vec<ReservationId>> = admitted.chunks(8).map(<[_]>::to_vec).collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .enumerate()
        .map(|(index, ids)| {
            let engine = Arc::clone(&engine);
            thread::spawn(move || {
                for id in ids {
                    if index % 2 == 0 {
                        engine
                            .commit(
                                id,
                                ActualUsage {
                                    input_tokens: 100,
                                    output_tokens: 400,
                                },
                            )
                            .expect("commits");
                    } else {
                        engine.release(id).expect("releases");
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("thread finishes");
    }
    assert_eq!(engine.pending_reservations(), 0);
    assert_eq!(key_day_tokens(engine.ledger().as_ref(), "k1"), 32 * 500);
}

#[test]
fn usage_never_exceeds_budget_while_racing() {
    let dir = policy_dir();
    let ledger_dir = tempfile::tempdir().expect("temp dir");
    let ledger: Arc<dyn Ledger> =
        Arc::new(SqliteLedger::open(ledger_dir.path().join("ledger.sqlite3")).expect("opens"));
    let engine = engine(dir.path(), ledger);
    let principal = request("k1", 0).principal;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // A monitor reads the key's day usage (committed plus reserved) while 8 workers reserve
    // 1,000 tokens and then commit between 0 and 1,000 actual tokens, or release.
    let monitor = {
        let engine = Arc::clone(&engine);
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut highest = 0;
            let mut reads = 0_u64;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let usage = engine.usage(&principal).expect("usage reads");
                highest = highest.max(usage.get(ScopeKind::Key, Window::Day).tokens());
                reads += 1;
            }
            (highest, reads)
        })
    };
    let workers: Vec<_> = (0..8_u64)
        .map(|worker| {
            let engine = Arc::clone(&engine);
            thread::spawn(move || {
                let mut admitted = 0_u64;
                for round in 0..40_u64 {
                    let admission = engine
                        .check_and_reserve(&request("k1", 1_000))
                        .expect("well-formed request");
                    let Some(id) = admission.reservation else {
                        continue;
                    };
                    admitted += 1;
                    if (worker + round) % 4 == 0 {
                        engine.release(id).expect("releases");
                    } else {
                        let output = (worker * 37 + round * 101) % 800;
                        engine
                            .commit(
                                id,
                                ActualUsage {
                                    input_tokens: 200,
                                    output_tokens: output,
                                },
                            )
                            .expect("commits");
                    }
                }
                admitted
            })
        })
        .collect();
    let admitted: u64 = workers
        .into_iter()
        .map(|worker| worker.join().expect("worker finishes"))
        .sum();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (highest, reads) = monitor.join().expect("monitor finishes");

    assert!(
        admitted > 100,
        "actual usage below the estimate frees room: {admitted}"
    );
    assert!(reads > 0);
    assert!(highest <= 100_000, "usage reached {highest}");
    let final_usage = engine
        .usage(&request("k1", 0).principal)
        .expect("usage reads")
        .get(ScopeKind::Key, Window::Day);
    assert!(final_usage.tokens() <= 100_000, "{final_usage:?}");
    assert_eq!(engine.pending_reservations(), 0);
}
