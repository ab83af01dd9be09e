//! Command-line definitions and exit codes. Each subcommand lives in its own file and only
//! parses arguments, calls the library and prints.

mod check;
mod keys;
mod test;
mod usage;
mod validate;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use modelgate::{Clock, Engine, EngineOptions, LoadOptions, RequestError, SystemClock};

/// Exit codes shared by all subcommands.
pub mod exit {
    /// Success: allowed, valid, or every test passed.
    pub const OK: u8 = 0;
    /// The command ran and the result is negative: a denial, a validation problem, a test
    /// failure.
    pub const NEGATIVE: u8 = 1;
    /// The command could not do its job: bad arguments, unreadable or invalid input, a
    /// policy set that does not load, a malformed request.
    pub const ERROR: u8 = 2;
}

#[derive(Debug, Parser)]
#[command(
    name = "modelgate",
    version,
    about = "Policy-as-code access control for hosted LLM APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decide one request, or one per line of JSON from standard input
    Check(check::CheckArgs),
    /// Parse and strictly validate policies, schema and entity data
    Validate(validate::ValidateArgs),
    /// Run policy test files (`*.test.json`) against the policy set
    Test(test::TestArgs),
    /// Load a policy set and reload it whenever its files change, printing each reload
    Watch(watch::WatchArgs),
    /// Show or record usage in the usage ledger
    Usage(usage::UsageArgs),
    /// Report API keys that need attention
    Keys(keys::KeysArgs),
}

/// The locations of the policy set, shared by every subcommand that loads one.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Directory searched recursively for `.cedar` policy files
    #[arg(long, value_name = "DIR", default_value = "policies")]
    pub policies: PathBuf,
    /// Schema file or directory of `.cedarschema` files (repeatable)
    #[arg(long, value_name = "PATH", default_value = "schema")]
    pub schema: Vec<PathBuf>,
    /// Entity JSON file or directory (repeatable) [default: POLICIES/entities]
    #[arg(long, value_name = "PATH")]
    pub entities: Vec<PathBuf>,
    /// Accept a policy set without policies (it denies every request)
    #[arg(long)]
    pub allow_empty: bool,
}

impl SourceArgs {
    pub fn load_options(&self) -> LoadOptions {
        let mut options = LoadOptions::new(&self.policies, PathBuf::new());
        options.schema = self.schema.clone();
        if !self.entities.is_empty() {
            options.entities = self.entities.clone();
        }
        options.allow_empty = self.allow_empty;
        options
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
    Github,
}

pub fn run() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check(args) => check::run(&args),
        Command::Validate(args) => validate::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Watch(args) => watch::run(&args),
        Command::Usage(args) => usage::run(&args),
        Command::Keys(args) => keys::run(&args),
    };
    ExitCode::from(code)
}

/// Logs go to standard error, off unless `RUST_LOG` enables them, so that they never mix
/// with results on standard output. They are coloured only when standard error is a terminal.
fn init_tracing() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Loads the policy set, or prints why it does not load and returns the exit code `ERROR`.
pub fn load_engine(
    sources: &SourceArgs,
    options: EngineOptions,
    format: Format,
) -> Result<Engine, u8> {
    Engine::with_options(sources.load_options(), options).map_err(|error| {
        print_diagnostics(error.diagnostics(), format);
        eprintln!("error: {error}");
        exit::ERROR
    })
}

/// Returns the time given by a `--now` option (RFC 3339), or the system clock's without one;
/// an invalid time is printed and becomes the exit code `ERROR`.
pub fn now_millis(now: Option<&str>) -> Result<i64, u8> {
    match now {
        Some(text) => modelgate::clock::parse_rfc3339_millis(text).ok_or_else(|| {
            eprintln!("error: {}", RequestError::InvalidTime(text.to_string()));
            exit::ERROR
        }),
        None => Ok(Clock::now_millis(&SystemClock)),
    }
}

/// Prints load diagnostics to standard error in the chosen format.
pub fn print_diagnostics(diagnostics: &[modelgate::Diagnostic], format: Format) {
    for diagnostic in diagnostics {
        let text = match format {
            Format::Human => modelgate::render::diagnostic_human(diagnostic),
            Format::Json => serde_json::to_string(diagnostic).unwrap_or_default() + "\n",
            Format::Github => modelgate::render::diagnostic_github(diagnostic) + "\n",
        };
        eprint!("{text}");
    }
}
