//! `modelgate check`: one decision from flags or a request file, or one per JSON line read
//! from standard input.

use std::io::{self, BufRead, Write};
use std::path::PathBuf;

use clap::Args;
use std::sync::Arc;

use modelgate::{
    CheckRequest, Decision, Engine, EngineOptions, ErrorPolicy, RequestError, UsageView,
};
use serde_json::{json, Map, Value};

use super::{exit, load_engine, Format, SourceArgs};

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub sources: SourceArgs,
    /// Request JSON file, or `-` to read one request per line from standard input
    #[arg(
        value_name = "REQUEST",
        conflicts_with_all = [
            "principal", "model", "resource", "input_tokens", "max_output_tokens",
            "stream", "now", "context",
        ]
    )]
    pub request: Option<PathBuf>,
    /// The caller, such as `ApiKey::"key-ana-ml"` or `User::"ana"`
    #[arg(long, required_unless_present = "request")]
    pub principal: Option<String>,
    /// The action id, such as `chat` or `embeddings` [default: chat]
    #[arg(long, conflicts_with = "request")]
    pub action: Option<String>,
    /// The model id, such as `mistral-small-latest`
    #[arg(long, conflicts_with = "resource")]
    pub model: Option<String>,
    /// Any other resource, such as `Workspace::"dev-workspace"`
    #[arg(long)]
    pub resource: Option<String>,
    /// Estimated prompt tokens
    #[arg(long, default_value_t = 0)]
    pub input_tokens: u64,
    /// The `max_tokens` the caller asks for
    #[arg(long, default_value_t = 0)]
    pub max_output_tokens: u64,
    /// The caller requests a streamed response
    #[arg(long)]
    pub stream: bool,
    /// Request time (RFC 3339) [default: now]
    #[arg(long)]
    pub now: Option<String>,
    /// Extra context attributes as a JSON object
    #[arg(long, value_name = "JSON")]
    pub context: Option<String>,
    /// Output format
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    /// Ignore evaluation errors in permit policies (errors in forbid policies still deny)
    #[arg(long)]
    pub ignore_permit_errors: bool,
    /// Largest token count accepted per request field
    #[arg(long, default_value_t = modelgate::request::DEFAULT_MAX_TOKENS)]
    pub max_tokens: u64,
    /// Usage counters (JSON file) to evaluate against instead of the ledger's
    #[arg(long, value_name = "FILE", conflicts_with = "ledger")]
    pub usage: Option<PathBuf>,
    /// Usage ledger (SQLite file) to read counters from [default: none, so all usage is zero]
    #[arg(long, value_name = "PATH")]
    pub ledger: Option<PathBuf>,
}

pub fn run(args: &CheckArgs) -> u8 {
    let usage = match &args.usage {
        Some(path) => match read_usage(path) {
            Ok(usage) => Some(usage),
            Err(code) => return code,
        },
        None => None,
    };
    let mut options = EngineOptions {
        error_policy: if args.ignore_permit_errors {
            ErrorPolicy::IgnorePermitErrors
        } else {
            ErrorPolicy::FailClosed
        },
        max_tokens: args.max_tokens,
        ..EngineOptions::default()
    };
    if let Some(path) = &args.ledger {
        let ledger = super::usage::LedgerArgs {
            ledger: path.clone(),
        };
        match ledger.open() {
            Ok(ledger) => options.ledger = Arc::new(ledger),
            Err(code) => return code,
        }
    }
    let engine = match load_engine(&args.sources, options, diagnostic_format(args.format)) {
        Ok(engine) => engine,
        Err(code) => return code,
    };

    match &args.request {
        Some(path) if path.as_os_str() == "-" => run_batch(&engine, usage.as_ref(), args.format),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => {
                let request = CheckRequest::from_json(&text);
                if let Err(error) = &request {
                    eprintln!("error: in request file `{}`:", path.display());
                    if text.lines().filter(|line| !line.trim().is_empty()).count() > 1
                        && matches!(error, RequestError::InvalidJson(_))
                    {
                        eprintln!("  = note: a file of one request per line is read with `modelgate check - < FILE`");
                    }
                }
                answer_one(&engine, usage.as_ref(), request, args.format)
            }
            Err(error) => {
                eprintln!(
                    "error: cannot read request file `{}`: {error}",
                    path.display()
                );
                exit::ERROR
            }
        },
        None => answer_one(
            &engine,
            usage.as_ref(),
            request_from_flags(args),
            args.format,
        ),
    }
}

fn diagnostic_format(format: Format) -> Format {
    match format {
        Format::Json => Format::Json,
        _ => Format::Human,
    }
}

