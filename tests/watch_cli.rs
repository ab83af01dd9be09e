//! `modelgate watch` as operators run it: one line per reload or rejected reload.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail on any unexpected state"
)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use support::{write_atomic, Fixture, TIMEOUT, V1, V2};

/// Starts `command` and returns its handle with a channel of its standard output lines, read
/// on a thread so that a test can wait for a line with a timeout.
fn spawn_with_lines(command: &mut Command) -> (Running, mpsc::Receiver<String>) {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let stdout = running.0.stdout.take().unwrap();
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    (running, lines)
}

/// Kills the child process when the test ends, also on failure.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn watch_prints_reloads_and_rejections() {
    let fixture = Fixture::new(V1);
    let mut command = Command::new(env!("CARGO_BIN_EXE_modelgate"));
    command
        .arg("watch")
        .arg("--policies")
        .arg(&fixture.policies)
        .arg("--schema")
        .arg(&fixture.schema)
        .arg("--entities")
        .arg(&fixture.entities)
        .args(["--debounce-ms", "100"]);
    let (_running, lines) = spawn_with_lines(&mut command);
    let next_line = || lines.recv_timeout(TIMEOUT).expect("no output line in time");

    let loaded = next_line();
    assert!(
        loaded.starts_with("loaded generation 1: 2 policies, 6 entities in "),
        "{loaded}"
    );

    write_atomic(&fixture.policy_file(), V2);
    let reloaded = next_line();
    assert!(
        reloaded.starts_with("reloaded generation 2: 3 policies, 6 entities in "),
        "{reloaded}"
    );
    assert!(reloaded.contains("(changed: policies)"), "{reloaded}");
    let warnings_before = warning_count(&reloaded);

    write_atomic(
        &fixture.policy_file(),
        "permit(principal, action resource);\n",
    );
    let rejected = next_line();
    assert!(rejected.starts_with("rejected reload in "), "{rejected}");
    assert!(rejected.contains("keeping generation 2: "), "{rejected}");
    let location = format!("{}:1:", fixture.policy_file().display());
    assert!(
        rejected.contains(&location),
        "{rejected} does not name {location}"
    );

    write_atomic(&fixture.policy_file(), V2);
    let cleared = next_line();
    assert_eq!(
        cleared,
        "files match generation 2 again; the reload error is cleared"
    );

    // A policy without `@id` and `@reason` loads, and the reload line counts the lints.
    write_atomic(
        &fixture.policy_file(),
        &format!("{V2}\npermit (principal, action, resource);\n"),
    );
    let warned = next_line();
    assert!(
        warned.starts_with("reloaded generation 3: 4 policies"),
        "{warned}"
    );
    assert!(
        warning_count(&warned) > warnings_before,
        "{warned} has no more warnings than {reloaded}"
    );
}

/// Reads the number of warnings at the end of a reload line (`..., 5 warnings`), 0 if none.
fn warning_count(line: &str) -> usize {
    line.rsplit_once(", ")
        .and_then(|(_, tail)| {
            tail.strip_suffix(" warnings")
                .or_else(|| tail.strip_suffix(" warning"))
        })
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}

#[test]
fn watch_with_relative_paths_reloads() {
    // The README's layout and command: `policies/` (with `entities/`) and `schema/` in the
    // working directory, named by relative paths.
    let dir = tempfile::tempdir().unwrap();
    let repository = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (from, to) in [("policies", "policies"), ("schema", "schema")] {
        copy_dir(&repository.join(from), &dir.path().join(to));
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_modelgate"));
    command
        .current_dir(dir.path())
        .args(["watch", "--policies", "policies", "--schema", "schema"])
        .args(["--debounce-ms", "100"]);
    let (_running, lines) = spawn_with_lines(&mut command);
    let next_line = || lines.recv_timeout(TIMEOUT).expect("no output line in time");

    let loaded = next_line();
    assert!(loaded.starts_with("loaded generation 1: "), "{loaded}");
    let roles = dir.path().join("policies/roles.cedar");
    let text = std::fs::read_to_string(&roles).unwrap() + "\n// edited\n";
    write_atomic(&roles, &text);
    let reloaded = next_line();
    assert!(
        reloaded.starts_with("reloaded generation 2: "),
        "{reloaded}"
    );

    // The first edit may land before the watch is in place, so the watcher's start-up check
    // may be what finds it. The second edit can only arrive as a file event.
    write_atomic(&roles, &(text + "// edited again\n"));
    let reloaded = next_line();
    assert!(
        reloaded.starts_with("reloaded generation 3: "),
        "{reloaded}"
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}
