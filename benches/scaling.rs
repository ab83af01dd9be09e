//! Decision latency and load time as the policy set grows: the shipped set plus 10, 100,
//! 1,000 and 10,000 generated per-team policies, with 10,000 users and 1,000 keys.
//!
//! Prints a table of p50/p99 latencies for modelgate's sliced `check` and for Cedar's
//! `Authorizer::is_authorized` over the whole set, load times against Cedar's own parse and
//! strict validation, and throughput with one and two threads. Criterion then measures the
//! sliced check at each size.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a benchmark on a broken fixture should stop"
)]

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cedar_policy::{Authorizer, PolicySet, Schema, ValidationMode, Validator};
use criterion::{criterion_group, criterion_main, Criterion};
use modelgate::{CheckRequest, Engine, EngineOptions, LoadOptions};
use serde_json::{json, Value};

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];
const USERS: usize = 10_000;
const KEYS: usize = 1_000;
const NOW: &str = "2026-12-04T12:00:00Z";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Writes the shipped policies and entities plus `extra` per-team policies into `dir`.
fn generate(dir: &Path, extra: usize) {
    let policies = dir.join("policies");
    fs::create_dir_all(policies.join("entities")).expect("create dirs");
    for entry in fs::read_dir(repo().join("policies")).expect("list policies") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|ext| ext == "cedar") {
            fs::copy(&path, policies.join(path.file_name().expect("file name"))).expect("copy");
        }
    }
    for entry in fs::read_dir(repo().join("policies/entities")).expect("list entities") {
        let path = entry.expect("entry").path();
        fs::copy(
            &path,
            policies
                .join("entities")
                .join(path.file_name().expect("file name")),
        )
        .expect("copy");
    }

    let mut text = String::new();
    for team in 0..extra {
        let _ = writeln!(
            text,
            "@id(\"team-{team}-codestral\")\n@reason(\"team {team} may use codestral-latest\")\n\
             permit (principal in Team::\"team-{team}\", action in Action::\"inference\", resource == Model::\"codestral-latest\")\n\
             when {{ context.request.total_tokens <= {} }};\n",
            1_000 + team % 7 * 100
        );
    }
    fs::write(policies.join("generated.cedar"), text).expect("write policies");

    let teams = extra.max(1);
    let mut entities: Vec<Value> = (0..teams)
        .map(|team| {
            json!({"uid": {"type": "Team", "id": format!("team-{team}")}, "attrs": {"name": format!("team {team}")},
                   "parents": [{"type": "Organization", "id": "larkspur"}]})
        })
        .collect();
    for user in 0..USERS {
        entities.push(json!({
            "uid": {"type": "User", "id": format!("user-{user}")},
            "attrs": {"email": format!("user-{user}@larkspur.example"), "name": format!("user {user}")},
            "parents": [{"type": "Role", "id": "analyst"}, {"type": "Team", "id": format!("team-{}", user % teams)},
                        {"type": "Organization", "id": "larkspur"}]
        }));
    }
    for key in 0..KEYS {
        entities.push(json!({
            "uid": {"type": "ApiKey", "id": format!("key-{key}")},
            "attrs": {"created_at": "2026-01-01T00:00:00Z", "revoked": false},
            "parents": [{"type": "User", "id": format!("user-{}", key * 10)}, {"type": "Workspace", "id": "ml-workspace"}]
        }));
    }
    fs::write(
        policies.join("entities/generated.json"),
        Value::Array(entities).to_string(),
    )
    .expect("write entities");
}

fn request(key: usize) -> CheckRequest {
    CheckRequest::for_model(
        &format!("ApiKey::\"key-{key}\""),
        "chat",
        "codestral-latest",
    )
    .expect("valid request")
    .with_tokens(200, 600)
    .at(NOW)
}

fn percentile(sorted: &[Duration], share: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * share).round() as usize;
    sorted[index]
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn load_engine(dir: &Path, slicing: bool) -> Engine {
    let options = EngineOptions {
        policy_slicing: slicing,
        ..EngineOptions::default()
    };
    Engine::with_options(
        LoadOptions::new(dir.join("policies"), repo().join("schema")),
        options,
    )
    .expect("generated set loads")
}

