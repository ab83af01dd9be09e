//! The shipped quota policies, each at its limit and one step past it, with usage given as
//! counters; and the `@window` annotation's validation.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test helpers stop the test on a broken fixture"
)]

use std::fs;
use std::path::Path;

use modelgate::{
    CheckRequest, Counters, Engine, LoadOptions, ScopeKind, Status, UsageView, Window,
};

const NOW: &str = "2026-12-04T12:00:00Z";

fn engine() -> Engine {
    Engine::load(LoadOptions::new("policies", "schema")).expect("shipped policies load")
}

fn usage(scope: ScopeKind, window: Window, counters: Counters) -> UsageView {
    let mut view = UsageView::default();
    view.set(scope, window, counters);
    view
}

fn tokens(count: u64) -> Counters {
    Counters {
        requests: 1,
        input_tokens: count,
        ..Counters::default()
    }
}

fn request(key: &str, model: &str, input: u64, output: u64) -> CheckRequest {
    CheckRequest::for_model(&format!("ApiKey::\"{key}\""), "chat", model)
        .expect("valid request")
        .with_tokens(input, output)
        .at(NOW)
}

#[test]
fn daily_token_budget_per_role() {
    let engine = engine();
    // (key, policy, budget, request tokens within the role's per-request cap)
    let cases = [
        ("key-ana-ml", "analyst-daily-tokens", 100_000, 500),
        ("key-devon-ml", "developer-daily-tokens", 500_000, 2_000),
        ("key-sam-ml", "senior-daily-tokens", 1_000_000, 4_000),
    ];
    for (key, policy, budget, size) in cases {
        let request = request(key, "mistral-small-latest", size / 2, size / 2);
        let at_limit = usage(ScopeKind::User, Window::Day, tokens(budget - size));
        let decision = engine
            .check_with_usage(&request, &at_limit)
            .expect("decision");
        assert!(decision.is_allowed(), "{key}: {}", decision.explanation);

        let past = usage(ScopeKind::User, Window::Day, tokens(budget - size + 1));
        let decision = engine.check_with_usage(&request, &past).expect("decision");
        assert_eq!(decision.policy_ids(), [policy], "{key}");
        assert_eq!(decision.status, Some(Status::TooManyRequests));
        assert_eq!(decision.retry_after_secs, Some(12 * 3600), "{key}");
    }
}

#[test]
fn admin_has_no_daily_token_budget() {
    let engine = engine();
    let request = request("key-ada-ml", "mistral-small-latest", 100, 100);
    let view = usage(ScopeKind::User, Window::Day, tokens(50_000_000));
    let decision = engine.check_with_usage(&request, &view).expect("decision");
    assert!(decision.is_allowed(), "{}", decision.explanation);
}

#[test]
fn workspace_rate_limits_per_minute() {
    let engine = engine();
    let cases = [
        (
            "key-devon-dev",
            "mistral-small-latest",
            "dev-workspace-rate",
            60,
        ),
        (
            "key-devon-ml",
            "mistral-small-latest",
            "ml-workspace-rate",
            200,
        ),
        (
            "key-support-bot-prod",
            "mistral-small-latest",
            "prod-workspace-rate",
            500,
        ),
    ];
    for (key, model, policy, limit) in cases {
        let request = request(key, model, 10, 10);
        let requests = |count| Counters {
            requests: count,
            ..Counters::default()
        };
        let below = usage(ScopeKind::Workspace, Window::Minute, requests(limit - 1));
        let decision = engine.check_with_usage(&request, &below).expect("decision");
        assert!(decision.is_allowed(), "{key}: {}", decision.explanation);

        let at = usage(ScopeKind::Workspace, Window::Minute, requests(limit));
        let decision = engine.check_with_usage(&request, &at).expect("decision");
        assert_eq!(decision.policy_ids(), [policy], "{key}");
        assert_eq!(decision.retry_after_secs, Some(60), "{key}");
    }
}

