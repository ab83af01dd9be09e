//! `modelgate keys audit`: API keys that need attention.

use clap::{Args, Subcommand};
use modelgate::quota::{audit_keys, AuditOptions};
use modelgate::{EngineOptions, Ledger};

use super::usage::LedgerArgs;
use super::{exit, load_engine, now_millis, Format, SourceArgs};

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List keys never used or unused for a while, keys due for rotation, expired and
    /// revoked keys
    Audit(AuditArgs),
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub sources: SourceArgs,
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// Report keys whose last use is at least this many days ago
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    pub unused_days: u32,
    /// Report keys created at least this many days ago
    #[arg(long, value_name = "DAYS", default_value_t = 90)]
    pub rotation_days: u32,
    /// The time of the audit (RFC 3339) [default: now]
    #[arg(long)]
    pub now: Option<String>,
    /// Output format (`github` prints the human format)
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
}

pub fn run(args: &KeysArgs) -> u8 {
    match &args.command {
        KeysCommand::Audit(audit) => run_audit(audit),
    }
}

/// Exits with `OK` when no key needs attention and `NEGATIVE` when some does.
fn run_audit(args: &AuditArgs) -> u8 {
    let now_millis = match now_millis(args.now.as_deref()) {
        Ok(millis) => millis,
        Err(code) => return code,
    };
    let engine = match load_engine(&args.sources, EngineOptions::default(), Format::Human) {
        Ok(engine) => engine,
        Err(code) => return code,
    };
    let ledger = match args.ledger.open() {
        Ok(ledger) => ledger,
        Err(code) => return code,
    };
    let last_used = match ledger.last_used() {
        Ok(last_used) => last_used,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::ERROR;
        }
    };
    let options = AuditOptions {
        unused_days: args.unused_days,
        rotation_days: args.rotation_days,
        now_millis,
    };
    let reports = audit_keys(&engine.snapshot(), &last_used, options);
    let flagged: Vec<_> = reports.iter().filter(|r| !r.findings.is_empty()).collect();

    match args.format {
        Format::Json => println!("{}", serde_json::to_string(&flagged).unwrap_or_default()),
        Format::Human | Format::Github => {
            for report in &flagged {
                let findings: Vec<String> = report.findings.iter().map(|f| f.describe()).collect();
                println!("{}  {}", report.key, findings.join(", "));
            }
            println!(
                "{} of {} keys need attention (unused {} days, rotation {} days)",
                flagged.len(),
                reports.len(),
                args.unused_days,
                args.rotation_days
            );
        }
    }
    if flagged.is_empty() {
        exit::OK
    } else {
        exit::NEGATIVE
    }
}
