//! JUnit XML output, written once the run finishes: one `<testsuite>` per test file, one
//! `<testcase>` per case, `<failure>`, `<error>` and `<skipped>` as CI systems expect.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::testing::report::Reporter;
use crate::testing::runner::{CaseResult, CaseStatus, Event, Summary};

/// Collects the run and writes JUnit XML to a file when it finishes.
#[derive(Debug)]
pub struct JunitReporter {
    path: PathBuf,
    /// Results per test file, keyed by the file's path.
    suites: BTreeMap<PathBuf, Vec<Entry>>,
}

#[derive(Debug)]
enum Entry {
    Case(Box<CaseResult>),
    /// A file that could not be parsed, reported as one erroring test case.
    FileError(String),
}

impl JunitReporter {
    /// Creates a reporter that writes to `path` at the end of the run.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            suites: BTreeMap::new(),
        }
    }

    /// Renders the collected results as a JUnit XML document.
    pub fn render(&self, summary: &Summary) -> String {
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            xml,
            "<testsuites name=\"modelgate\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{}\">",
            summary.passed + summary.failed + summary.errors + summary.skipped,
            summary.failed,
            summary.errors,
            summary.skipped,
            seconds(summary.duration)
        );
        for (file, entries) in &self.suites {
            let count = |status: CaseStatus| {
                entries
                    .iter()
                    .filter(|entry| matches!(entry, Entry::Case(result) if result.status == status))
                    .count()
            };
            let file_errors = entries
                .iter()
                .filter(|entry| matches!(entry, Entry::FileError(_)))
                .count();
            let time: Duration = entries
                .iter()
                .map(|entry| match entry {
                    Entry::Case(result) => result.duration,
                    Entry::FileError(_) => Duration::ZERO,
                })
                .sum();
            let name = escape(&file.display().to_string());
            let _ = writeln!(
                xml,
                "  <testsuite name=\"{name}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{}\">",
                entries.len(),
                count(CaseStatus::Failed),
                count(CaseStatus::Error) + file_errors,
                count(CaseStatus::Skipped),
                seconds(time)
            );
            for entry in entries {
                match entry {
                    Entry::Case(result) => write_case(&mut xml, &name, result),
                    Entry::FileError(message) => {
                        let _ = writeln!(
                            xml,
                            "    <testcase name=\"(test file)\" classname=\"{name}\" file=\"{name}\" time=\"0\">"
                        );
                        let first = message.lines().next().unwrap_or_default();
                        let _ = writeln!(
                            xml,
                            "      <error message=\"{}\" type=\"test-file\">{}</error>",
                            escape(first),
                            escape_text(message)
                        );
                        let _ = writeln!(xml, "    </testcase>");
                    }
                }
            }
            let _ = writeln!(xml, "  </testsuite>");
        }
        xml.push_str("</testsuites>\n");
        xml
    }
}

fn write_case(xml: &mut String, suite: &str, result: &CaseResult) {
    let _ = writeln!(
        xml,
        "    <testcase name=\"{}\" classname=\"{suite}\" file=\"{suite}\" line=\"{}\" time=\"{}\">",
        escape(&result.name),
        result.line,
        seconds(result.duration)
    );
    match result.status {
        CaseStatus::Passed => {}
        CaseStatus::Skipped => {
            let reason = result.skip_reason.clone().unwrap_or_default();
            let _ = writeln!(xml, "      <skipped message=\"{}\"/>", escape(&reason));
        }
        CaseStatus::Failed => {
            let message = result.failures.first().cloned().unwrap_or_default();
            let mut body = result.failures.join("\n");
            if let Some(decision) = &result.actual {
                for policy in &decision.policies {
                    let _ = write!(
                        body,
                        "\n{} {}  {}:{}",
                        policy.effect,
                        policy.id,
                        policy.file.display(),
                        policy.line
                    );
                    if let Some(reason) = &policy.reason {
                        let _ = write!(body, "  ({reason})");
                    }
                }
                for error in &decision.errors {
                    let _ = write!(
                        body,
                        "\nevaluation error in {}: {}",
                        error.policy.id, error.message
                    );
                }
                let _ = write!(body, "\nwhy: {}", decision.explanation);
            }
            let _ = writeln!(
                xml,
                "      <failure message=\"{}\" type=\"decision\">{}</failure>",
                escape(&message),
                escape_text(&body)
            );
        }
        CaseStatus::Error => {
            let (message, help) = result
                .error
                .as_ref()
                .map(|error| (error.message.clone(), error.help.clone()))
                .unwrap_or_default();
            let body = match help {
                Some(help) => format!("{message}\nhelp: {help}"),
                None => message.clone(),
            };
            let _ = writeln!(
                xml,
                "      <error message=\"{}\" type=\"case\">{}</error>",
                escape(&message),
                escape_text(&body)
            );
        }
    }
    let _ = writeln!(xml, "    </testcase>");
}

impl Reporter for JunitReporter {
    fn report(&mut self, event: &Event<'_>) -> io::Result<()> {
        match event {
            Event::RunStarted(_) => Ok(()),
            Event::FileError(diagnostic) => {
                let file = diagnostic.file.clone().unwrap_or_default();
                let mut message = diagnostic.to_string();
                if let Some(help) = &diagnostic.help {
                    message.push_str("\nhelp: ");
                    message.push_str(help);
                }
                self.suites
                    .entry(file)
                    .or_default()
                    .push(Entry::FileError(message));
                Ok(())
            }
            Event::CaseFinished(result) => {
                self.suites
                    .entry(result.file.clone())
                    .or_default()
                    .push(Entry::Case(Box::new((*result).clone())));
                Ok(())
            }
            Event::RunFinished(summary) => std::fs::write(&self.path, self.render(summary)),
        }
    }
}

fn seconds(duration: Duration) -> String {
    format!("{:.6}", duration.as_secs_f64())
}

/// Escapes text for an XML attribute, where line breaks must be written as references.
fn escape(text: &str) -> String {
    escape_text(text).replace('\n', "&#10;")
}

/// Escapes XML character data, dropping the control characters that XML 1.0 does not allow.
fn escape_text(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            '\n' => escaped.push('\n'),
            '\t' | '\r' => escaped.push(' '),
            c if (c as u32) < 0x20 => {}
            c => escaped.push(c),
        }
    }
    escaped
}