#[test]
fn workspace_monthly_budgets() {
    let engine = engine();
    // mistral-small-latest: 100 input tokens at 0.1 + 100 output at 0.3 micro-USD = 40.
    let cases = [
        ("key-devon-dev", "dev-workspace-monthly-budget", 50_000_000),
        ("key-devon-ml", "ml-workspace-monthly-budget", 500_000_000),
        (
            "key-support-bot-prod",
            "prod-workspace-monthly-budget",
            2_000_000_000,
        ),
    ];
    for (key, policy, budget) in cases {
        let request = request(key, "mistral-small-latest", 100, 100);
        let spent = |cost| Counters {
            cost_micro_usd: cost,
            ..Counters::default()
        };
        let at_limit = usage(ScopeKind::Workspace, Window::Month, spent(budget - 40));
        let decision = engine
            .check_with_usage(&request, &at_limit)
            .expect("decision");
        assert!(decision.is_allowed(), "{key}: {}", decision.explanation);

        let past = usage(ScopeKind::Workspace, Window::Month, spent(budget - 39));
        let decision = engine.check_with_usage(&request, &past).expect("decision");
        assert_eq!(decision.policy_ids(), [policy], "{key}");
        // 2026-12-04T12:00Z to 2027-01-01T00:00Z.
        assert_eq!(decision.retry_after_secs, Some((27 * 24 + 12) * 3600));
    }
}

#[test]
fn organization_hourly_spend_guard() {
    let engine = engine();
    let request = request("key-ada-ml", "mistral-large-latest", 1_000, 1_000);
    // 1,000 x 2 + 1,000 x 6 micro-USD = 8,000.
    let spent = |cost| Counters {
        cost_micro_usd: cost,
        ..Counters::default()
    };
    let at_limit = usage(
        ScopeKind::Organization,
        Window::Hour,
        spent(100_000_000 - 8_000),
    );
    let decision = engine
        .check_with_usage(&request, &at_limit)
        .expect("decision");
    assert!(decision.is_allowed(), "{}", decision.explanation);

    let past = usage(
        ScopeKind::Organization,
        Window::Hour,
        spent(100_000_000 - 7_999),
    );
    let decision = engine.check_with_usage(&request, &past).expect("decision");
    assert_eq!(decision.policy_ids(), ["organization-hourly-spend"]);
    assert_eq!(decision.retry_after_secs, Some(3600));
}

#[test]
fn forbid_403_outranks_quota_429() {
    let engine = engine();
    // Above the analyst's per-request cap and past the daily budget.
    let request = request("key-ana-ml", "mistral-small-latest", 300, 300);
    let view = usage(ScopeKind::User, Window::Day, tokens(100_000));
    let decision = engine.check_with_usage(&request, &view).expect("decision");
    assert_eq!(decision.status, Some(Status::Forbidden));
    assert_eq!(decision.retry_after_secs, None);
}

#[test]
fn invalid_window_annotation_fails_to_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(
        dir.path().join("p.cedar"),
        r#"@id("weekly")
@reason("r")
@status("429")
@window("week")
forbid (principal, action, resource) when { context.usage.key.day.requests > 1 };
"#,
    )
    .expect("write policy");
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
    let error = Engine::load(LoadOptions::new(dir.path(), schema)).expect_err("invalid window");
    let codes: Vec<&str> = error.errors().map(|d| d.code).collect();
    assert_eq!(codes, ["invalid-window"]);
}

#[test]
fn quota_policy_without_window_warns() {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(
        dir.path().join("p.cedar"),
        r#"@id("allow-all")
@reason("r")
permit (principal, action, resource);

@id("no-window")
@reason("r")
@status("429")
forbid (principal, action, resource) when { context.usage.key.day.requests > 1 };
"#,
    )
    .expect("write policy");
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
    let engine = Engine::load(LoadOptions::new(dir.path(), schema)).expect("loads with a warning");
    let codes: Vec<&str> = engine
        .snapshot()
        .warnings()
        .iter()
        .map(|d| d.code)
        .collect();
    assert_eq!(codes, ["missing-window"]);

    // The denial is still a 429, without a retry-after.
    let request = CheckRequest::for_model("ApiKey::\"k\"", "chat", "m").expect("valid request");
    let view = usage(
        ScopeKind::Key,
        Window::Day,
        Counters {
            requests: 2,
            ..Counters::default()
        },
    );
    let decision = engine.check_with_usage(&request, &view).expect("decision");
    assert_eq!(decision.status, Some(Status::TooManyRequests));
    assert_eq!(decision.retry_after_secs, None);
}
