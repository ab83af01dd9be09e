//! Access-check requests: who calls what on which model, with the request's token facts.

use std::fmt;
use std::str::FromStr;

use cedar_policy::EntityUid;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The default ceiling for each token count in a request. Mistral's largest context window
/// is 256,000 tokens (codestral); 10 million leaves room for any model while keeping sums of
/// a few token counts far from Cedar's 64-bit overflow.
pub const DEFAULT_MAX_TOKENS: u64 = 10_000_000;

/// Token facts about one API request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestFacts {
    /// Estimated prompt tokens.
    pub input_tokens: u64,
    /// The `max_tokens` the caller asks for.
    pub max_output_tokens: u64,
    /// Whether the caller requests a streamed response.
    pub stream: bool,
}

/// One access-check request.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRequest {
    /// The caller: usually `ApiKey::"..."`, or `User::"..."`.
    pub principal: EntityUid,
    /// The action, such as `Action::"chat"`.
    pub action: EntityUid,
    /// The resource, usually `Model::"..."`.
    pub resource: EntityUid,
    /// Token facts.
    pub facts: RequestFacts,
    /// The request time (RFC 3339); the engine's clock when `None`.
    pub now: Option<String>,
    /// Extra context attributes, merged into the context record and validated by the schema.
    pub context: Map<String, Value>,
    /// Entities carried by the request (Cedar entity JSON), merged with the engine's data.
    pub entities: Vec<Value>,
}

/// A request that is malformed or does not fit the schema. Such a request is never
/// evaluated: callers must treat it as a denial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// An entity reference that does not parse.
    #[error("invalid {field} `{value}`: {message}")]
    InvalidEntity {
        /// `principal`, `action` or `resource`.
        field: &'static str,
        /// The text given.
        value: String,
        /// The problem, in words.
        message: String,
    },
    /// An entity type the schema does not declare.
    #[error("unknown entity type `{entity_type}` in {field}{}", suggestion_suffix(.suggestion))]
    UnknownEntityType {
        /// `principal` or `resource`.
        field: &'static str,
        /// The type given.
        entity_type: String,
        /// The closest declared type.
        suggestion: Option<String>,
    },
    /// An action the schema does not declare.
    #[error("unknown action `{action}`{}", suggestion_suffix(.suggestion))]
    UnknownAction {
        /// The action id given.
        action: String,
        /// The closest declared action.
        suggestion: Option<String>,
        /// Every declared action id, sorted.
        known: Vec<String>,
    },
    /// An action group (an action without `appliesTo`) given as the request's action.
    #[error("`{action}` is an action group, not an action a request can name")]
    ActionGroup {
        /// The group given.
        action: String,
        /// The actions in the group that requests can name, sorted.
        members: Vec<String>,
    },
    /// A token count outside `0..=max`.
    #[error("{field} is {value}, outside the accepted range 0..={max}")]
    TokensOutOfRange {
        /// The field name.
        field: &'static str,
        /// The value given, as text.
        value: String,
        /// The ceiling.
        max: u64,
    },
    /// A request time that is not RFC 3339.
    #[error("invalid `now` `{0}`: expected an RFC 3339 time such as `2026-12-04T12:00:00Z`")]
    InvalidTime(String),
    /// A request that lacks a required part, such as its model.
    #[error("incomplete request: {0}")]
    Incomplete(String),
    /// Request JSON that does not parse or has the wrong shape.
    #[error("invalid request JSON: {0}")]
    InvalidJson(String),
    /// Inline entities that do not parse or do not match the schema.
    #[error("invalid inline entities: {0}")]
    InvalidEntities(String),
    /// The principal, resource or context do not fit the action's declaration in the schema.
    #[error("request does not match the schema: {0}")]
    SchemaMismatch(String),
    /// The request's estimated cost is above the bound on usage counters.
    #[error("the request's estimated cost is {value} micro-USD, above the maximum {max}")]
    EstimateOutOfRange {
        /// The estimate, in micro-USD.
        value: u64,
        /// The bound.
        max: u64,
    },
    /// A model price attribute that is negative or not a `Long`.
    #[error("model `{resource}` has an invalid `{attribute}`: expected a non-negative Long")]
    InvalidModelPrice {
        /// The resource.
        resource: String,
        /// The attribute.
        attribute: String,
    },
}

fn suggestion_suffix(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(suggestion) => format!("; did you mean `{suggestion}`?"),
        None => String::new(),
    }
}

