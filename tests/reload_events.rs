//! Hot reload on real file operations in a temporary directory: editor saves, ConfigMap
//! symlink swaps, chunked writes, bursts, new and removed files and directories, invalid
//! edits and polling mode.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail on any unexpected state"
)]

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use modelgate::reload::{ReloadEvent, WatchConfig};
use modelgate::{CheckRequest, Outcome};
use support::{
    decide, settle, wait_for_attempts, wait_for_generation, write_atomic, Fixture, DEBOUNCE,
    TIMEOUT, V1, V2,
};

/// A policy file that keeps the set non-empty when `policies.cedar` is emptied.
const EMBED: &str =
    "@id(\"embed-allowed\")\npermit(principal, action == Action::\"embed\", resource);\n";

/// Saves like vim with `backupcopy=no`: write a swap file, move the original to a backup,
/// move the new file in place, delete the backup.
fn save_by_backup_rename(path: &Path, text: &str) {
    let dir = path.parent().unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let swap = dir.join(format!(".{name}.swp"));
    let backup = dir.join(format!("{name}~"));
    fs::write(&swap, text).unwrap();
    fs::rename(path, &backup).unwrap();
    fs::rename(&swap, path).unwrap();
    fs::remove_file(&backup).unwrap();
}

fn error_codes(live: &modelgate::LiveEngine) -> Vec<&'static str> {
    live.status()
        .engine
        .last_error
        .map(|error| error.errors().map(|d| d.code).collect())
        .unwrap_or_default()
}

#[test]
fn rename_saves_each_reload_once() {
    let fixture = Fixture::new(V1);
    let live = fixture.start();
    let engine = live.engine();
    assert_eq!(decide(engine, "k2"), Outcome::Allow);

    let versions = [V2, V1, V2, V1, V2];
    for (index, text) in versions.into_iter().enumerate() {
        let generation = 2 + index as u64;
        save_by_backup_rename(&fixture.policy_file(), text);
        assert!(
            wait_for_generation(engine, generation, TIMEOUT),
            "save {} was not reloaded",
            index + 1
        );
        let expected = if text == V2 {
            Outcome::Deny
        } else {
            Outcome::Allow
        };
        assert_eq!(decide(engine, "k2"), expected, "after save {}", index + 1);
    }

    settle(3);
    assert_eq!(live.status().engine.generation, 6, "one reload per save");
    assert_eq!(live.status().rejected_reloads, 0);
}

#[test]
fn vim_saves_reload() {
    if Command::new("vim").arg("--version").output().is_err() {
        eprintln!("vim is not installed; skipping");
        return;
    }
    let fixture = Fixture::new(V1);
    let live = fixture.start();
    let engine = live.engine();
    let sources = fixture.dir.path().join("sources");
    fs::create_dir(&sources).unwrap();

    for (index, text) in [V2, V1].into_iter().enumerate() {
        let source = sources.join(format!("v{index}.cedar"));
        fs::write(&source, text).unwrap();
        let status = Command::new("vim")
            .args([
                "-u",
                "NONE",
                "-N",
                "-es",
                "-c",
                "set backupcopy=no writebackup",
            ])
            .args(["-c", "%d", "-c"])
            .arg(format!("0r {}", source.display()))
            .args(["-c", "wq"])
            .arg(fixture.policy_file())
            .status()
            .unwrap();
        assert!(status.success(), "vim failed: {status}");

        assert!(
            wait_for_generation(engine, 2 + index as u64, TIMEOUT),
            "vim save {} was not reloaded",
            index + 1
        );
        let expected = if text == V2 {
            Outcome::Deny
        } else {
            Outcome::Allow
        };
        assert_eq!(decide(engine, "k2"), expected);
    }
}

