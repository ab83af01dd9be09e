//! The key audit: API keys never used or unused for a while (from the ledger's last-use
//! times), keys past a rotation age, expired keys and revoked keys.

use std::collections::HashMap;

use cedar_policy::EvalResult;
use serde::Serialize;

use crate::clock::{format_millis, parse_rfc3339_millis};
use crate::snapshot::Snapshot;

const DAY_MILLIS: i64 = 86_400_000;

/// The thresholds of a key audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditOptions {
    /// A key unused for this many days or more is reported.
    pub unused_days: u32,
    /// A key created this many days ago or more is due for rotation.
    pub rotation_days: u32,
    /// The time of the audit, in milliseconds since the epoch.
    pub now_millis: i64,
}

/// A problem found with one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Finding {
    /// The ledger has no use of the key.
    NeverUsed,
    /// The key's last use is at least `unused_days` ago.
    Unused {
        /// Whole days since the last use.
        days: i64,
    },
    /// The key was created at least `rotation_days` ago.
    RotationDue {
        /// Whole days since creation.
        age_days: i64,
    },
    /// The key's `expires_at` has passed.
    Expired,
    /// The key is revoked.
    Revoked,
}

impl Finding {
    /// Returns a short description for terminal output.
    pub fn describe(&self) -> String {
        match self {
            Finding::NeverUsed => "never used".to_string(),
            Finding::Unused { days } => format!("unused for {days} days"),
            Finding::RotationDue { age_days } => {
                format!("created {age_days} days ago, due for rotation")
            }
            Finding::Expired => "expired".to_string(),
            Finding::Revoked => "revoked".to_string(),
        }
    }
}

/// One key with its findings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyReport {
    /// The key, as a Cedar entity reference.
    pub key: String,
    /// `created_at` (RFC 3339), when the entity has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// `expires_at` (RFC 3339), when the entity has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The last use recorded in the ledger (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
    /// The problems found; empty for a key that needs no attention.
    pub findings: Vec<Finding>,
}

/// Audits every `ApiKey` entity of `snapshot`, sorted by key. `last_used` maps key
/// references to milliseconds since the epoch, as [`super::Ledger::last_used`] returns.
pub fn audit_keys(
    snapshot: &Snapshot,
    last_used: &HashMap<String, i64>,
    options: AuditOptions,
) -> Vec<KeyReport> {
    let mut reports: Vec<KeyReport> = snapshot
        .cedar_entities()
        .iter()
        .filter(|entity| entity.uid().type_name().to_string() == "ApiKey")
        .map(|entity| {
            let key = entity.uid().to_string();
            let created = datetime_attr(entity, "created_at");
            let expires = datetime_attr(entity, "expires_at");
            let revoked = matches!(entity.attr("revoked"), Some(Ok(EvalResult::Bool(true))));
            let last = last_used.get(&key).copied();

            let mut findings = Vec::new();
            if revoked {
                findings.push(Finding::Revoked);
            }
            if expires.is_some_and(|at| at <= options.now_millis) {
                findings.push(Finding::Expired);
            }
            match last {
                None => findings.push(Finding::NeverUsed),
                Some(at) => {
                    let days = (options.now_millis - at).div_euclid(DAY_MILLIS);
                    if days >= i64::from(options.unused_days) {
                        findings.push(Finding::Unused { days });
                    }
                }
            }
            if let Some(at) = created {
                let age_days = (options.now_millis - at).div_euclid(DAY_MILLIS);
                if age_days >= i64::from(options.rotation_days) {
                    findings.push(Finding::RotationDue { age_days });
                }
            }
            KeyReport {
                key,
                created_at: created.map(format_millis),
                expires_at: expires.map(format_millis),
                last_used: last.map(format_millis),
                findings,
            }
        })
        .collect();
    reports.sort_by(|a, b| a.key.cmp(&b.key));
    reports
}

/// Reads a `datetime` attribute as milliseconds since the epoch.
fn datetime_attr(entity: &cedar_policy::Entity, name: &str) -> Option<i64> {
    let Some(Ok(EvalResult::ExtensionValue(text))) = entity.attr(name) else {
        return None;
    };
    // Cedar renders the value as `datetime("...")`; the argument is RFC 3339.
    let inner = text
        .split_once('"')
        .and_then(|(_, rest)| rest.rsplit_once('"'))
        .map_or(text.as_str(), |(inner, _)| inner);
    parse_rfc3339_millis(inner)
}
