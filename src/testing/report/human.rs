//! Terminal output: one fixed-width status line per case, details for failures and errors,
//! coverage, and the summary line last. No colour, so output is the same in CI logs.

use std::io::{self, Write};

use crate::decision::{Decision, Outcome};
use crate::render::diagnostic_human;
use crate::testing::coverage::Coverage;
use crate::testing::format::{ErrorExpectation, Expectation, PolicyMatch};
use crate::testing::report::Reporter;
use crate::testing::runner::{CaseResult, CaseStatus, Event, Summary};

/// Writes results to `out` and problems with test files or the run to `err`.
#[derive(Debug)]
pub struct HumanReporter<O: Write, E: Write> {
    out: O,
    err: E,
}

impl<O: Write, E: Write> HumanReporter<O, E> {
    /// Creates a reporter writing results to `out` and errors to `err`.
    pub fn new(out: O, err: E) -> Self {
        Self { out, err }
    }

    /// Returns the two writers.
    pub fn into_inner(self) -> (O, E) {
        (self.out, self.err)
    }
}

const INDENT: &str = "       ";

impl<O: Write, E: Write> Reporter for HumanReporter<O, E> {
    fn report(&mut self, event: &Event<'_>) -> io::Result<()> {
        match event {
            Event::RunStarted(started) => {
                let files = plural(started.files, "file", "files");
                let cases = plural(started.cases, "case", "cases");
                write!(self.out, "running {cases} from {files}")?;
                if started.filtered_out > 0 {
                    write!(self.out, " ({} filtered out)", started.filtered_out)?;
                }
                writeln!(self.out)
            }
            Event::FileError(diagnostic) => write!(self.err, "{}", diagnostic_human(diagnostic)),
            Event::CaseFinished(result) => self.case(result),
            Event::RunFinished(summary) => self.finish(summary),
        }
    }
}

impl<O: Write, E: Write> HumanReporter<O, E> {
    fn case(&mut self, result: &CaseResult) -> io::Result<()> {
        let word = match result.status {
            CaseStatus::Passed => "PASS ",
            CaseStatus::Failed => "FAIL ",
            CaseStatus::Error => "ERROR",
            CaseStatus::Skipped => "SKIP ",
        };
        write!(
            self.out,
            "{word}  {}:{}  {}",
            result.file.display(),
            result.line,
            result.name
        )?;
        match &result.skip_reason {
            Some(reason) if !reason.is_empty() => writeln!(self.out, " ({reason})")?,
            _ => writeln!(self.out)?,
        }
        match result.status {
            CaseStatus::Passed | CaseStatus::Skipped => Ok(()),
            CaseStatus::Error => {
                if let Some(error) = &result.error {
                    writeln!(self.out, "{INDENT}error: {}", error.message)?;
                    if let Some(help) = &error.help {
                        writeln!(self.out, "{INDENT}= help: {help}")?;
                    }
                }
                Ok(())
            }
            CaseStatus::Failed => {
                writeln!(
                    self.out,
                    "{INDENT}expected: {}",
                    describe_expectation(&result.expected)
                )?;
                if let Some(decision) = &result.actual {
                    self.decision(decision)?;
                }
                for failure in &result.failures {
                    writeln!(self.out, "{INDENT}- {failure}")?;
                }
                Ok(())
            }
        }
    }

    fn decision(&mut self, decision: &Decision) -> io::Result<()> {
        let outcome = match (decision.decision, decision.status) {
            (Outcome::Deny, Some(status)) => format!("deny {status}"),
            (outcome, _) => outcome.to_string(),
        };
        writeln!(self.out, "{INDENT}actual:   {outcome}")?;
        if decision.policies.is_empty() {
            writeln!(self.out, "{INDENT}deciding policies: none")?;
        } else {
            writeln!(self.out, "{INDENT}deciding policies:")?;
        }
        for policy in &decision.policies {
            writeln!(
                self.out,
                "{INDENT}  {:<6} {}  {}:{}:{}",
                policy.effect.to_string(),
                policy.id,
                policy.file.display(),
                policy.line,
                policy.column
            )?;
            if let Some(reason) = &policy.reason {
                writeln!(self.out, "{INDENT}         {reason}")?;
            }
        }
        for error in &decision.errors {
            writeln!(
                self.out,
                "{INDENT}evaluation error in {}  {}:{}: {}",
                error.policy.id,
                error.policy.file.display(),
                error.policy.line,
                error.message
            )?;
        }
        writeln!(self.out, "{INDENT}why: {}", decision.explanation)
    }

