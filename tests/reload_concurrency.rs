//! Decisions racing with reloads: every decision must come from one whole policy set.
//!
//! Bundle A grants `Team::"ml"` and puts key k1 in `Team::"ml"`; bundle B renames the team
//! to `Team::"ml-platform"` in both the policy and the entity file. Both allow k1; a
//! decision that mixed A's policies with B's entities (or the reverse) would deny it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail on any unexpected state"
)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use modelgate::reload::{LiveEngine, WatchConfig};
use modelgate::{CheckRequest, Engine, Outcome, Snapshot};
use support::{wait_for_generation, write_atomic, Fixture, TIMEOUT};

const READERS: usize = 4;

fn policy(team: &str) -> String {
    format!(
        "@id(\"team-inference\")\npermit(principal in Team::\"{team}\", action in Action::\"inference\", resource);\n"
    )
}

fn entities(team: &str) -> String {
    format!(
        r#"[
  {{"uid": {{"type": "Team", "id": "{team}"}}, "attrs": {{}}, "parents": []}},
  {{"uid": {{"type": "ApiKey", "id": "k1"}}, "attrs": {{}}, "parents": [{{"type": "Team", "id": "{team}"}}]}},
  {{"uid": {{"type": "Model", "id": "mistral-small-latest"}}, "attrs": {{}}, "parents": []}}
]
"#
    )
}

/// Writes bundle A (`false`) or B (`true`): both files within a few milliseconds.
fn write_bundle(fixture: &Fixture, bundle_b: bool) {
    let team = if bundle_b { "ml-platform" } else { "ml" };
    write_atomic(&fixture.policy_file(), &policy(team));
    write_atomic(&fixture.entities.join("entities.json"), &entities(team));
}

/// Returns whether the policy file and the entity file of a snapshot name the same team.
fn is_one_bundle(snapshot: &Snapshot) -> bool {
    let teams: Vec<bool> = snapshot
        .sources()
        .iter()
        .filter(|source| !source.path.to_string_lossy().ends_with(".cedarschema"))
        .map(|source| source.text.contains("ml-platform"))
        .collect();
    teams.len() == 2 && teams.iter().all(|b_bundle| *b_bundle == teams[0])
}

struct ReaderReport {
    decisions: u64,
    wrong: Vec<String>,
    slowest: Duration,
}

/// Starts reader threads that decide k1/chat in a loop until `stop` is set.
fn spawn_readers(
    engine: &Arc<Engine>,
    stop: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<ReaderReport>> {
    (0..READERS)
        .map(|_| {
            let engine = Arc::clone(engine);
            let stop = Arc::clone(stop);
            thread::spawn(move || {
                let request =
                    CheckRequest::for_model("ApiKey::\"k1\"", "chat", "mistral-small-latest")
                        .unwrap();
                let mut report = ReaderReport {
                    decisions: 0,
                    wrong: Vec::new(),
                    slowest: Duration::ZERO,
                };
                let mut last_generation = 0;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let decision = engine.check(&request).unwrap();
                    report.slowest = report.slowest.max(started.elapsed());
                    report.decisions += 1;
                    if decision.decision != Outcome::Allow {
                        report.wrong.push(format!(
                            "generation {}: {}",
                            decision.generation, decision.explanation
                        ));
                    }
                    if decision.generation < last_generation {
                        report.wrong.push(format!(
                            "generation went back from {last_generation} to {}",
                            decision.generation
                        ));
                    }
                    last_generation = decision.generation;
                    if report.decisions.is_multiple_of(64) {
                        let snapshot = engine.snapshot();
                        if !is_one_bundle(&snapshot) {
                            report.wrong.push(format!(
                                "generation {} mixes bundles",
                                snapshot.generation()
                            ));
                        }
                    }
                }
                report
            })
        })
        .collect()
}

fn join_readers(readers: Vec<thread::JoinHandle<ReaderReport>>) -> ReaderReport {
    let mut total = ReaderReport {
        decisions: 0,
        wrong: Vec::new(),
        slowest: Duration::ZERO,
    };
    for reader in readers {
        let report = reader.join().unwrap();
        total.decisions += report.decisions;
        total.wrong.extend(report.wrong);
        total.slowest = total.slowest.max(report.slowest);
    }
    total
}

/// Scheduling slack on a busy machine: a reader may be descheduled for a while, which is
/// not blocking on a reload.
const SLACK: Duration = Duration::from_millis(500);

#[test]
fn file_swaps_never_mix_bundles() {
    let fixture = Fixture::new(&policy("ml"));
    write_bundle(&fixture, false);
    let engine = Arc::new(Engine::load(fixture.options()).unwrap());
    let config = WatchConfig::default().with_debounce(Duration::from_millis(200));
    let live = LiveEngine::start(Arc::clone(&engine), config).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let readers = spawn_readers(&engine, &stop);
    let swaps = 20;
    for swap in 1..=swaps {
        write_bundle(&fixture, swap % 2 == 1);
        assert!(
            wait_for_generation(&engine, 1 + swap, TIMEOUT),
            "swap {swap} was not reloaded"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let report = join_readers(readers);

    assert!(
        report.decisions > 1000,
        "only {} decisions",
        report.decisions
    );
    assert_eq!(report.wrong, Vec::<String>::new());
    let status = live.status();
    assert_eq!(status.engine.generation, 1 + swaps);
    assert_eq!(status.rejected_reloads, 0);
    let reload_time = status.last_reload_duration.unwrap_or_default();
    assert!(
        report.slowest < reload_time + SLACK,
        "a decision took {:?}",
        report.slowest
    );
}

#[test]
fn direct_reloads_never_mix_bundles() {
    let fixture = Fixture::new(&policy("ml"));
    write_bundle(&fixture, false);
    let engine = Arc::new(Engine::load(fixture.options()).unwrap());

    let stop = Arc::new(AtomicBool::new(false));
    let readers = spawn_readers(&engine, &stop);
    let reloader = {
        let engine = Arc::clone(&engine);
        thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            for round in 1..=1000u64 {
                write_bundle(&fixture, round % 2 == 1);
                let started = Instant::now();
                let generation = engine.reload().unwrap();
                slowest = slowest.max(started.elapsed());
                assert_eq!(generation, 1 + round);
            }
            slowest
        })
    };
    let slowest_reload = reloader.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let report = join_readers(readers);

    assert!(
        report.decisions > 1000,
        "only {} decisions",
        report.decisions
    );
    assert_eq!(report.wrong, Vec::<String>::new());
    assert_eq!(engine.status().generation, 1001);
    assert!(
        report.slowest < slowest_reload + SLACK,
        "a decision took {:?}, the slowest reload {slowest_reload:?}",
        report.slowest
    );
}
