//! The result of one access check: a value, never an `Err`, once the request is well formed.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// At least one permit matched, no forbid matched and no policy failed to evaluate.
    Allow,
    /// Anything else.
    Deny,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Allow => f.write_str("allow"),
            Outcome::Deny => f.write_str("deny"),
        }
    }
}

/// The HTTP status a caller should return for a denial, taken from a policy's `@status`
/// annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// 401: the caller is not (or no longer) authenticated, such as a revoked key.
    Unauthorized,
    /// 403: the caller is known but not allowed.
    Forbidden,
    /// 429: a quota or rate limit is exhausted; retrying later may succeed.
    TooManyRequests,
    /// 503: the usage counters could not be read, so modelgate denies rather than allow
    /// without counting. Never set by a policy.
    ServiceUnavailable,
}

impl Status {
    /// Parses the text of a `@status` annotation.
    pub fn from_annotation(value: &str) -> Option<Self> {
        match value.trim() {
            "401" => Some(Status::Unauthorized),
            "403" => Some(Status::Forbidden),
            "429" => Some(Status::TooManyRequests),
            _ => None,
        }
    }

    /// Returns the numeric HTTP status code.
    pub fn code(self) -> u16 {
        match self {
            Status::Unauthorized => 401,
            Status::Forbidden => 403,
            Status::TooManyRequests => 429,
            Status::ServiceUnavailable => 503,
        }
    }

    /// Orders statuses for a denial with several deciding policies: an authentication failure
    /// wins over a refusal, and a refusal wins over a quota, since retrying cannot fix it.
    pub(crate) fn precedence(self) -> u8 {
        match self {
            Status::Unauthorized => 0,
            Status::Forbidden => 1,
            Status::TooManyRequests => 2,
            Status::ServiceUnavailable => 3,
        }
    }
}

impl Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.code())
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

/// Permit or forbid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// A `permit` policy.
    Permit,
    /// A `forbid` policy.
    Forbid,
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Effect::Permit => f.write_str("permit"),
            Effect::Forbid => f.write_str("forbid"),
        }
    }
}

/// A policy that took part in a decision, with its source location and annotations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyRef {
    /// The policy id: its `@id` annotation, or `FILE#N` for the N-th policy of a file without one.
    pub id: String,
    /// Permit or forbid.
    pub effect: Effect,
    /// The file the policy is written in.
    pub file: PathBuf,
    /// 1-based line of the policy's first character (its first annotation).
    pub line: usize,
    /// 1-based column of the policy's first character.
    pub column: usize,
    /// The `@reason` annotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The `@status` annotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// The `@window` annotation of a quota policy: the usage window its limit counts in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<crate::quota::Window>,
}

/// A policy whose evaluation failed, for example on an integer overflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvaluationError {
    /// The policy that failed.
    pub policy: PolicyRef,
    /// Cedar's message.
    pub message: String,
}

/// The kind of reason behind a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// At least one permit matched and nothing forbade the request.
    Permitted,
    /// At least one forbid matched.
    Forbidden,
    /// No permit matched, so Cedar's default deny applies.
    NoPermit,
    /// A policy failed to evaluate and modelgate failed closed.
    EvaluationFailed,
    /// The usage counters could not be read, so the policies were not evaluated.
    UsageUnavailable,
}

/// The result of one access check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Allow or deny.
    pub decision: Outcome,
    /// The HTTP status for a denial; `None` for an allow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// The kind of reason behind the outcome.
    pub reason: Reason,
    /// The policies that determined the outcome: the matching forbids for a denial, the
    /// matching permits for an allow, the failing policies for a fail-closed denial, and none
    /// for a default deny.
    pub policies: Vec<PolicyRef>,
    /// Every policy that failed to evaluate, whatever the outcome.
    pub errors: Vec<EvaluationError>,
    /// One sentence explaining the outcome.
    pub explanation: String,
    /// The generation of the policy set that made the decision.
    pub generation: u64,
    /// For a 429 denial by policies with a `@window`: the seconds until the longest of
    /// their windows ends, for a `Retry-After` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl Decision {
    /// Returns `true` when the request is allowed.
    pub fn is_allowed(&self) -> bool {
        self.decision == Outcome::Allow
    }

    /// Returns the ids of the determining policies, in the decision's order.
    pub fn policy_ids(&self) -> Vec<&str> {
        self.policies
            .iter()
            .map(|policy| policy.id.as_str())
            .collect()
    }
}
