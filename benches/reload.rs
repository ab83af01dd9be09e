//! Reload time for generated policy sets of 10, 1,000 and 10,000 policies, and decision
//! latency (p50, p99) with and without reloads running on another thread.
//!
//! Run with `cargo bench --bench reload`. The latency part is a plain timing loop that
//! prints its percentiles after the criterion groups.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark fails loudly on a broken fixture"
)]

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion};
use modelgate::{CheckRequest, Engine, LoadOptions};

const SCHEMA: &str = r#"
entity Team;
entity ApiKey in [Team];
entity Model;
type RequestFacts = {
  input_tokens: Long,
  max_output_tokens: Long,
  total_tokens: Long,
  stream: Bool,
};
type RequestContext = { now: datetime, request: RequestFacts };
action inference;
action chat, embed in [inference] appliesTo {
  principal: [ApiKey],
  resource: [Model],
  context: RequestContext,
};
"#;

const TEAMS: usize = 100;

/// Writes a policy set of `count` policies (one forbid in seven), 100 teams with one key
/// each, and one model, spread over files of at most 100 policies.
fn write_policy_set(dir: &Path, count: usize) -> LoadOptions {
    let policies = dir.join("policies");
    let schema = dir.join("schema");
    let entities = dir.join("entities");
    for path in [&policies, &schema, &entities] {
        fs::create_dir_all(path).unwrap();
    }
    fs::write(schema.join("bench.cedarschema"), SCHEMA).unwrap();

    let mut file_text = String::new();
    for index in 0..count {
        let team = index % TEAMS;
        if index % 7 == 6 {
            writeln!(
                file_text,
                "@id(\"p{index}\")\nforbid(principal in Team::\"t{team}\", action == Action::\"embed\", resource)\n  when {{ context.request.total_tokens > {} }};",
                100_000 + index
            )
            .unwrap();
        } else {
            writeln!(
                file_text,
                "@id(\"p{index}\")\npermit(principal in Team::\"t{team}\", action in Action::\"inference\", resource)\n  when {{ context.request.total_tokens <= {} }};",
                1_000 + index
            )
            .unwrap();
        }
        if index % 100 == 99 || index + 1 == count {
            fs::write(
                policies.join(format!("p{:05}.cedar", index / 100)),
                &file_text,
            )
            .unwrap();
            file_text.clear();
        }
    }

    let mut items = Vec::new();
    for team in 0..TEAMS {
        items.push(format!(
            r#"{{"uid": {{"type": "Team", "id": "t{team}"}}, "attrs": {{}}, "parents": []}}"#
        ));
        items.push(format!(
            r#"{{"uid": {{"type": "ApiKey", "id": "k{team}"}}, "attrs": {{}}, "parents": [{{"type": "Team", "id": "t{team}"}}]}}"#
        ));
    }
    items.push(r#"{"uid": {"type": "Model", "id": "m"}, "attrs": {}, "parents": []}"#.to_string());
    fs::write(
        entities.join("entities.json"),
        format!("[{}]", items.join(",\n")),
    )
    .unwrap();

    LoadOptions::new(&policies, &schema).with_entities(vec![entities])
}

fn reload_time(c: &mut Criterion) {
    let mut group = c.benchmark_group("reload");
    group.sample_size(10);
    for count in [10, 1_000, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::load(write_policy_set(dir.path(), count)).unwrap();
        group.bench_with_input(BenchmarkId::from_parameter(count), &engine, |b, engine| {
            b.iter(|| engine.reload().unwrap());
        });
    }
    group.finish();
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let last = sorted.len().saturating_sub(1);
    let index = ((last as f64) * fraction).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

/// Times `decisions` single decisions, optionally while another thread reloads in a loop.
fn decision_latency(
    engine: &Arc<Engine>,
    decisions: usize,
    with_reloads: bool,
) -> (Vec<Duration>, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let reloader = with_reloads.then(|| {
        let engine = Arc::clone(engine);
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut reloads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                engine.reload().unwrap();
                reloads += 1;
            }
            reloads
        })
    });

    let requests: Vec<CheckRequest> = (0..TEAMS)
        .map(|team| {
            CheckRequest::for_model(&format!("ApiKey::\"k{team}\""), "chat", "m")
                .unwrap()
                .with_tokens(100, 400)
        })
        .collect();
    let mut durations = Vec::with_capacity(decisions);
    for index in 0..decisions {
        let request = &requests[index % requests.len()];
        let started = Instant::now();
        let decision = engine.check(request).unwrap();
        durations.push(started.elapsed());
        assert!(decision.is_allowed(), "{}", decision.explanation);
    }
    stop.store(true, Ordering::Relaxed);
    let reloads = reloader.map(|thread| thread.join().unwrap()).unwrap_or(0);
    durations.sort();
    (durations, reloads)
}

fn print_decision_latency() {
    let count = 1_000;
    let decisions = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::load(write_policy_set(dir.path(), count)).unwrap());
    // Warm up caches and the allocator before measuring.
    decision_latency(&engine, 2_000, false);

    for with_reloads in [false, true] {
        let (durations, reloads) = decision_latency(&engine, decisions, with_reloads);
        let label = if with_reloads {
            "with reloads"
        } else {
            "without reloads"
        };
        println!(
            "decision latency, {count} policies, {decisions} decisions, {label}: p50 {:?}, p99 {:?}, max {:?} ({reloads} reloads meanwhile)",
            percentile(&durations, 0.50),
            percentile(&durations, 0.99),
            durations.last().copied().unwrap_or_default(),
        );
    }
}

criterion_group!(benches, reload_time);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    print_decision_latency();
}