/// Lays out a policy directory like a Kubernetes ConfigMap volume: the data in a hidden
/// timestamped directory, `..data` pointing at it, and the visible file a symlink through
/// `..data`.
fn configmap_publish(dir: &Path, version: &str, text: &str) {
    let data = dir.join(version);
    fs::create_dir(&data).unwrap();
    fs::write(data.join("policies.cedar"), text).unwrap();
    let old_target = fs::read_link(dir.join("..data")).ok();
    let temporary_link = dir.join("..data_tmp");
    symlink(version, &temporary_link).unwrap();
    fs::rename(&temporary_link, dir.join("..data")).unwrap();
    if let Some(old) = old_target {
        fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

#[test]
fn configmap_symlink_swap_reloads() {
    let fixture = Fixture::new(V1);
    let policies = &fixture.policies;
    fs::remove_file(fixture.policy_file()).unwrap();
    configmap_publish(policies, "..2026_01_01_00_00_00.000000001", V1);
    symlink("..data/policies.cedar", fixture.policy_file()).unwrap();

    let live = fixture.start();
    let engine = live.engine();
    assert_eq!(decide(engine, "k2"), Outcome::Allow);

    configmap_publish(policies, "..2026_01_01_00_01_00.000000002", V2);
    assert!(
        wait_for_generation(engine, 2, TIMEOUT),
        "first swap not reloaded"
    );
    assert_eq!(decide(engine, "k2"), Outcome::Deny);

    configmap_publish(policies, "..2026_01_01_00_02_00.000000003", V1);
    assert!(
        wait_for_generation(engine, 3, TIMEOUT),
        "second swap not reloaded"
    );
    assert_eq!(decide(engine, "k2"), Outcome::Allow);
    assert_eq!(live.status().rejected_reloads, 0);
}

#[test]
fn chunked_write_never_activates_cut_state() {
    let fixture = Fixture::new(V1);
    let live = fixture.start();
    let engine = Arc::clone(live.engine());

    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let engine = Arc::clone(&engine);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let k1 =
                CheckRequest::for_model("ApiKey::\"k1\"", "chat", "mistral-small-latest").unwrap();
            let mut violations = Vec::new();
            let mut probes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let snapshot = engine.snapshot();
                let decision = engine.check_on(&snapshot, &k1).unwrap();
                if decision.decision == Outcome::Allow {
                    violations.push(format!("k1 allowed at generation {}", decision.generation));
                }
                let count = snapshot.policy_count();
                if count != 2 && count != 3 {
                    violations.push(format!("{count} policies active"));
                }
                probes += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            (probes, violations)
        })
    };

    // Truncate, then write the text up to the first forbid, then the rest, with pauses
    // longer than the debounce period, keeping the file open throughout.
    let cut = V2.find("@id(\"k1-blocked\")").unwrap();
    let mut file = fs::File::create(fixture.policy_file()).unwrap();
    std::thread::sleep(DEBOUNCE * 2);
    file.write_all(&V2.as_bytes()[..cut]).unwrap();
    file.flush().unwrap();
    std::thread::sleep(DEBOUNCE * 2);
    file.write_all(&V2.as_bytes()[cut..]).unwrap();
    drop(file);

    assert!(
        wait_for_generation(&engine, 2, TIMEOUT),
        "final write not reloaded"
    );
    settle(3);
    stop.store(true, Ordering::Relaxed);
    let (probes, violations) = prober.join().unwrap();

    assert!(probes > 10, "only {probes} probes ran");
    assert_eq!(violations, Vec::<String>::new());
    let status = live.status();
    assert_eq!(status.engine.generation, 2);
    assert_eq!(
        status.reload_attempts, 2,
        "the check at start plus one reload"
    );
    assert_eq!(status.engine.policy_count, 3);
    assert_eq!(decide(&engine, "k2"), Outcome::Deny);
}

#[test]
fn emptied_file_is_rejected_until_rewritten() {
    let fixture = Fixture::new(V1);
    fs::write(fixture.policies.join("embed.cedar"), EMBED).unwrap();
    let live = fixture.start();
    let engine = live.engine();

    fs::File::create(fixture.policy_file()).unwrap();
    assert!(
        wait_for_attempts(&live, 2, TIMEOUT),
        "truncation not noticed"
    );
    let status = live.status();
    assert_eq!(status.engine.generation, 1);
    assert_eq!(status.rejected_reloads, 1);
    let error = status.engine.last_error.expect("no error reported");
    let diagnostic = error.errors().next().unwrap();
    assert_eq!(diagnostic.code, "emptied-file");
    assert!(
        diagnostic
            .message
            .contains("now empty but had content in the policy set in use"),
        "{}",
        diagnostic.message
    );
    assert_eq!(
        diagnostic.file.as_deref(),
        Some(fixture.policy_file().as_path())
    );
    assert_eq!(diagnostic.location.map(|l| l.line), Some(1));
    assert_eq!(decide(engine, "k1"), Outcome::Deny, "V1 still in use");
    assert_eq!(decide(engine, "k2"), Outcome::Allow, "V1 still in use");

    fs::write(fixture.policy_file(), V2).unwrap();
    assert!(
        wait_for_generation(engine, 2, TIMEOUT),
        "rewrite not reloaded"
    );
    assert_eq!(decide(engine, "k2"), Outcome::Deny);
    assert!(live.status().engine.last_error.is_none());
}

