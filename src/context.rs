//! The request context: which of modelgate's own attributes (`now`, `request`, `usage`) an
//! action's schema declares, and the Cedar context built for each check.

use std::cell::RefCell;

use cedar_policy::{Context, RestrictedExpression};
use serde_json::{json, Map, Value};

use crate::clock::format_millis;
use crate::quota::UsageView;
use crate::request::{CheckRequest, RequestError};
use crate::slice::ContextNeeds;
use crate::snapshot::Snapshot;

pub(crate) fn to_long(value: u64) -> i64 {
    // INVARIANT: token counts and estimates were checked against `max_tokens` and
    // COUNTER_MAX, far below `i64::MAX`.
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The set of modelgate's own context attributes an action's declared context has, found by
/// trying each shape against the schema at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContextShape {
    /// `now`, `request` (with `estimated_cost_micro_usd`) and `usage`: the shipped schema.
    Quota,
    /// `now` and `request` without cost or usage: schemas written before quotas existed.
    Basic,
    /// Neither: the caller supplies the whole context, which Cedar validates.
    Custom,
}

/// Builds the context that modelgate fills in itself: `now` (when `needs` names it),
/// `request` and, for the `Quota` shape, the `usage` counters named by `needs`. Building all
/// 120 counters took about 56 µs of a 98 µs check in one measurement, so callers pass only
/// the parts their policies read.
pub(crate) fn standard_context(
    shape: ContextShape,
    facts: &crate::request::RequestFacts,
    now_millis: i64,
    estimated_cost_micro_usd: u64,
    usage: &UsageView,
    needs: ContextNeeds,
) -> Result<Context, RequestError> {
    let total = facts.input_tokens.saturating_add(facts.max_output_tokens);
    let mut facts_pairs = vec![
        (
            "input_tokens".to_string(),
            RestrictedExpression::new_long(to_long(facts.input_tokens)),
        ),
        (
            "max_output_tokens".to_string(),
            RestrictedExpression::new_long(to_long(facts.max_output_tokens)),
        ),
        (
            "total_tokens".to_string(),
            RestrictedExpression::new_long(to_long(total)),
        ),
        (
            "stream".to_string(),
            RestrictedExpression::new_bool(facts.stream),
        ),
    ];
    if shape == ContextShape::Quota {
        facts_pairs.push((
            "estimated_cost_micro_usd".to_string(),
            RestrictedExpression::new_long(to_long(estimated_cost_micro_usd)),
        ));
    }
    let request_record = RestrictedExpression::new_record(facts_pairs)
        .map_err(|error| RequestError::SchemaMismatch(error.to_string()))?;
    let mut pairs = Vec::with_capacity(3);
    if needs.contains_now() {
        pairs.push(("now".to_string(), now_expression(now_millis)));
    }
    pairs.push(("request".to_string(), request_record));
    if shape == ContextShape::Quota {
        let usage_record = usage
            .context_record(needs)
            .map_err(RequestError::SchemaMismatch)?;
        pairs.push(("usage".to_string(), usage_record));
    }
    Context::from_pairs(pairs).map_err(|error| RequestError::SchemaMismatch(error.to_string()))
}

/// Returns `datetime("...")` for a time in milliseconds since the Unix epoch.
///
/// `RestrictedExpression::new_datetime` parses the name `datetime` with Cedar's grammar on
/// every call, which cost more than evaluating a small policy (cedar-policy 4.14). Each
/// thread keeps the expression of the last time it built, so checks within the same
/// millisecond, and batches and tests with a fixed `now`, build it once.
fn now_expression(now_millis: i64) -> RestrictedExpression {
    thread_local! {
        static LAST_NOW: RefCell<Option<(i64, RestrictedExpression)>> = const { RefCell::new(None) };
    }
    LAST_NOW.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((millis, expression)) = last.as_ref() {
            if *millis == now_millis {
                return expression.clone();
            }
        }
        let expression = RestrictedExpression::new_datetime(format_millis(now_millis));
        *last = Some((now_millis, expression.clone()));
        expression
    })
}

/// Builds the context with caller-supplied attributes, for validation by Cedar.
pub(crate) fn build_context(
    snapshot: &Snapshot,
    request: &CheckRequest,
    shape: ContextShape,
    now: &str,
    estimated_cost_micro_usd: u64,
    usage: &UsageView,
) -> Result<Context, RequestError> {
    let facts = request.facts;
    let total = facts.input_tokens.saturating_add(facts.max_output_tokens);
    let mut record = Map::new();
    if shape != ContextShape::Custom {
        record.insert(
            "now".to_string(),
            json!({"__extn": {"fn": "datetime", "arg": now}}),
        );
        let mut request_facts = json!({
            "input_tokens": facts.input_tokens,
            "max_output_tokens": facts.max_output_tokens,
            "total_tokens": total,
            "stream": facts.stream,
        });
        if shape == ContextShape::Quota {
            if let Some(facts) = request_facts.as_object_mut() {
                facts.insert(
                    "estimated_cost_micro_usd".to_string(),
                    json!(estimated_cost_micro_usd),
                );
            }
            record.insert("usage".to_string(), usage.context_json());
        }
        record.insert("request".to_string(), request_facts);
    }
    for (key, value) in &request.context {
        if record.contains_key(key) {
            return Err(RequestError::SchemaMismatch(format!(
                "context attribute `{key}` is set by modelgate and cannot be given in the request"
            )));
        }
        record.insert(key.clone(), value.clone());
    }
    Context::from_json_value(
        Value::Object(record),
        Some((&snapshot.schema, &request.action)),
    )
    .map_err(|error| RequestError::SchemaMismatch(error.to_string()))
}
