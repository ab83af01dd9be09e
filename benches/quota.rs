#![allow(
    clippy::expect_used,
    reason = "a benchmark on a broken fixture should stop"
)]
//! Check-and-reserve against a plain check on the shipped policy set, and the throughput of
//! durable commits to the SQLite ledger (WAL journal, `synchronous=FULL`).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use modelgate::quota::LedgerEntry;
use modelgate::{CheckRequest, Counters, Engine, Ledger, LoadOptions, SqliteLedger};

const NOW: &str = "2026-12-04T12:00:00.000Z";

fn bench_reserve(c: &mut Criterion) {
    let engine = Engine::load(LoadOptions::new("policies", "schema")).expect("shipped set loads");
    let request = CheckRequest::for_model("ApiKey::\"key-ana-ml\"", "chat", "mistral-small-latest")
        .expect("valid request")
        .with_tokens(120, 300)
        .at(NOW);
    assert!(engine.check(&request).expect("decision").is_allowed());

    let mut group = c.benchmark_group("quota_shipped_set");
    group.bench_function("check", |b| b.iter(|| engine.check(black_box(&request))));
    // Each reservation is released at once, so that the counters stay below the limits and
    // every iteration takes the allow path.
    group.bench_function("check_and_reserve_then_release", |b| {
        b.iter(|| {
            let admission = engine
                .check_and_reserve(black_box(&request))
                .expect("well-formed request");
            if let Some(id) = admission.reservation {
                engine.release(id).expect("pending");
            }
        })
    });
    group.finish();
}

fn bench_ledger(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger: Arc<dyn Ledger> =
        Arc::new(SqliteLedger::open(dir.path().join("bench.sqlite3")).expect("opens"));
    // The six scopes of a user's key, as a commit writes them: 24 counter rows and the key's
    // last use, in one transaction.
    let entry = LedgerEntry {
        scopes: [
            "ApiKey::\"key-ana-ml\"",
            "User::\"ana\"",
            "Team::\"data-science\"",
            "Role::\"analyst\"",
            "Workspace::\"ml-workspace\"",
            "Organization::\"larkspur\"",
        ]
        .map(str::to_string)
        .to_vec(),
        key: Some("ApiKey::\"key-ana-ml\"".to_string()),
        at_millis: modelgate::clock::parse_rfc3339_millis(NOW).expect("valid time"),
        usage: Counters {
            requests: 1,
            input_tokens: 120,
            output_tokens: 300,
            cost_micro_usd: 102,
        },
    };
    let mut group = c.benchmark_group("quota_ledger");
    group.sample_size(20);
    group.bench_function("sqlite_add_wal_synchronous_full", |b| {
        b.iter(|| ledger.add(black_box(&entry)).expect("adds"))
    });
    group.finish();
}

criterion_group!(benches, bench_reserve, bench_ledger);
criterion_main!(benches);