#[test]
fn emptied_only_file_is_rejected() {
    let fixture = Fixture::new(V1);
    let live = fixture.start();
    fs::File::create(fixture.policy_file()).unwrap();
    assert!(
        wait_for_attempts(&live, 2, TIMEOUT),
        "truncation not noticed"
    );
    assert_eq!(error_codes(&live), ["empty-policy-set"]);
    assert_eq!(live.status().engine.generation, 1);
    assert_eq!(decide(live.engine(), "k2"), Outcome::Allow);
}

#[test]
fn save_all_burst_is_one_reload() {
    let fixture = Fixture::new(V1);
    let (live, events) = fixture.start_observed();
    let engine = live.engine();
    let moderation =
        CheckRequest::for_model("ApiKey::\"k3\"", "moderation", "mistral-small-latest").unwrap();
    assert!(
        engine.check(&moderation).is_err(),
        "unknown action before the change"
    );

    let schema = support::SCHEMA.replace("action chat, embed", "action chat, embed, moderation");
    let entities = support::ENTITIES.replace(
        "[\n",
        "[\n  {\"uid\": {\"type\": \"ApiKey\", \"id\": \"k3\"}, \"attrs\": {}, \"parents\": []},\n",
    );
    let policies = format!("{V2}@id(\"moderation-allowed\")\npermit(principal, action == Action::\"moderation\", resource);\n");
    write_atomic(&fixture.policy_file(), &policies);
    write_atomic(&fixture.entities.join("entities.json"), &entities);
    write_atomic(&fixture.schema.join("schema.cedarschema"), &schema);

    assert!(
        wait_for_generation(engine, 2, TIMEOUT),
        "save all not reloaded"
    );
    settle(4);
    let status = live.status();
    assert_eq!(
        status.engine.generation, 2,
        "one reload for the three files"
    );
    assert_eq!(
        status.reload_attempts, 2,
        "the check at start plus one reload"
    );
    assert_eq!(status.engine.policy_count, 4);
    assert!(engine.check(&moderation).unwrap().is_allowed());

    let reloaded: Vec<ReloadEvent> = events
        .try_iter()
        .filter(|event| matches!(event, ReloadEvent::Reloaded(_)))
        .collect();
    assert_eq!(reloaded.len(), 1);
    let ReloadEvent::Reloaded(summary) = &reloaded[0] else {
        panic!("not a reload: {:?}", reloaded[0]);
    };
    assert!(summary.changed.schema, "schema change not reported");
    assert!(summary.changed.policies, "policy change not reported");
    assert!(summary.changed.entities, "entity change not reported");
}

#[test]
fn new_subdirectory_is_loaded() {
    let fixture = Fixture::new(V1);
    let live = fixture.start();
    let engine = live.engine();

    let team = fixture.policies.join("team");
    fs::create_dir(&team).unwrap();
    write_atomic(
        &team.join("k2.cedar"),
        "@id(\"k2-blocked\")\nforbid(principal == ApiKey::\"k2\", action, resource);\n",
    );
    assert!(wait_until_policies(&live, 3), "new subdirectory not loaded");
    assert_eq!(decide(engine, "k2"), Outcome::Deny);

    // The new directory is watched too.
    fs::remove_file(team.join("k2.cedar")).unwrap();
    assert!(
        wait_until_policies(&live, 2),
        "removal in new subdirectory not seen"
    );
    assert_eq!(decide(engine, "k2"), Outcome::Allow);
}

fn wait_until_policies(live: &modelgate::LiveEngine, count: usize) -> bool {
    support::wait_until(TIMEOUT, || live.status().engine.policy_count == count)
}

