#![allow(
    clippy::expect_used,
    reason = "a benchmark on a broken fixture should stop"
)]
//! One access check on the shipped policy set, against the raw cost of Cedar's
//! `Authorizer::is_authorized` on the same request.

use std::hint::black_box;

use cedar_policy::{Authorizer, Context, Request, RestrictedExpression};
use criterion::{criterion_group, criterion_main, Criterion};
use modelgate::{CheckRequest, Engine, LoadOptions};

const NOW: &str = "2026-12-04T12:00:00.000Z";

fn raw_context() -> Context {
    let request = RestrictedExpression::new_record([
        (
            "input_tokens".to_string(),
            RestrictedExpression::new_long(120),
        ),
        (
            "max_output_tokens".to_string(),
            RestrictedExpression::new_long(300),
        ),
        (
            "total_tokens".to_string(),
            RestrictedExpression::new_long(420),
        ),
        ("stream".to_string(), RestrictedExpression::new_bool(false)),
        (
            "estimated_cost_micro_usd".to_string(),
            RestrictedExpression::new_long(102),
        ),
    ])
    .expect("valid record");
    Context::from_pairs([
        ("now".to_string(), RestrictedExpression::new_datetime(NOW)),
        ("request".to_string(), request),
        ("usage".to_string(), zero_usage()),
    ])
    .expect("valid context")
}

/// Builds `context.usage` with every counter zero, in the schema's shape.
fn zero_usage() -> RestrictedExpression {
    let counters = || {
        RestrictedExpression::new_record(
            [
                "requests",
                "input_tokens",
                "output_tokens",
                "tokens",
                "cost_micro_usd",
            ]
            .map(|name| (name.to_string(), RestrictedExpression::new_long(0))),
        )
        .expect("valid record")
    };
    let windows = || {
        RestrictedExpression::new_record(
            ["minute", "hour", "day", "month"].map(|name| (name.to_string(), counters())),
        )
        .expect("valid record")
    };
    RestrictedExpression::new_record(
        ["key", "user", "team", "role", "workspace", "organization"]
            .map(|name| (name.to_string(), windows())),
    )
    .expect("valid record")
}

fn bench_check(c: &mut Criterion) {
    let engine = Engine::load(LoadOptions::new("policies", "schema")).expect("shipped set loads");
    let snapshot = engine.snapshot();
    let request = CheckRequest::for_model("ApiKey::\"key-ana-ml\"", "chat", "mistral-small-latest")
        .expect("valid request")
        .with_tokens(120, 300)
        .at(NOW);
    assert!(engine.check(&request).expect("decision").is_allowed());

    let authorizer = Authorizer::new();
    let schema = snapshot.cedar_schema();
    let build_raw_request = || {
        Request::new(
            request.principal.clone(),
            request.action.clone(),
            request.resource.clone(),
            raw_context(),
            Some(schema),
        )
        .expect("valid request")
    };
    let raw_request = build_raw_request();
    let raw = authorizer.is_authorized(
        &raw_request,
        snapshot.cedar_policies(),
        snapshot.cedar_entities(),
    );
    assert_eq!(raw.decision(), cedar_policy::Decision::Allow);

    let mut group = c.benchmark_group("check_shipped_set");
    group.bench_function("modelgate_check", |b| {
        b.iter(|| engine.check(black_box(&request)))
    });
    // Every request at a different millisecond, so that no check reuses the `now` value
    // of the one before it (the engine keeps one per thread).
    let distinct_now: Vec<CheckRequest> = (0..1000)
        .map(|millis| {
            request
                .clone()
                .at(format!("2026-12-04T12:00:00.{millis:03}Z"))
        })
        .collect();
    let mut next = distinct_now.iter().cycle();
    group.bench_function("modelgate_check_distinct_now", |b| {
        b.iter(|| engine.check(black_box(next.next().expect("cycle never ends"))))
    });
    group.bench_function("cedar_is_authorized", |b| {
        b.iter(|| {
            authorizer.is_authorized(
                black_box(&raw_request),
                snapshot.cedar_policies(),
                snapshot.cedar_entities(),
            )
        })
    });
    group.bench_function("cedar_request_new_and_is_authorized", |b| {
        b.iter(|| {
            let raw_request = build_raw_request();
            authorizer.is_authorized(
                &raw_request,
                snapshot.cedar_policies(),
                snapshot.cedar_entities(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench_check);
criterion_main!(benches);
