//! Helpers shared by the integration tests.

#![allow(dead_code)]
#![allow(
    clippy::expect_used,
    reason = "a test helper that cannot start the binary should stop the test"
)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Output of one run of the `modelgate` binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Exit code and both streams in one text, for snapshots.
    pub fn transcript(&self) -> String {
        format!(
            "exit: {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `modelgate` from the repository root, so that paths in its output are relative.
pub fn modelgate(args: &[&str], stdin: Option<&str>) -> Run {
    modelgate_in(Path::new(env!("CARGO_MANIFEST_DIR")), args, stdin)
}

/// Runs `modelgate` in `dir`.
pub fn modelgate_in(dir: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("modelgate binary starts");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input.as_bytes())
            .expect("stdin accepts input");
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().expect("modelgate finishes");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
