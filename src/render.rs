//! Text forms of diagnostics and decisions: human-readable, JSON and GitHub workflow
//! commands. Output is deterministic: no colour, no timestamps.

use std::fmt::Write as _;

use crate::decision::{Decision, Outcome};
use crate::diagnostic::Diagnostic;
use crate::request::CheckRequest;

/// Renders a diagnostic with its location and a marked source line, in the style of
/// compiler errors.
pub fn diagnostic_human(diagnostic: &Diagnostic) -> String {
    let mut out = format!(
        "{}[{}]: {}\n",
        diagnostic.severity, diagnostic.code, diagnostic.message
    );
    if let Some(file) = &diagnostic.file {
        match diagnostic.location {
            Some(location) => {
                let _ = writeln!(
                    out,
                    "  --> {}:{}:{}",
                    file.display(),
                    location.line,
                    location.column
                );
                if let Some(line) = &diagnostic.source_line {
                    let number = location.line.to_string();
                    let gutter = " ".repeat(number.len());
                    let display_line = line.replace('\t', " ");
                    let marker_start = location.column.saturating_sub(1);
                    let available = display_line
                        .chars()
                        .count()
                        .saturating_sub(marker_start)
                        .max(1);
                    let marker = "^".repeat(diagnostic.marker_len.clamp(1, available));
                    let _ = writeln!(out, " {gutter} |");
                    let _ = writeln!(out, " {number} | {display_line}");
                    let _ = writeln!(out, " {gutter} | {}{marker}", " ".repeat(marker_start));
                }
            }
            None => {
                let _ = writeln!(out, "  --> {}", file.display());
            }
        }
    }
    if let Some(policy) = &diagnostic.policy_id {
        let _ = writeln!(out, "  = policy: {policy}");
    }
    if let Some(help) = &diagnostic.help {
        let _ = writeln!(out, "  = help: {help}");
    }
    out
}

/// Renders a diagnostic as a GitHub Actions workflow command, which shows it inline on the
/// pull request's diff.
pub fn diagnostic_github(diagnostic: &Diagnostic) -> String {
    let mut properties = Vec::new();
    if let Some(file) = &diagnostic.file {
        properties.push(format!(
            "file={}",
            escape_github_property(&file.display().to_string())
        ));
        if let Some(location) = diagnostic.location {
            properties.push(format!("line={}", location.line));
            properties.push(format!("col={}", location.column));
        }
    }
    properties.push(format!(
        "title={}",
        escape_github_property(&format!("modelgate {}", diagnostic.code))
    ));
    let mut message = diagnostic.message.clone();
    if let Some(help) = &diagnostic.help {
        message.push_str("\nhelp: ");
        message.push_str(help);
    }
    format!(
        "::{} {}::{}",
        diagnostic.severity,
        properties.join(","),
        escape_github_data(&message)
    )
}

fn escape_github_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_github_property(text: &str) -> String {
    escape_github_data(text)
        .replace(':', "%3A")
        .replace(',', "%2C")
}

/// Renders a decision for a terminal: the outcome and status, the deciding policies with
/// file:line and reason, any evaluation errors, and the explanation.
pub fn decision_human(request: &CheckRequest, decision: &Decision) -> String {
    let mut out = String::new();
    let outcome = match decision.decision {
        Outcome::Allow => "ALLOW".to_string(),
        Outcome::Deny => match decision.status {
            Some(status) => format!("DENY {status}"),
            None => "DENY".to_string(),
        },
    };
    let _ = writeln!(
        out,
        "{outcome}  {} {} {}",
        request.principal, request.action, request.resource
    );
    for policy in &decision.policies {
        let _ = writeln!(
            out,
            "  {:<6} {}  {}:{}:{}",
            policy.effect.to_string(),
            policy.id,
            policy.file.display(),
            policy.line,
            policy.column
        );
        if let Some(reason) = &policy.reason {
            let _ = writeln!(out, "         {reason}");
        }
    }
    for error in &decision.errors {
        let _ = writeln!(
            out,
            "  error  {}  {}:{}:{}: {}",
            error.policy.id,
            error.policy.file.display(),
            error.policy.line,
            error.policy.column,
            error.message
        );
    }
    if let Some(seconds) = decision.retry_after_secs {
        let _ = writeln!(out, "  retry after: {seconds} s");
    }
    let _ = writeln!(out, "  why: {}", decision.explanation);
    out
}
