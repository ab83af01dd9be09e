//! `modelgate usage show` and `modelgate usage record`: read and write the usage ledger.

use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use modelgate::quota::{Bucket, DEFAULT_LEDGER_PATH};
use modelgate::{
    ActualUsage, CheckRequest, Counters, Engine, EngineOptions, Ledger, QuotaError, RequestError,
    ScopeKind, SqliteLedger,
};
use serde::Deserialize;
use serde_json::json;

use super::{exit, load_engine, now_millis, Format, SourceArgs};

#[derive(Debug, Args)]
pub struct UsageArgs {
    #[command(subcommand)]
    pub command: UsageCommand,
}

#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Print the counters of the current minute, hour, day and month, by scope
    Show(ShowArgs),
    /// Record the actual usage of finished calls, from flags or JSON lines on standard input
    Record(RecordArgs),
}

/// The ledger file option, shared by every subcommand that opens the ledger.
#[derive(Debug, Clone, Args)]
pub struct LedgerArgs {
    /// Usage ledger file (SQLite); created when missing
    #[arg(long, value_name = "PATH", default_value = DEFAULT_LEDGER_PATH)]
    pub ledger: PathBuf,
}

impl LedgerArgs {
    pub fn open(&self) -> Result<SqliteLedger, u8> {
        SqliteLedger::open(&self.ledger).map_err(|error| {
            eprintln!("error: {error}");
            if let Some(help) = miette::Diagnostic::help(&error) {
                eprintln!("  = help: {help}");
            }
            exit::ERROR
        })
    }
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// Show only this scope entity, such as `Workspace::"ml-workspace"`
    #[arg(long, value_name = "ENTITY")]
    pub scope: Option<String>,
    /// The time whose windows to show (RFC 3339) [default: now]
    #[arg(long)]
    pub now: Option<String>,
    /// Output format (`github` prints the human format)
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub sources: SourceArgs,
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// `-` to read one JSON record per line from standard input
    #[arg(value_name = "INPUT")]
    pub input: Option<PathBuf>,
    /// The API key (or user) that made the call, such as `ApiKey::"key-ana-ml"`
    #[arg(long, required_unless_present = "input")]
    pub principal: Option<String>,
    /// The model id, whose prices give the cost
    #[arg(long, required_unless_present = "input")]
    pub model: Option<String>,
    /// The action id
    #[arg(long, default_value = "chat")]
    pub action: String,
    /// Prompt tokens the provider reported
    #[arg(long, default_value_t = 0)]
    pub input_tokens: u64,
    /// Completion tokens the provider reported
    #[arg(long, default_value_t = 0)]
    pub output_tokens: u64,
    /// When the call was made (RFC 3339) [default: now]
    #[arg(long)]
    pub now: Option<String>,
    /// Output format (`github` prints the human format)
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
}

pub fn run(args: &UsageArgs) -> u8 {
    match &args.command {
        UsageCommand::Show(show) => run_show(show),
        UsageCommand::Record(record) => run_record(record),
    }
}

