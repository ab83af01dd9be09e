//! Throughput of the policy test runner: cases per second on the shipped tests once the
//! policy set is loaded, and the time to load the policy set and run 1,000 cases.

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use modelgate::testing::{self, RunOptions, TestFile};
use modelgate::{Engine, LoadOptions};

fn shipped_test_files() -> Vec<TestFile> {
    let discovery = testing::discover_test_files(&[PathBuf::from("policies/tests")]);
    discovery
        .files
        .iter()
        .filter_map(|path| testing::parse_file(path).ok())
        .collect()
}

/// Builds a test file with 1,000 cases: an admin key calling mistral-small-latest with 0 to
/// 999 input tokens, all allowed.
fn thousand_cases_text() -> String {
    let tokens: Vec<String> = (0..1000).map(|n| n.to_string()).collect();
    format!(
        r#"{{"name": "bench", "fixtures": {{"now": "2026-12-04T12:00:00Z"}}, "cases": [{{
            "name": "admin call", "principal": "ApiKey::key-ada-ml",
            "model": "mistral-small-latest", "for_each": {{"input_tokens": [{}]}},
            "expect": {{"decision": "allow", "policies": ["admin-models"]}}}}]}}"#,
        tokens.join(",")
    )
}

fn run_quietly(engine: &Engine, files: Vec<TestFile>) -> usize {
    let summary = testing::run_parsed(engine, files, &RunOptions::default(), &mut |_| {});
    summary.passed + summary.failed
}

fn bench_runner(c: &mut Criterion) {
    let Ok(engine) = Engine::load(LoadOptions::new("policies", "schema")) else {
        eprintln!("cannot load the shipped policy set; run the benchmark from the repository root");
        return;
    };
    let files = shipped_test_files();
    let case_count: usize = files.iter().map(|file| file.cases.len()).sum();

    let mut group = c.benchmark_group("runner");
    group.throughput(Throughput::Elements(case_count as u64));
    group.bench_function("shipped cases after loading", |b| {
        b.iter_batched(
            || files.clone(),
            |files| run_quietly(&engine, files),
            BatchSize::SmallInput,
        );
    });

    // The same requests through `Engine::check` alone, to separate the engine's cost from
    // the runner's.
    let requests: Vec<_> = files
        .iter()
        .flat_map(|file| file.cases.iter())
        .filter_map(|case| case.request.clone().ok())
        .collect();
    group.throughput(Throughput::Elements(requests.len() as u64));
    group.bench_function("engine checks of the shipped cases", |b| {
        b.iter(|| {
            requests
                .iter()
                .filter(|request| engine.check(request).is_ok())
                .count()
        });
    });
    group.finish();

    let text = thousand_cases_text();
    let mut group = c.benchmark_group("runner");
    group.sample_size(20);
    group.throughput(Throughput::Elements(1000));
    group.bench_function("load and 1000 cases", |b| {
        b.iter(|| {
            let Ok(engine) = Engine::load(LoadOptions::new("policies", "schema")) else {
                return 0;
            };
            let Ok(file) = testing::parse_text(Path::new("bench.test.json"), &text) else {
                return 0;
            };
            run_quietly(&engine, vec![file])
        });
    });
    group.finish();
}

criterion_group!(benches, bench_runner);
criterion_main!(benches);
