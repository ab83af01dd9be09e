//! Reservations after admission: commit, release, expiry, errors on bad input, and
//! fail-closed behaviour when the ledger cannot be read.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test helpers stop the test on a broken fixture"
)]

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use modelgate::quota::{Bucket, LedgerEntry, LedgerError, COUNTER_MAX};
use modelgate::{
    ActualUsage, CheckRequest, Counters, Engine, EngineOptions, Ledger, LoadOptions, ManualClock,
    MemoryLedger, QuotaError, Reason, RequestError, ReservationId, ScopeKind, Status, UsageView,
    Window,
};
use serde_json::json;

const NOW: &str = "2026-12-04T12:00:00Z";

const POLICIES: &str = r#"
@id("allow-all")
@reason("every request is allowed unless a limit forbids it")
permit (principal, action, resource);

@id("key-daily-tokens")
@reason("a key may use at most 10,000 tokens a day")
@status("429")
@window("day")
forbid (principal is ApiKey, action, resource)
when { context.usage.key.day.tokens + context.request.total_tokens > 10000 };

@id("workspace-minute-requests")
@reason("a workspace accepts at most 3 requests a minute")
@status("429")
@window("minute")
forbid (principal in Workspace::"w1", action, resource)
when { context.usage.workspace.minute.requests >= 3 };
"#;