fn request_from_flags(args: &CheckArgs) -> Result<CheckRequest, RequestError> {
    let principal = args.principal.as_deref().unwrap_or_default();
    let action = args.action.as_deref().unwrap_or("chat");
    let mut request = match (&args.model, &args.resource) {
        (_, Some(resource)) => CheckRequest::new(principal, action, resource)?,
        (Some(model), None) => CheckRequest::for_model(principal, action, model)?,
        (None, None) => {
            return Err(RequestError::Incomplete(
                "missing `--model MODEL` (or `--resource` for actions on other entities)"
                    .to_string(),
            ))
        }
    };
    request = request.with_tokens(args.input_tokens, args.max_output_tokens);
    request.facts.stream = args.stream;
    request.now = args.now.clone();
    if let Some(context) = &args.context {
        request.context = serde_json::from_str::<Map<String, Value>>(context).map_err(|error| {
            RequestError::InvalidJson(format!("`--context` is not a JSON object: {error}"))
        })?;
    }
    Ok(request)
}

/// Reads a usage file for `--usage`; errors are printed and become the exit code.
fn read_usage(path: &std::path::Path) -> Result<UsageView, u8> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        eprintln!(
            "error: cannot read usage file `{}`: {error}",
            path.display()
        );
        exit::ERROR
    })?;
    UsageView::from_json(&text).map_err(|error| {
        eprintln!("error: usage file `{}`: {error}", path.display());
        eprintln!(
            "  = help: write {{\"user\": {{\"day\": {{\"input_tokens\": 1200}}}}}} with scopes key, user, team, role, workspace, organization and windows minute, hour, day, month"
        );
        exit::ERROR
    })
}

/// Decides with the given usage counters, or with the ledger's when there are none.
fn decide(
    engine: &Engine,
    usage: Option<&UsageView>,
    request: &CheckRequest,
) -> Result<Decision, RequestError> {
    match usage {
        Some(usage) => engine.check_with_usage(request, usage),
        None => engine.check(request),
    }
}

fn answer_one(
    engine: &Engine,
    usage: Option<&UsageView>,
    request: Result<CheckRequest, RequestError>,
    format: Format,
) -> u8 {
    let request = match request {
        Ok(request) => request,
        Err(error) => return report_request_error(&error, format, None),
    };
    match decide(engine, usage, &request) {
        Ok(decision) => {
            print_decision(&request, &decision, format);
            if decision.is_allowed() {
                exit::OK
            } else {
                exit::NEGATIVE
            }
        }
        Err(error) => report_request_error(&error, format, None),
    }
}

/// Decides one JSON request per line of standard input. A bad line is reported as a denial
/// with its error and makes the exit code `ERROR`, and the following lines are still decided.
fn run_batch(engine: &Engine, usage: Option<&UsageView>, format: Format) -> u8 {
    let mut worst = exit::OK;
    let mut answered = 0;
    let stdin = io::stdin();
    for (index, line) in stdin.lock().lines().enumerate() {
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
        let request = CheckRequest::from_json(&line);
        let code = match request
            .and_then(|request| decide(engine, usage, &request).map(|d| (request, d)))
        {
            Ok((request, decision)) => {
                print_decision(&request, &decision, format);
                if decision.is_allowed() {
                    exit::OK
                } else {
                    exit::NEGATIVE
                }
            }
            Err(error) => report_request_error(&error, format, Some(line_number)),
        };
        worst = worst.max(code);
        answered += 1;
        let _ = io::stdout().flush();
    }
    if answered == 0 {
        eprintln!("error: no request was read from standard input");
        eprintln!("  = help: send one JSON request per line");
        return exit::ERROR;
    }
    worst
}

fn print_decision(request: &CheckRequest, decision: &Decision, format: Format) {
    match format {
        Format::Json => println!("{}", serde_json::to_string(decision).unwrap_or_default()),
        _ => print!("{}", modelgate::render::decision_human(request, decision)),
    }
}

/// Reports a malformed request, which is never evaluated, as a denial, so that a script
/// reading the output cannot mistake it for an allow.
fn report_request_error(error: &RequestError, format: Format, line: Option<usize>) -> u8 {
    let help = miette::Diagnostic::help(error).map(|help| help.to_string());
    match format {
        Format::Json => {
            let mut value = json!({
                "decision": "deny",
                "error": error.to_string(),
            });
            if let (Some(help), Some(object)) = (&help, value.as_object_mut()) {
                object.insert("help".to_string(), json!(help));
            }
            if let (Some(line), Some(object)) = (line, value.as_object_mut()) {
                object.insert("line".to_string(), json!(line));
            }
            println!("{value}");
        }
        _ => {
            let prefix = line.map(|l| format!("line {l}: ")).unwrap_or_default();
            eprintln!("error: {prefix}{error}");
            if let Some(help) = help {
                eprintln!("  = help: {help}");
            }
        }
    }
    exit::ERROR
}
