//! Policy tests: test files that state expected decisions, run against a policy set.
//!
//! [`format`] parses modelgate's test files and `cedar run-tests` files into cases,
//! [`runner`] runs them and emits one stream of [`Event`]s, and [`report`] turns that stream
//! into terminal, JSON Lines and JUnit XML output.

pub mod coverage;
mod expand;
pub mod format;
pub mod report;
pub mod runner;

pub use coverage::{Coverage, PolicyCoverage};
pub use format::{parse_file, parse_text, Case, CaseError, Expectation, FileFormat, TestFile};
pub use report::{HumanReporter, JsonReporter, JunitReporter, Reporter};
pub use runner::{
    discover_test_files, run, run_parsed, CaseResult, CaseStatus, Event, RunOptions, RunStarted,
    Summary, Verdict, TEST_FILE_SUFFIX,
};