impl miette::Diagnostic for RequestError {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        if let RequestError::UnknownAction { known, .. } = self {
            return Some(Box::new(format!("declared actions: {}", known.join(", "))));
        }
        if let RequestError::ActionGroup { members, .. } = self {
            return Some(Box::new(format!(
                "name one of its actions: {}",
                members.join(", ")
            )));
        }
        let help = match self {
            RequestError::InvalidEntity { .. } => {
                "write entities as `Type::\"id\"`, for example `ApiKey::\"key-ana-ml\"`"
            }
            RequestError::UnknownEntityType { .. }
            | RequestError::UnknownAction { .. }
            | RequestError::ActionGroup { .. } => "the schema lists the declared entity types",
            RequestError::TokensOutOfRange { .. } => {
                "send a non-negative token count within the engine's `max_tokens` setting"
            }
            RequestError::InvalidTime(_) => "omit `now` to use the current time",
            RequestError::InvalidJson(_) | RequestError::Incomplete(_) => {
                "see the request format in the README (principal, action, model, tokens)"
            }
            RequestError::InvalidEntities(_) => {
                "write each inline entity in Cedar's entity JSON format (`uid`, `attrs`, `parents`), once, with the attributes its type declares in the schema"
            }
            RequestError::SchemaMismatch(_) => {
                "make the request match the action's `appliesTo` declaration in the schema"
            }
            RequestError::EstimateOutOfRange { .. } => "ask for fewer tokens",
            RequestError::InvalidModelPrice { .. } => {
                "fix the model's prices in the entity data (micro-USD per million tokens)"
            }
        };
        Some(Box::new(help))
    }
}

impl CheckRequest {
    /// Creates a request with zero tokens and no extra context.
    ///
    /// `principal` and `resource` are Cedar entity references (`ApiKey::"key-1"`; the quotes
    /// may be left out for plain ids). `action` is an action id (`chat`) or reference.
    pub fn new(principal: &str, action: &str, resource: &str) -> Result<Self, RequestError> {
        Ok(Self {
            principal: parse_entity("principal", principal, None)?,
            action: parse_entity("action", action, Some("Action"))?,
            resource: parse_entity("resource", resource, None)?,
            facts: RequestFacts::default(),
            now: None,
            context: Map::new(),
            entities: Vec::new(),
        })
    }

    /// Creates a request for an action on a model, named by its id.
    pub fn for_model(principal: &str, action: &str, model: &str) -> Result<Self, RequestError> {
        let resource = model_reference(model);
        Self::new(principal, action, &resource)
    }

    /// Sets the token facts.
    pub fn with_tokens(mut self, input_tokens: u64, max_output_tokens: u64) -> Self {
        self.facts.input_tokens = input_tokens;
        self.facts.max_output_tokens = max_output_tokens;
        self
    }

    /// Sets the request time (RFC 3339).
    pub fn at(mut self, now: impl Into<String>) -> Self {
        self.now = Some(now.into());
        self
    }

    /// Parses the JSON form of a request, as read by `modelgate check REQUEST` and from
    /// standard input.
    pub fn from_json(text: &str) -> Result<Self, RequestError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| RequestError::InvalidJson(e.to_string()))?;
        Self::from_json_value(value)
    }

    /// Builds a request from an already parsed JSON value.
    pub fn from_json_value(value: Value) -> Result<Self, RequestError> {
        let wire: WireRequest =
            serde_json::from_value(value).map_err(|e| RequestError::InvalidJson(e.to_string()))?;
        let resource = match (&wire.model, &wire.resource) {
            (Some(model), None) => model_reference(model),
            (None, Some(resource)) => resource.clone(),
            (Some(_), Some(_)) => {
                return Err(RequestError::InvalidJson(
                    "give either `model` or `resource`, not both".to_string(),
                ))
            }
            (None, None) => {
                return Err(RequestError::InvalidJson(
                    "missing `model` (or `resource` for actions on other entities)".to_string(),
                ))
            }
        };
        let action = wire.action.as_deref().unwrap_or("chat");
        let mut request = Self::new(&wire.principal, action, &resource)?;
        request.facts = RequestFacts {
            input_tokens: token_count("input_tokens", wire.input_tokens.as_ref())?,
            max_output_tokens: token_count("max_output_tokens", wire.max_output_tokens.as_ref())?,
            stream: wire.stream.unwrap_or(false),
        };
        request.now = wire.now;
        request.context = wire.context.unwrap_or_default();
        request.entities = wire.entities.unwrap_or_default();
        Ok(request)
    }
}