#[test]
fn deleted_file_is_unloaded() {
    let fixture = Fixture::new(V1);
    let blocker = fixture.policies.join("k2.cedar");
    fs::write(
        &blocker,
        "@id(\"k2-blocked\")\nforbid(principal == ApiKey::\"k2\", action, resource);\n",
    )
    .unwrap();
    let live = fixture.start();
    let engine = live.engine();
    assert_eq!(decide(engine, "k2"), Outcome::Deny);

    fs::remove_file(&blocker).unwrap();
    assert!(
        wait_for_generation(engine, 2, TIMEOUT),
        "deletion not reloaded"
    );
    assert_eq!(decide(engine, "k2"), Outcome::Allow);
    assert_eq!(live.status().engine.policy_count, 2);
}

#[test]
fn removed_directory_keeps_set_until_recreated() {
    let fixture = Fixture::new(V1);
    let live = fixture.start();
    let engine = live.engine();

    fs::remove_dir_all(&fixture.policies).unwrap();
    assert!(wait_for_attempts(&live, 2, TIMEOUT), "removal not noticed");
    assert_eq!(error_codes(&live), ["missing-path"]);
    assert_eq!(live.status().engine.generation, 1);
    assert_eq!(decide(engine, "k2"), Outcome::Allow, "V1 still in use");

    fs::create_dir(&fixture.policies).unwrap();
    write_atomic(&fixture.policy_file(), V2);
    assert!(
        wait_for_generation(engine, 2, TIMEOUT),
        "recreated directory not loaded"
    );
    assert_eq!(decide(engine, "k2"), Outcome::Deny);

    // The recreated directory is watched: a later save reloads too.
    write_atomic(&fixture.policy_file(), V1);
    assert!(
        wait_for_generation(engine, 3, TIMEOUT),
        "save in recreated directory not seen"
    );
    assert_eq!(decide(engine, "k2"), Outcome::Allow);
    assert!(live.status().engine.last_error.is_none());
}

#[test]
fn burst_of_saves_reloads_a_few_times() {
    let fixture = Fixture::new(V1);
    let live = fixture.start();
    let engine = live.engine();

    for index in 0..300 {
        let text = if index % 2 == 0 { V1 } else { V2 };
        write_atomic(&fixture.policy_file(), text);
        write_atomic(
            &fixture.policies.join(format!("extra-{}.cedar", index % 7)),
            EMBED
                .replace("embed-allowed", &format!("embed-allowed-{}", index % 7))
                .as_str(),
        );
    }

    assert!(
        wait_for_generation(engine, 2, TIMEOUT),
        "burst not reloaded"
    );
    settle(4);
    let status = live.status();
    let reloads = status.reload_attempts - 1;
    assert!(reloads >= 1, "no reload after the burst");
    assert!(reloads <= 3, "{reloads} reloads for one burst of 600 saves");
    assert_eq!(status.rejected_reloads, 0);
    assert_eq!(status.engine.policy_count, 3 + 7);
    assert_eq!(decide(engine, "k2"), Outcome::Deny, "last save in use");
}