    fn finish(&mut self, summary: &Summary) -> io::Result<()> {
        if let Some(coverage) = &summary.coverage {
            self.coverage(coverage)?;
        }
        if summary.stopped_early {
            writeln!(
                self.err,
                "note: stopped after the first failure (`--fail-fast`)"
            )?;
        }
        if summary.no_tests_run {
            let severity = if summary.allow_empty {
                "warning"
            } else {
                "error"
            };
            writeln!(self.err, "{severity}: no tests were run")?;
            if !summary.allow_empty && summary.errors == 0 {
                for file in &summary.unmatched_files {
                    writeln!(
                        self.err,
                        "  = note: `{}` was not run because its name does not end in `.test.json`",
                        file.display()
                    )?;
                }
                writeln!(
                    self.err,
                    "  = help: check the paths and `--filter`; test files are named `*.test.json`; pass `--allow-empty` if an empty run is intended"
                )?;
            }
        }
        if summary.coverage_below_minimum() {
            if let (Some(coverage), Some(minimum)) = (&summary.coverage, summary.min_coverage) {
                writeln!(
                    self.err,
                    "error: policy coverage {:.1}% is below the required {minimum}%",
                    coverage.percent
                )?;
                writeln!(
                    self.err,
                    "  = help: add cases that reach the uncovered policies listed above"
                )?;
            }
        }
        if summary.errors > 0 {
            let noun = if summary.errors == 1 {
                "error"
            } else {
                "errors"
            };
            writeln!(
                self.out,
                "{} {noun}: test files or cases that could not run",
                summary.errors
            )?;
        }
        writeln!(self.out, "{}", summary.line())
    }

    fn coverage(&mut self, coverage: &Coverage) -> io::Result<()> {
        writeln!(
            self.out,
            "coverage: {} of {} policies decided at least one case ({:.1}%)",
            coverage.covered, coverage.total, coverage.percent
        )?;
        for entry in &coverage.policies {
            writeln!(
                self.out,
                "  {:>5}  {:<6} {}  {}:{}",
                entry.cases,
                entry.policy.effect.to_string(),
                entry.policy.id,
                entry.policy.file.display(),
                entry.policy.line
            )?;
        }
        let mut uncovered = coverage.uncovered().peekable();
        if uncovered.peek().is_some() {
            writeln!(self.out, "policies no case decided:")?;
            for policy in uncovered {
                writeln!(
                    self.out,
                    "  {:<6} {}  {}:{}",
                    policy.effect.to_string(),
                    policy.id,
                    policy.file.display(),
                    policy.line
                )?;
            }
        }
        Ok(())
    }
}

/// Formats an expectation as `deny 401, policies `a`, `b``.
fn describe_expectation(expected: &Expectation) -> String {
    let mut text = expected.decision.to_string();
    if let Some(status) = expected.status {
        text.push_str(&format!(" {status}"));
    }
    let empty_subset = expected.policy_match == PolicyMatch::Subset
        && expected.policies.as_ref().is_some_and(Vec::is_empty);
    if let (Some(policies), false) = (&expected.policies, empty_subset) {
        let label = match expected.policy_match {
            PolicyMatch::Exact => "policies",
            PolicyMatch::Subset => "policies including",
        };
        let list: Vec<String> = policies.iter().map(|id| format!("`{id}`")).collect();
        if list.is_empty() {
            text.push_str(&format!(", {label} none"));
        } else {
            text.push_str(&format!(", {label} {}", list.join(", ")));
        }
    }
    match &expected.errors {
        ErrorExpectation::Matching(patterns) if !patterns.is_empty() => {
            let list: Vec<String> = patterns.iter().map(|p| format!("`{p}`")).collect();
            text.push_str(&format!(", errors matching {}", list.join(", ")));
        }
        ErrorExpectation::Matching(_) => {}
        ErrorExpectation::Count(count) => text.push_str(&format!(", {count} evaluation errors")),
    }
    text
}

fn plural(count: usize, one: &str, many: &str) -> String {
    if count == 1 {
        format!("{count} {one}")
    } else {
        format!("{count} {many}")
    }
}