/// The JSON form of a request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRequest {
    principal: String,
    action: Option<String>,
    model: Option<String>,
    resource: Option<String>,
    input_tokens: Option<Value>,
    max_output_tokens: Option<Value>,
    stream: Option<bool>,
    now: Option<String>,
    context: Option<Map<String, Value>>,
    entities: Option<Vec<Value>>,
}

/// Reads a token count, which JSON may carry as any number; negative and fractional values
/// are rejected here rather than wrapped or rounded.
fn token_count(field: &'static str, value: Option<&Value>) -> Result<u64, RequestError> {
    let Some(value) = value else {
        return Ok(0);
    };
    let out_of_range = || RequestError::TokensOutOfRange {
        field,
        value: value.to_string(),
        max: DEFAULT_MAX_TOKENS,
    };
    match value {
        Value::Number(number) if number.is_f64() => Err(RequestError::InvalidJson(format!(
            "`{field}` must be a whole number of tokens, found `{number}`"
        ))),
        Value::Number(number) => number.as_u64().ok_or_else(out_of_range),
        other => Err(RequestError::InvalidJson(format!(
            "`{field}` must be a non-negative integer, found `{other}`"
        ))),
    }
}

fn model_reference(model: &str) -> String {
    if model.contains("::") {
        model.to_string()
    } else {
        format!("Model::{}", quote(model))
    }
}

fn quote(id: &str) -> String {
    serde_json::to_string(id).unwrap_or_else(|_| format!("\"{id}\""))
}

/// Parses `Type::"id"`, also accepting `Type::id` without quotes and, when `default_type` is
/// given, a bare id.
pub(crate) fn parse_entity(
    field: &'static str,
    text: &str,
    default_type: Option<&str>,
) -> Result<EntityUid, RequestError> {
    let text = text.trim();
    let candidate = match text.rsplit_once("::") {
        Some((entity_type, id)) if !id.starts_with('"') => format!("{entity_type}::{}", quote(id)),
        Some(_) => text.to_string(),
        None => match default_type {
            Some(entity_type) => format!("{entity_type}::{}", quote(text)),
            None => {
                return Err(RequestError::InvalidEntity {
                    field,
                    value: text.to_string(),
                    message: "expected `Type::\"id\"`".to_string(),
                })
            }
        },
    };
    EntityUid::from_str(&candidate).map_err(|error| RequestError::InvalidEntity {
        field,
        value: text.to_string(),
        message: error
            .iter()
            .next()
            .map_or_else(|| error.to_string(), ToString::to_string),
    })
}

/// Returns the candidate closest to `input` by edit distance, if it is close enough to be a
/// likely typo.
pub(crate) fn closest<'a>(
    input: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<String> {
    let limit = (input.chars().count() / 3).max(2);
    candidates
        .map(|candidate| (edit_distance(input, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min()
        .map(|(_, candidate)| candidate.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution =
                previous.get(j).copied().unwrap_or(usize::MAX) + usize::from(ca != *cb);
            let deletion = previous
                .get(j + 1)
                .copied()
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            let insertion = current
                .get(j)
                .copied()
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            current.push(substitution.min(deletion).min(insertion));
        }
        previous = current;
    }
    previous.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_without_quotes_parses() {
        let uid = parse_entity("principal", "ApiKey::key-1", None);
        assert_eq!(
            uid.map(|u| u.to_string()).ok(),
            Some("ApiKey::\"key-1\"".to_string())
        );
    }

    #[test]
    fn bare_action_gets_action_type() {
        let uid = parse_entity("action", "chat", Some("Action"));
        assert_eq!(
            uid.map(|u| u.to_string()).ok(),
            Some("Action::\"chat\"".to_string())
        );
    }

    #[test]
    fn bare_principal_is_rejected() {
        assert!(parse_entity("principal", "key-1", None).is_err());
    }

    #[test]
    fn closest_finds_typo() {
        let names = ["chat", "fim", "embeddings"];
        assert_eq!(closest("chta", names.into_iter()), Some("chat".to_string()));
        assert_eq!(closest("zzzzzzzz", names.into_iter()), None);
    }

    #[test]
    fn negative_tokens_are_rejected() {
        let error = CheckRequest::from_json(
            r#"{"principal":"User::\"a\"","action":"chat","model":"m","input_tokens":-5}"#,
        );
        assert!(matches!(
            error,
            Err(RequestError::TokensOutOfRange {
                field: "input_tokens",
                ..
            })
        ));
    }
}