/// Cedar's own cost for the same files: parse every policy file, validate strictly and parse
/// the entity files with the schema.
fn cedar_parse_and_validate(dir: &Path) -> Duration {
    let schema_text =
        fs::read_to_string(repo().join("schema/modelgate.cedarschema")).expect("schema");
    let mut texts = Vec::new();
    for entry in fs::read_dir(dir.join("policies")).expect("list") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|ext| ext == "cedar") {
            texts.push(fs::read_to_string(path).expect("read"));
        }
    }
    let entity_texts: Vec<String> = fs::read_dir(dir.join("policies/entities"))
        .expect("list entities")
        .map(|entry| fs::read_to_string(entry.expect("entry").path()).expect("read"))
        .collect();
    let started = Instant::now();
    let (schema, _) = Schema::from_cedarschema_str(&schema_text).expect("schema parses");
    let mut all = PolicySet::new();
    for (file, text) in texts.iter().enumerate() {
        let set = PolicySet::from_str(text).expect("policies parse");
        for policy in set.policies() {
            let id = cedar_policy::PolicyId::new(format!("f{file}-{}", policy.id()));
            all.add(policy.new_id(id)).expect("unique id");
        }
    }
    let result = Validator::new(schema.clone()).validate(&all, ValidationMode::Strict);
    assert!(result.validation_passed());
    for text in &entity_texts {
        let entities =
            cedar_policy::Entities::from_json_str(text, Some(&schema)).expect("entities parse");
        std::hint::black_box(entities);
    }
    started.elapsed()
}

fn median_of<F: FnMut() -> Duration>(runs: usize, mut f: F) -> Duration {
    let mut times: Vec<Duration> = (0..runs).map(|_| f()).collect();
    times.sort();
    times[runs / 2]
}

