//! `modelgate test`: runs policy test files and exits with the run's verdict.

use std::io;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use modelgate::reload::{watch_roots, ChangeBatch, FileWatcher, WatchConfig, WatchRoot};
use modelgate::testing::{
    self, HumanReporter, JsonReporter, JunitReporter, Reporter, RunOptions, Verdict,
};
use modelgate::EngineOptions;

use super::{exit, load_engine, Format, SourceArgs};

#[derive(Debug, Args)]
#[command(mut_arg("allow_empty", |arg| arg.help(
    "Let a run pass that executes no test case, and accept a policy set without policies"
)))]
pub struct TestArgs {
    #[command(flatten)]
    pub sources: SourceArgs,
    /// Test files, or directories searched recursively for `*.test.json` [default: POLICIES/tests]
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Run only the cases whose name contains PATTERN (plain text, case-sensitive)
    #[arg(long, value_name = "PATTERN")]
    pub filter: Option<String>,
    /// Stop after the first failing or erroring case
    #[arg(long)]
    pub fail_fast: bool,
    /// Output format on standard output
    #[arg(long, value_enum, default_value = "human")]
    pub format: TestFormat,
    /// Also write the results as JUnit XML to FILE
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Report for each policy how many cases it decided, and list the policies none decided
    #[arg(long)]
    pub coverage: bool,
    /// Fail when less than PCT percent (0 to 100) of the policies decided at least one case
    #[arg(long, value_name = "PCT", value_parser = parse_percent)]
    pub min_coverage: Option<f64>,
    /// Run again whenever a policy, schema, entity or test file changes (stop with Ctrl-C)
    #[arg(long)]
    pub watch: bool,
    /// With `--watch`: quiet period after the last file change before a run, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 200, requires = "watch")]
    pub debounce_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TestFormat {
    /// One line per case, details for failures, summary last
    Human,
    /// JSON Lines: one object per event
    Json,
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("`{text}` is outside 0..=100"))
    }
}

pub fn run(args: &TestArgs) -> u8 {
    if args.watch {
        return watch(args);
    }
    run_once(args)
}

/// Runs the tests, then again after every burst of changes to the files they depend on.
/// Returns only when the watcher cannot start.
fn watch(args: &TestArgs) -> u8 {
    let test_paths = test_paths(args);
    // The same files a live engine watches, plus the test files.
    let mut roots = watch_roots(&args.sources.load_options());
    roots.extend(
        test_paths
            .iter()
            .map(|path| WatchRoot::new(path, &["json"])),
    );
    let (sender, receiver) = mpsc::channel::<ChangeBatch>();
    let config = WatchConfig::default().with_debounce(Duration::from_millis(args.debounce_ms));
    let _watcher = match FileWatcher::start(roots, config, move |batch| {
        let _ = sender.send(batch);
    }) {
        Ok(watcher) => watcher,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::ERROR;
        }
    };

    run_once(args);
    while let Ok(batch) = receiver.recv() {
        let names: Vec<String> = batch
            .paths
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        println!();
        println!("changed: {}; running again", names.join(", "));
        run_once(args);
    }
    exit::ERROR
}

fn test_paths(args: &TestArgs) -> Vec<PathBuf> {
    if args.paths.is_empty() {
        vec![args.sources.policies.join("tests")]
    } else {
        args.paths.clone()
    }
}

fn run_once(args: &TestArgs) -> u8 {
    let format = match args.format {
        TestFormat::Human => Format::Human,
        TestFormat::Json => Format::Json,
    };
    let engine = match load_engine(&args.sources, EngineOptions::default(), format) {
        Ok(engine) => engine,
        Err(code) => {
            eprintln!(
                "  = help: fix the policy set first; `modelgate validate` lists every problem"
            );
            return code;
        }
    };
    let paths = test_paths(args);
    let options = RunOptions {
        filter: args.filter.clone(),
        fail_fast: args.fail_fast,
        allow_empty: args.sources.allow_empty,
        coverage: args.coverage,
        min_coverage: args.min_coverage,
    };

    let mut reporters: Vec<Box<dyn Reporter>> = Vec::new();
    match args.format {
        TestFormat::Human => {
            reporters.push(Box::new(HumanReporter::new(io::stdout(), io::stderr())))
        }
        TestFormat::Json => reporters.push(Box::new(JsonReporter::new(io::stdout()))),
    }
    if let Some(path) = &args.junit {
        reporters.push(Box::new(JunitReporter::new(path.clone())));
    }

    let mut write_error: Option<io::Error> = None;
    let summary = testing::run(&engine, &paths, &options, &mut |event| {
        for reporter in &mut reporters {
            if let Err(error) = reporter.report(event) {
                write_error.get_or_insert(error);
            }
        }
    });
    if let Some(error) = write_error {
        eprintln!("error: cannot write test results: {error}");
        if let Some(path) = &args.junit {
            eprintln!("  = help: check that `{}` can be written", path.display());
        }
        return exit::ERROR;
    }
    // The human reporter explains an empty run itself; JSON Lines carry it in `run_finished`,
    // so standard error still gets the message a person reading CI logs looks for.
    if args.format == TestFormat::Json && summary.no_tests_run && !summary.allow_empty {
        eprintln!("error: no tests were run");
    }
    match summary.verdict() {
        Verdict::Passed => exit::OK,
        Verdict::Failed => exit::NEGATIVE,
        Verdict::Error => exit::ERROR,
    }
}