#[test]
fn invalid_edits_keep_last_good_set() {
    let fixture = Fixture::new(V1);
    let live = fixture.start();
    let engine = live.engine();
    let entity_file = fixture.entities.join("entities.json");

    // A syntax error.
    write_atomic(
        &fixture.policy_file(),
        "permit(principal, action resource);\n",
    );
    assert!(wait_for_attempts(&live, 2, TIMEOUT));
    let status = live.status();
    assert_eq!(status.engine.generation, 1);
    let error = status.engine.last_error.expect("syntax error not reported");
    let diagnostic = error.errors().next().unwrap();
    assert_eq!(diagnostic.code, "policy-syntax");
    assert_eq!(
        diagnostic.file.as_deref(),
        Some(fixture.policy_file().as_path())
    );
    let location = diagnostic.location.expect("no line and column");
    assert_eq!(location.line, 1);
    assert!(location.column > 1, "column {}", location.column);
    assert_eq!(decide(engine, "k2"), Outcome::Allow, "V1 still in use");

    // Parses, but fails strict validation: `in` needs an entity, not a number.
    let membership_on_number = format!(
        "{V1}@id(\"bad-in\")\nforbid(principal, action == Action::\"chat\", resource)\n  when {{ context.request.total_tokens in [1, 2] }};\n"
    );
    write_atomic(&fixture.policy_file(), &membership_on_number);
    assert!(wait_for_attempts(&live, 3, TIMEOUT));
    let error = live
        .status()
        .engine
        .last_error
        .expect("validation error not reported");
    let diagnostic = error.errors().next().unwrap();
    assert_eq!(
        diagnostic.file.as_deref(),
        Some(fixture.policy_file().as_path())
    );
    let line = diagnostic.location.map_or(0, |l| l.line);
    assert!(
        (5..=7).contains(&line),
        "line {line} is not in the added policy"
    );
    assert_eq!(live.status().engine.generation, 1);

    // A valid edit is still picked up after two failures.
    write_atomic(&fixture.policy_file(), V2);
    assert!(wait_for_generation(engine, 2, TIMEOUT), "fix not reloaded");
    assert_eq!(decide(engine, "k2"), Outcome::Deny);
    assert!(live.status().engine.last_error.is_none());

    // Invalid entity JSON rejects the whole set.
    write_atomic(&entity_file, "[\n  {\"uid\": \n");
    assert!(wait_for_attempts(&live, 5, TIMEOUT));
    let error = live
        .status()
        .engine
        .last_error
        .expect("JSON error not reported");
    let diagnostic = error.errors().next().unwrap();
    assert_eq!(diagnostic.code, "json-syntax");
    assert_eq!(diagnostic.file.as_deref(), Some(entity_file.as_path()));
    assert!(diagnostic.location.is_some());
    assert_eq!(live.status().engine.generation, 2);
    assert_eq!(decide(engine, "k2"), Outcome::Deny, "V2 still in use");

    // Restoring the entity file clears the error without a new generation.
    write_atomic(&entity_file, support::ENTITIES);
    assert!(wait_for_attempts(&live, 6, TIMEOUT));
    assert!(live.status().engine.last_error.is_none());
    assert_eq!(live.status().engine.generation, 2);

    // The only policy file removed: rejected, V2 stays.
    fs::remove_file(fixture.policy_file()).unwrap();
    assert!(wait_for_attempts(&live, 7, TIMEOUT));
    assert_eq!(error_codes(&live), ["empty-policy-set"]);
    assert_eq!(decide(engine, "k2"), Outcome::Deny, "V2 still in use");

    write_atomic(&fixture.policy_file(), V1);
    assert!(
        wait_for_generation(engine, 3, TIMEOUT),
        "recreated file not reloaded"
    );
    assert_eq!(decide(engine, "k2"), Outcome::Allow);
    assert_eq!(live.status().rejected_reloads, 4);
}

#[test]
fn unreadable_file_keeps_last_good_set() {
    let fixture = Fixture::new(V1);
    let live = fixture.start();
    let engine = live.engine();

    let temporary = fixture.policies.join(".policies.cedar.tmp");
    fs::write(
        &temporary,
        b"permit(principal, action, resource); // \xff\xfe\n",
    )
    .unwrap();
    fs::rename(&temporary, fixture.policy_file()).unwrap();
    assert!(wait_for_attempts(&live, 2, TIMEOUT));
    assert_eq!(error_codes(&live), ["unreadable-file"]);
    assert_eq!(decide(engine, "k2"), Outcome::Allow, "V1 still in use");

    write_atomic(&fixture.policy_file(), V2);
    assert!(wait_for_generation(engine, 2, TIMEOUT));
    assert_eq!(decide(engine, "k2"), Outcome::Deny);
}

#[test]
fn polling_mode_sees_saves() {
    let fixture = Fixture::new(V1);
    let config = WatchConfig::default()
        .with_debounce(DEBOUNCE)
        .polling(Duration::from_millis(100));
    let live = fixture.start_with(config);
    let engine = live.engine();

    write_atomic(&fixture.policy_file(), V2);
    assert!(
        wait_for_generation(engine, 2, TIMEOUT),
        "rename save not polled"
    );
    assert_eq!(decide(engine, "k2"), Outcome::Deny);

    fs::write(fixture.policy_file(), V1).unwrap();
    assert!(
        wait_for_generation(engine, 3, TIMEOUT),
        "in-place write not polled"
    );
    assert_eq!(decide(engine, "k2"), Outcome::Allow);
}