fn report() {
    println!("| extra policies | check p50 | check p99 | raw Cedar p50 | raw Cedar p99 | raw/check (p50) | load | Cedar parse, validate and entities | load ratio |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut p50_at_10 = None;
    for extra in SIZES {
        let dir = tempfile::tempdir().expect("temp dir");
        generate(dir.path(), extra);

        let load = median_of(3, || {
            let started = Instant::now();
            let engine = load_engine(dir.path(), true);
            let elapsed = started.elapsed();
            drop(engine);
            elapsed
        });
        let cedar_load = median_of(3, || cedar_parse_and_validate(dir.path()));

        let sliced = load_engine(dir.path(), true);
        let unsliced = load_engine(dir.path(), false);
        // Decisions must agree before they are timed.
        for key in (0..KEYS).step_by(97) {
            let a = sliced.check(&request(key)).expect("decision");
            let b = unsliced.check(&request(key)).expect("decision");
            assert_eq!((a.decision, a.policy_ids()), (b.decision, b.policy_ids()));
        }

        let mut times = Vec::new();
        for round in 0..5_000 {
            let request = request(round * 7 % KEYS);
            let started = Instant::now();
            let decision = sliced.check(&request).expect("decision");
            times.push(started.elapsed());
            std::hint::black_box(decision);
        }
        times.sort();
        let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
        p50_at_10.get_or_insert(p50);

        let snapshot = unsliced.snapshot();
        let authorizer = Authorizer::new();
        let raw_rounds = if extra >= 10_000 {
            60
        } else if extra >= 1_000 {
            300
        } else {
            2_000
        };
        let mut raw_times = Vec::new();
        for round in 0..raw_rounds {
            let request = request(round * 7 % KEYS);
            let cedar_request = cedar_policy::Request::new(
                request.principal.clone(),
                request.action.clone(),
                request.resource.clone(),
                context(),
                None,
            )
            .expect("valid request");
            let started = Instant::now();
            let response = authorizer.is_authorized(
                &cedar_request,
                snapshot.cedar_policies(),
                snapshot.cedar_entities(),
            );
            raw_times.push(started.elapsed());
            std::hint::black_box(response);
        }
        raw_times.sort();
        let (raw50, raw99) = (percentile(&raw_times, 0.5), percentile(&raw_times, 0.99));
        println!(
            "| {extra} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {:.1}x | {:.0} ms | {:.0} ms | {:.2}x |",
            micros(p50),
            micros(p99),
            micros(raw50),
            micros(raw99),
            raw50.as_secs_f64() / p50.as_secs_f64(),
            load.as_secs_f64() * 1e3,
            cedar_load.as_secs_f64() * 1e3,
            load.as_secs_f64() / cedar_load.as_secs_f64(),
        );
        if extra == 10_000 {
            if let Some(base) = p50_at_10 {
                println!(
                    "\np50 at 10,000 extra policies / p50 at 10: {:.2}x",
                    p50.as_secs_f64() / base.as_secs_f64()
                );
            }
            inline_entity_checks(&sliced);
            throughput(Arc::new(sliced));
        }
    }
}

/// Checks with a key that the request carries as an inline entity, against copying the
/// whole entity store and merging the key into it (what a check did before it built a store
/// of the reachable entities).
fn inline_entity_checks(engine: &Engine) {
    let snapshot = engine.snapshot();
    let inline = |key: usize| {
        json!({
            "uid": {"type": "ApiKey", "id": "key-inline"},
            "attrs": {"created_at": "2026-01-01T00:00:00Z", "revoked": false},
            "parents": [{"type": "User", "id": format!("user-{}", key * 10)}, {"type": "Workspace", "id": "ml-workspace"}]
        })
    };
    let inline_request = |key: usize| {
        let mut request =
            CheckRequest::for_model("ApiKey::\"key-inline\"", "chat", "codestral-latest")
                .expect("valid request")
                .with_tokens(200, 600)
                .at(NOW);
        request.entities = vec![inline(key)];
        request
    };
    // The inline key has the same owner and attributes as `key`, so the same outcome.
    for key in (0..KEYS).step_by(97) {
        let decision = engine.check(&inline_request(key)).expect("decision");
        let stored = engine.check(&request(key)).expect("decision");
        assert_eq!(decision.decision, stored.decision);
    }

    // The copies are timed apart from the checks, so that copying 21,000 entities does not
    // push the checks' data out of the processor caches.
    let mut check_times = Vec::new();
    for round in 0..2_000 {
        let request = inline_request(round * 7 % KEYS);
        let started = Instant::now();
        let decision = engine.check(&request).expect("decision");
        check_times.push(started.elapsed());
        std::hint::black_box(decision);
    }
    let mut copy_times = Vec::new();
    for round in 0..50 {
        let started = Instant::now();
        let entity = cedar_policy::Entity::from_json_value(
            inline(round * 7 % KEYS),
            Some(snapshot.cedar_schema()),
        )
        .expect("valid entity");
        let merged = snapshot
            .cedar_entities()
            .clone()
            .upsert_entities([entity], Some(snapshot.cedar_schema()))
            .expect("merges");
        copy_times.push(started.elapsed());
        std::hint::black_box(merged);
    }
    check_times.sort();
    copy_times.sort();
    println!(
        "check with an inline key at 10,000 extra policies: p50 {:.1} µs; copying the store and merging the key alone: p50 {:.1} µs",
        micros(percentile(&check_times, 0.5)),
        micros(percentile(&copy_times, 0.5)),
    );
}

fn context() -> cedar_policy::Context {
    use cedar_policy::RestrictedExpression as E;
    let facts = E::new_record([
        ("input_tokens".to_string(), E::new_long(200)),
        ("max_output_tokens".to_string(), E::new_long(600)),
        ("total_tokens".to_string(), E::new_long(800)),
        ("stream".to_string(), E::new_bool(false)),
    ])
    .expect("record");
    cedar_policy::Context::from_pairs([
        ("now".to_string(), E::new_datetime(NOW)),
        ("request".to_string(), facts),
    ])
    .expect("context")
}

fn throughput(engine: Arc<Engine>) {
    const PER_THREAD: usize = 40_000;
    let run = |threads: usize| {
        let started = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let engine = Arc::clone(&engine);
                std::thread::spawn(move || {
                    let mut allowed = 0;
                    for round in 0..PER_THREAD {
                        let request = request((round * 13 + thread) % KEYS);
                        allowed += usize::from(
                            engine
                                .check(&request)
                                .map(|d| d.is_allowed())
                                .unwrap_or(false),
                        );
                    }
                    allowed
                })
            })
            .collect();
        let allowed: usize = handles.into_iter().map(|h| h.join().expect("thread")).sum();
        std::hint::black_box(allowed);
        (threads * PER_THREAD) as f64 / started.elapsed().as_secs_f64()
    };
    let one = run(1);
    let two = run(2);
    println!(
        "throughput at 10,000 extra policies: 1 thread {one:.0} checks/s, 2 threads {two:.0} checks/s ({:.2}x)",
        two / one
    );
}

fn bench_sizes(c: &mut Criterion) {
    report();
    let mut group = c.benchmark_group("check_with_extra_policies");
    group.sample_size(30);
    for extra in SIZES {
        let dir = tempfile::tempdir().expect("temp dir");
        generate(dir.path(), extra);
        let engine = load_engine(dir.path(), true);
        let request = request(123);
        group.bench_function(format!("{extra}"), |b| b.iter(|| engine.check(&request)));
    }
    group.finish();
}

criterion_group!(benches, bench_sizes);
criterion_main!(benches);