fn policy_dir(policies: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("quota.cedar"), policies).expect("write policies");
    fs::create_dir(dir.path().join("entities")).expect("create entities dir");
    let entities = json!([
        {"uid": {"type": "Organization", "id": "o1"}, "attrs": {"name": "o1"}, "parents": []},
        {"uid": {"type": "Workspace", "id": "w1"},
         "attrs": {"name": "w1", "purpose": "development"},
         "parents": [{"type": "Organization", "id": "o1"}]},
        {"uid": {"type": "ApiKey", "id": "k1"},
         "attrs": {"created_at": {"__extn": {"fn": "datetime", "arg": "2026-01-01T00:00:00Z"}},
                   "revoked": false},
         "parents": [{"type": "Workspace", "id": "w1"}]},
        {"uid": {"type": "Model", "id": "m"},
         "attrs": {"provider": "test", "family": "test", "context_window": 100000,
                   "input_price_micro_usd_per_mtok": 1000000,
                   "output_price_micro_usd_per_mtok": 3000000,
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

struct Setup {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    engine: Engine,
}

fn setup_with(ledger: Arc<dyn Ledger>) -> Setup {
    let dir = policy_dir(POLICIES);
    let clock = Arc::new(ManualClock::at(NOW).expect("valid time"));
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
    let options = EngineOptions {
        clock: Arc::clone(&clock) as Arc<dyn modelgate::Clock>,
        ledger,
        reservation_ttl: Duration::from_secs(30),
        ..EngineOptions::default()
    };
    let engine =
        Engine::with_options(LoadOptions::new(dir.path(), schema), options).expect("loads");
    Setup {
        _dir: dir,
        clock,
        engine,
    }
}

fn setup() -> Setup {
    setup_with(Arc::new(MemoryLedger::default()))
}

fn request(input: u64, output: u64) -> CheckRequest {
    CheckRequest::for_model("ApiKey::\"k1\"", "chat", "m")
        .expect("valid request")
        .with_tokens(input, output)
}

fn reserve(engine: &Engine, input: u64, output: u64) -> Option<ReservationId> {
    engine
        .check_and_reserve(&request(input, output))
        .expect("well-formed request")
        .reservation
}

#[test]
fn release_frees_the_estimate() {
    let setup = setup();
    let id = reserve(&setup.engine, 1_000, 8_000).expect("9,000 fits in 10,000");
    assert!(
        reserve(&setup.engine, 1_000, 1_000).is_none(),
        "9,000 + 2,000 does not fit"
    );

    setup.engine.release(id).expect("releases");

    assert!(reserve(&setup.engine, 1_000, 1_000).is_some());
}

#[test]
fn expired_reservation_frees_the_estimate() {
    let setup = setup();
    reserve(&setup.engine, 1_000, 8_000).expect("9,000 fits");
    assert!(reserve(&setup.engine, 1_000, 1_000).is_none());

    setup.clock.advance_millis(30_000);

    assert!(reserve(&setup.engine, 1_000, 1_000).is_some());
    assert_eq!(setup.engine.pending_reservations(), 1);
}

#[test]
fn commit_after_expiry_is_rejected() {
    let setup = setup();
    let id = reserve(&setup.engine, 10, 10).expect("fits");
    setup.clock.advance_millis(31_000);
    // Any check runs the expiry.
    reserve(&setup.engine, 10, 10).expect("fits");

    let error = setup
        .engine
        .commit(id, ActualUsage::default())
        .expect_err("expired");
    assert!(matches!(error, QuotaError::NotPending(_)));
}

#[test]
fn commit_records_cost_from_model_prices() {
    let setup = setup();
    let id = reserve(&setup.engine, 1_000, 1_000).expect("fits");
    let recorded = setup
        .engine
        .commit(
            id,
            ActualUsage {
                input_tokens: 1_000,
                output_tokens: 500,
            },
        )
        .expect("commits");
    // 1,000 x 1 + 500 x 3 micro-USD per token.
    assert_eq!(recorded.cost_micro_usd, 2_500);
    assert_eq!(recorded.requests, 1);
}

#[test]
fn estimated_cost_is_in_the_context() {
    let dir = policy_dir(
        r#"
@id("allow-all")
@reason("allowed")
permit (principal, action, resource);

@id("cost-cap")
@reason("one request may cost at most 4,000 micro-USD")
@status("403")
forbid (principal, action, resource)
when { context.request.estimated_cost_micro_usd > 4000 };
"#,
    );
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
    let engine = Engine::load(LoadOptions::new(dir.path(), schema)).expect("loads");
    // 1,000 x 1 + 1,000 x 3 = 4,000 micro-USD.
    let at_cap = engine.check(&request(1_000, 1_000)).expect("decision");
    assert!(at_cap.is_allowed());
    let above = engine.check(&request(1_000, 1_001)).expect("decision");
    assert_eq!(above.policy_ids(), ["cost-cap"]);
}

#[test]
fn commit_twice_is_rejected() {
    let setup = setup();
    let id = reserve(&setup.engine, 10, 10).expect("fits");
    setup
        .engine
        .commit(id, ActualUsage::default())
        .expect("first commit");
    let error = setup
        .engine
        .commit(id, ActualUsage::default())
        .expect_err("second commit");
    assert!(matches!(error, QuotaError::NotPending(found) if found == id));
    assert!(error.to_string().contains("is not pending"));
}

#[test]
fn commit_of_unknown_reservation_is_rejected() {
    let setup = setup();
    let error = setup
        .engine
        .commit(ReservationId(42), ActualUsage::default())
        .expect_err("unknown");
    assert!(matches!(error, QuotaError::NotPending(_)));
    let error = setup
        .engine
        .release(ReservationId(42))
        .expect_err("unknown");
    assert!(matches!(error, QuotaError::NotPending(_)));
}

#[test]
fn commit_of_huge_token_count_is_rejected() {
    let setup = setup();
    let id = reserve(&setup.engine, 10, 10).expect("fits");
    let error = setup
        .engine
        .commit(
            id,
            ActualUsage {
                input_tokens: 1 << 62,
                output_tokens: 0,
            },
        )
        .expect_err("out of range");
    assert!(matches!(
        error,
        QuotaError::TokensOutOfRange {
            field: "input_tokens",
            ..
        }
    ));
    // The reservation is still pending and can be committed with valid counts.
    setup
        .engine
        .commit(id, ActualUsage::default())
        .expect("commits");
}

#[test]
fn huge_request_is_rejected_before_evaluation() {
    let setup = setup();
    let error = setup
        .engine
        .check_and_reserve(&request(1 << 62, 0))
        .expect_err("rejected");
    assert!(matches!(error, RequestError::TokensOutOfRange { .. }));
    assert_eq!(setup.engine.pending_reservations(), 0);
}

#[test]
fn counters_at_maximum_deny_without_overflow() {
    let setup = setup();
    let mut usage = UsageView::default();
    let full = Counters {
        requests: COUNTER_MAX,
        input_tokens: COUNTER_MAX,
        output_tokens: COUNTER_MAX,
        cost_micro_usd: COUNTER_MAX,
    };
    for scope in ScopeKind::ALL {
        for window in Window::ALL {
            usage.set(scope, window, full);
        }
    }
    let decision = setup
        .engine
        .check_with_usage(&request(10_000_000, 10_000_000), &usage)
        .expect("decision");
    assert_eq!(decision.reason, Reason::Forbidden);
    assert!(decision.errors.is_empty(), "{:?}", decision.errors);
}

#[test]
fn record_for_unknown_key_is_rejected() {
    let setup = setup();
    let unknown = CheckRequest::for_model("ApiKey::\"nobody\"", "chat", "m").expect("valid");
    let error = setup
        .engine
        .record_usage(&unknown, ActualUsage::default())
        .expect_err("unknown key");
    assert!(matches!(error, QuotaError::UnknownPrincipal(_)));
}

#[test]
fn minute_limit_retry_after_counts_to_window_end() {
    let setup = setup();
    setup.clock.advance_millis(20_500);
    for _ in 0..3 {
        reserve(&setup.engine, 1, 1).expect("fits");
    }
    let admission = setup
        .engine
        .check_and_reserve(&request(1, 1))
        .expect("well-formed request");
    assert!(admission.reservation.is_none());
    assert_eq!(admission.decision.status, Some(Status::TooManyRequests));
    assert_eq!(
        admission.decision.policy_ids(),
        ["workspace-minute-requests"]
    );
    // 12:00:20.5: 39.5 seconds left, rounded up.
    assert_eq!(admission.decision.retry_after_secs, Some(40));

    setup.clock.advance_millis(40_000);
    assert!(reserve(&setup.engine, 1, 1).is_some(), "a new minute");
}

#[test]
fn day_budget_frees_at_midnight_utc() {
    let setup = setup();
    let id = reserve(&setup.engine, 5_000, 5_000).expect("fits");
    setup
        .engine
        .commit(
            id,
            ActualUsage {
                input_tokens: 5_000,
                output_tokens: 5_000,
            },
        )
        .expect("commits");
    let denied = setup
        .engine
        .check_and_reserve(&request(1, 0))
        .expect("well-formed request");
    assert_eq!(denied.decision.policy_ids(), ["key-daily-tokens"]);
    assert_eq!(denied.decision.retry_after_secs, Some(12 * 3600));

    setup.clock.advance_millis(12 * 3_600_000);
    assert!(reserve(&setup.engine, 1, 0).is_some());
}

/// A ledger whose every operation fails, as a corrupted or unreachable store would.
#[derive(Debug)]
struct BrokenLedger;

impl Ledger for BrokenLedger {
    fn read(&self, _: &Bucket) -> Result<Counters, LedgerError> {
        Err(LedgerError::Storage("disk I/O error".to_string()))
    }
    fn add(&self, _: &LedgerEntry) -> Result<(), LedgerError> {
        Err(LedgerError::Storage("disk I/O error".to_string()))
    }
    fn current(&self, _: i64) -> Result<Vec<(Bucket, Counters)>, LedgerError> {
        Err(LedgerError::Storage("disk I/O error".to_string()))
    }
    fn last_used(&self) -> Result<HashMap<String, i64>, LedgerError> {
        Err(LedgerError::Storage("disk I/O error".to_string()))
    }
    fn prune(&self, _: i64) -> Result<u64, LedgerError> {
        Err(LedgerError::Storage("disk I/O error".to_string()))
    }
}

#[test]
fn unreadable_ledger_denies_with_reason() {
    let setup = setup_with(Arc::new(BrokenLedger));
    for decision in [
        setup.engine.check(&request(1, 1)).expect("decision"),
        setup
            .engine
            .check_and_reserve(&request(1, 1))
            .expect("decision")
            .decision,
    ] {
        assert_eq!(decision.reason, Reason::UsageUnavailable);
        assert_eq!(decision.status, Some(Status::ServiceUnavailable));
        assert!(decision.explanation.contains("disk I/O error"));
    }
    assert_eq!(setup.engine.pending_reservations(), 0);
}

#[test]
fn failed_commit_keeps_reservation_pending() {
    #[derive(Debug, Default)]
    struct WriteFails(MemoryLedger);
    impl Ledger for WriteFails {
        fn read(&self, bucket: &Bucket) -> Result<Counters, LedgerError> {
            self.0.read(bucket)
        }
        fn add(&self, _: &LedgerEntry) -> Result<(), LedgerError> {
            Err(LedgerError::Locked("database is locked".to_string()))
        }
        fn current(&self, now: i64) -> Result<Vec<(Bucket, Counters)>, LedgerError> {
            self.0.current(now)
        }
        fn last_used(&self) -> Result<HashMap<String, i64>, LedgerError> {
            self.0.last_used()
        }
        fn prune(&self, now: i64) -> Result<u64, LedgerError> {
            self.0.prune(now)
        }
    }
    let setup = setup_with(Arc::new(WriteFails::default()));
    let id = reserve(&setup.engine, 1_000, 8_000).expect("fits");
    let error = setup
        .engine
        .commit(id, ActualUsage::default())
        .expect_err("write fails");
    assert!(matches!(error, QuotaError::Ledger(LedgerError::Locked(_))));
    assert_eq!(setup.engine.pending_reservations(), 1);
    // The estimate still counts.
    assert!(reserve(&setup.engine, 1_000, 1_000).is_none());
    setup.engine.release(id).expect("still pending");
}

#[test]
fn usage_reaches_policies_with_extra_context() {
    // A schema with an extra context attribute makes requests that set it take the path
    // that Cedar validates against the schema, which builds `usage` as JSON.
    let shipped = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/modelgate.cedarschema"),
    )
    .expect("read schema");
    let extended = shipped.replace(
        "  usage: ScopeUsage,\n};",
        "  usage: ScopeUsage,\n  region?: String,\n};",
    );
    assert_ne!(
        extended, shipped,
        "the schema still ends RequestContext with usage"
    );
    let schema_dir = tempfile::tempdir().expect("temp dir");
    fs::write(schema_dir.path().join("s.cedarschema"), extended).expect("write schema");
    let dir = policy_dir(
        r#"
@id("allow-all")
@reason("allowed")
permit (principal, action, resource);

@id("eu-daily-requests")
@reason("at most 2 requests a day from the EU region")
@status("429")
@window("day")
forbid (principal, action, resource)
when { context has region && context.region == "eu" && context.usage.key.day.requests >= 2 };
"#,
    );
    let engine = Engine::load(LoadOptions::new(dir.path(), schema_dir.path())).expect("loads");
    let mut request = request(10, 10).at(NOW);
    request
        .context
        .insert("region".to_string(), serde_json::json!("eu"));
    let mut usage = UsageView::default();
    usage.set(
        ScopeKind::Key,
        Window::Day,
        Counters {
            requests: 2,
            ..Counters::default()
        },
    );

    let denied = engine.check_with_usage(&request, &usage).expect("decision");
    assert_eq!(denied.policy_ids(), ["eu-daily-requests"]);
    let allowed = engine
        .check_with_usage(&request, &UsageView::default())
        .expect("decision");
    assert!(allowed.is_allowed(), "{}", allowed.explanation);
}

#[test]
fn overflowing_quota_policy_denies() {
    // 10^15 x 10^4 overflows Cedar's 64-bit integers; Cedar skips the erroring forbid, and
    // modelgate denies instead of letting the permit through.
    let dir = policy_dir(
        r#"
@id("allow-all")
@reason("allowed")
permit (principal, action, resource);

@id("scaled-budget")
@reason("a budget written with a large multiplier")
@status("429")
@window("day")
forbid (principal, action, resource)
when { context.usage.key.day.tokens * 10000 > 9000000000000000000 };
"#,
    );
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
    let engine = Engine::load(LoadOptions::new(dir.path(), schema)).expect("loads");
    let mut usage = UsageView::default();
    usage.set(
        ScopeKind::Key,
        Window::Day,
        Counters {
            input_tokens: COUNTER_MAX,
            ..Counters::default()
        },
    );

    let decision = engine
        .check_with_usage(&request(1, 1), &usage)
        .expect("decision");

    assert!(!decision.is_allowed());
    assert_eq!(decision.reason, Reason::EvaluationFailed);
    assert_eq!(decision.status, Some(Status::TooManyRequests));
    assert!(
        decision.errors[0].message.contains("overflow"),
        "{:?}",
        decision.errors
    );
}
