//! `modelgate validate`: every problem in one run, errors on standard error.

use clap::Args;
use serde_json::json;

use super::{exit, print_diagnostics, Format, SourceArgs};

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub sources: SourceArgs,
    /// Output format
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    /// Exit non-zero on warnings too
    #[arg(long)]
    pub deny_warnings: bool,
}

pub fn run(args: &ValidateArgs) -> u8 {
    let report = modelgate::validate(&args.sources.load_options());
    let errors = report.error_count();
    let warnings = report.warning_count();
    let failed = errors > 0 || (args.deny_warnings && warnings > 0);

    match args.format {
        Format::Json => {
            let summary = json!({
                "valid": !failed,
                "errors": errors,
                "warnings": warnings,
                "policies": report.policy_count,
                "entities": report.entity_count,
                "diagnostics": report.diagnostics,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&summary).unwrap_or_default()
            );
        }
        Format::Human | Format::Github => {
            print_diagnostics(&report.diagnostics, args.format);
            let verdict = if failed { "invalid" } else { "valid" };
            println!(
                "{verdict}: {} policies, {} entities, {errors} errors, {warnings} warnings",
                report.policy_count, report.entity_count
            );
        }
    }
    if failed {
        exit::NEGATIVE
    } else {
        exit::OK
    }
}