fn run_show(args: &ShowArgs) -> u8 {
    let now_millis = match now_millis(args.now.as_deref()) {
        Ok(millis) => millis,
        Err(code) => return code,
    };
    let scope_filter = match &args.scope {
        Some(text) => match normalize_entity(text) {
            Ok(scope) => Some(scope),
            Err(error) => {
                eprintln!("error: {error}");
                return exit::ERROR;
            }
        },
        None => None,
    };
    let ledger = match args.ledger.open() {
        Ok(ledger) => ledger,
        Err(code) => return code,
    };
    let rows = match ledger.current(now_millis) {
        Ok(rows) => rows,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::ERROR;
        }
    };
    let rows: Vec<(Bucket, Counters)> = rows
        .into_iter()
        .filter(|(bucket, _)| scope_filter.as_ref().is_none_or(|s| *s == bucket.scope))
        .collect();

    match args.format {
        Format::Json => {
            let items: Vec<serde_json::Value> = rows
                .iter()
                .map(|(bucket, counters)| {
                    json!({
                        "scope": bucket.scope,
                        "kind": scope_kind_name(&bucket.scope),
                        "window": bucket.window,
                        "start": modelgate::clock::format_millis(bucket.start),
                        "requests": counters.requests,
                        "input_tokens": counters.input_tokens,
                        "output_tokens": counters.output_tokens,
                        "tokens": counters.tokens(),
                        "cost_micro_usd": counters.cost_micro_usd,
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(items));
        }
        Format::Human | Format::Github => print!("{}", usage_table(&rows)),
    }
    exit::OK
}

fn usage_table(rows: &[(Bucket, Counters)]) -> String {
    if rows.is_empty() {
        return "no usage in the current windows\n".to_string();
    }
    let mut sorted: Vec<&(Bucket, Counters)> = rows.iter().collect();
    sorted.sort_by(|a, b| (&a.0.scope, a.0.window).cmp(&(&b.0.scope, b.0.window)));
    let width = sorted
        .iter()
        .map(|(bucket, _)| bucket.scope.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!(
        "{:<width$}  {:<6}  {:>10}  {:>12}  {:>12}  {:>12}  {:>14}\n",
        "scope", "window", "requests", "input", "output", "tokens", "cost (USD)"
    );
    for (bucket, counters) in sorted {
        out.push_str(&format!(
            "{:<width$}  {:<6}  {:>10}  {:>12}  {:>12}  {:>12}  {:>14}\n",
            bucket.scope,
            bucket.window.name(),
            counters.requests,
            counters.input_tokens,
            counters.output_tokens,
            counters.tokens(),
            format_usd(counters.cost_micro_usd),
        ));
    }
    out
}

/// Formats micro-USD as dollars with six decimals, exactly.
fn format_usd(micro_usd: u64) -> String {
    format!("{}.{:06}", micro_usd / 1_000_000, micro_usd % 1_000_000)
}

fn scope_kind_name(scope: &str) -> Option<&'static str> {
    let entity_type = scope.split("::").next()?;
    ScopeKind::of_entity_type(entity_type).map(ScopeKind::name)
}

fn normalize_entity(text: &str) -> Result<String, RequestError> {
    // Reuse the request parser so that `Type::id` and `Type::"id"` name the same scope.
    CheckRequest::new(text, "chat", text).map(|request| request.principal.to_string())
}

/// One line of `usage record -`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRecord {
    principal: String,
    model: String,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    now: Option<String>,
}

fn run_record(args: &RecordArgs) -> u8 {
    let ledger = match args.ledger.open() {
        Ok(ledger) => ledger,
        Err(code) => return code,
    };
    let options = EngineOptions {
        ledger: Arc::new(ledger),
        ..EngineOptions::default()
    };
    let engine = match load_engine(&args.sources, options, Format::Human) {
        Ok(engine) => engine,
        Err(code) => return code,
    };

    match &args.input {
        Some(path) if path.as_os_str() == "-" => record_lines(&engine, args.format),
        Some(path) => {
            eprintln!(
                "error: unexpected input `{}`; give `-` to read JSON lines from standard input",
                path.display()
            );
            exit::ERROR
        }
        None => {
            let record = WireRecord {
                principal: args.principal.clone().unwrap_or_default(),
                model: args.model.clone().unwrap_or_default(),
                action: Some(args.action.clone()),
                input_tokens: args.input_tokens,
                output_tokens: args.output_tokens,
                now: args.now.clone(),
            };
            record_one(&engine, &record, args.format, None)
        }
    }
}

/// Records one JSON record per line. Each line is written to the ledger durably before its
/// confirmation is printed; a bad line is reported and the following lines still recorded.
fn record_lines(engine: &Engine, format: Format) -> u8 {
    let mut worst = exit::OK;
    for (index, line) in io::stdin().lock().lines().enumerate() {
        let line_number = index + 1;
        let line = match line {
            Ok(line) => line,
            Err(error) => {
                eprintln!("error: cannot read standard input: {error}");
                return exit::ERROR;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let code = match serde_json::from_str::<WireRecord>(&line) {
            Ok(record) => record_one(engine, &record, format, Some(line_number)),
            Err(error) => {
                eprintln!("error: line {line_number}: invalid usage record JSON: {error}");
                exit::ERROR
            }
        };
        worst = worst.max(code);
        let _ = io::stdout().flush();
    }
    worst
}

fn record_one(engine: &Engine, record: &WireRecord, format: Format, line: Option<usize>) -> u8 {
    let action = record.action.as_deref().unwrap_or("chat");
    let request = CheckRequest::for_model(&record.principal, action, &record.model).map(|r| {
        let mut request = r;
        request.now = record.now.clone();
        request
    });
    let actual = ActualUsage {
        input_tokens: record.input_tokens,
        output_tokens: record.output_tokens,
    };
    let result = request
        .map_err(QuotaError::from)
        .and_then(|request| engine.record_usage(&request, actual).map(|c| (request, c)));
    match result {
        Ok((request, counters)) => {
            match format {
                Format::Json => println!(
                    "{}",
                    json!({
                        "recorded": true,
                        "principal": request.principal.to_string(),
                        "model": request.resource.to_string(),
                        "input_tokens": counters.input_tokens,
                        "output_tokens": counters.output_tokens,
                        "cost_micro_usd": counters.cost_micro_usd,
                    })
                ),
                Format::Human | Format::Github => println!(
                    "recorded {} on {}: {} input, {} output tokens, {} USD",
                    request.principal,
                    request.resource,
                    counters.input_tokens,
                    counters.output_tokens,
                    format_usd(counters.cost_micro_usd)
                ),
            }
            exit::OK
        }
        Err(error) => {
            let prefix = line.map(|l| format!("line {l}: ")).unwrap_or_default();
            eprintln!("error: {prefix}{error}");
            if let Some(help) = miette::Diagnostic::help(&error) {
                eprintln!("  = help: {help}");
            }
            exit::ERROR
        }
    }
}
