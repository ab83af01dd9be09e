//! Expansion of one written case over the lists in its `for_each` into concrete cases, one
//! per combination of values.

use serde_json::{Map, Value};

use crate::request::CheckRequest;
use crate::testing::format::{CaseError, WireCase};

/// The request fields of one concrete case.
#[derive(Debug, Clone, Default)]
pub(crate) struct CaseFields {
    pub principal: Option<String>,
    pub action: Option<String>,
    pub model: Option<String>,
    pub resource: Option<String>,
    pub input_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub stream: bool,
    pub now: Option<String>,
    pub context: Map<String, Value>,
}

impl CaseFields {
    /// Takes the fields written in the case; `fixture_now` applies when the case sets no `now`.
    pub fn from_wire(case: &WireCase, fixture_now: Option<&str>) -> Self {
        Self {
            principal: case.principal.clone(),
            action: case.action.clone(),
            model: case.model.clone(),
            resource: case.resource.clone(),
            input_tokens: case.input_tokens,
            max_output_tokens: case.max_output_tokens,
            stream: case.stream.unwrap_or(false),
            now: case.now.clone().or_else(|| fixture_now.map(str::to_string)),
            context: case.context.clone().unwrap_or_default(),
        }
    }

    /// Builds the request; the action defaults to `chat`.
    pub fn request(&self) -> Result<CheckRequest, CaseError> {
        let principal = self.principal.as_deref().ok_or_else(|| {
            CaseError::new(
                "the case has no `principal`",
                "add `\"principal\": \"ApiKey::key-id\"` to the case or to its `for_each`",
            )
        })?;
        let action = self.action.as_deref().unwrap_or("chat");
        let mut request = match (&self.model, &self.resource) {
            (Some(model), None) => CheckRequest::for_model(principal, action, model)?,
            (None, Some(resource)) => CheckRequest::new(principal, action, resource)?,
            (Some(_), Some(_)) => {
                return Err(CaseError::new(
                    "the case gives both `model` and `resource`",
                    "use `model` for models and `resource` for any other entity",
                ))
            }
            (None, None) => {
                return Err(CaseError::new(
                    "the case has no `model`",
                    "add `\"model\": \"mistral-small-latest\"` (or `resource` for actions on other entities)",
                ))
            }
        };
        request = request.with_tokens(
            self.input_tokens.unwrap_or(0),
            self.max_output_tokens.unwrap_or(0),
        );
        request.facts.stream = self.stream;
        request.now = self.now.clone();
        request.context = self.context.clone();
        Ok(request)
    }
}

/// One list of `for_each`: the field it sets and its values as text.
struct Axis {
    field: &'static str,
    values: Vec<String>,
}

/// Expands `case` into `(name, fields)` pairs. Without `for_each` this is the case itself.
///
/// Names get the values through `{field}` placeholders; values of fields without a
/// placeholder are appended as `[field=value, ...]`, so every expanded name is distinct.
pub(crate) fn expand_case(
    case: &WireCase,
    base: &CaseFields,
) -> Result<Vec<(String, CaseFields)>, String> {
    let Some(for_each) = &case.for_each else {
        return Ok(vec![(case.name.clone(), base.clone())]);
    };
    let strings = |values: &Option<Vec<String>>| values.clone();
    let numbers = |values: &Option<Vec<u64>>| {
        values
            .as_ref()
            .map(|list| list.iter().map(u64::to_string).collect::<Vec<_>>())
    };
    let candidates = [
        (
            "principal",
            strings(&for_each.principal),
            base.principal.is_some(),
        ),
        ("action", strings(&for_each.action), base.action.is_some()),
        ("model", strings(&for_each.model), base.model.is_some()),
        (
            "resource",
            strings(&for_each.resource),
            base.resource.is_some(),
        ),
        (
            "input_tokens",
            numbers(&for_each.input_tokens),
            base.input_tokens.is_some(),
        ),
        (
            "max_output_tokens",
            numbers(&for_each.max_output_tokens),
            base.max_output_tokens.is_some(),
        ),
    ];
    let mut axes = Vec::new();
    for (field, values, set_in_case) in candidates {
        let Some(values) = values else { continue };
        if set_in_case {
            return Err(format!(
                "case `{}` sets `{field}` both in the case and in `for_each`",
                case.name
            ));
        }
        if values.is_empty() {
            return Err(format!(
                "case `{}` has an empty `for_each.{field}` list",
                case.name
            ));
        }
        axes.push(Axis { field, values });
    }
    if axes.is_empty() {
        return Err(format!("case `{}` has an empty `for_each`", case.name));
    }

    let mut combinations: Vec<Vec<(&'static str, &str)>> = vec![Vec::new()];
    for axis in &axes {
        let mut next = Vec::with_capacity(combinations.len() * axis.values.len());
        for combination in &combinations {
            for value in &axis.values {
                let mut extended = combination.clone();
                extended.push((axis.field, value.as_str()));
                next.push(extended);
            }
        }
        combinations = next;
    }

    let mut expanded = Vec::with_capacity(combinations.len());
    for combination in combinations {
        let mut fields = base.clone();
        let mut name = case.name.clone();
        let mut appended = Vec::new();
        for (field, value) in &combination {
            set_field(&mut fields, field, value)?;
            let placeholder = format!("{{{field}}}");
            if name.contains(&placeholder) {
                name = name.replace(&placeholder, value);
            } else {
                appended.push(format!("{field}={value}"));
            }
        }
        if !appended.is_empty() {
            name = format!("{name} [{}]", appended.join(", "));
        }
        expanded.push((name, fields));
    }
    Ok(expanded)
}

fn set_field(fields: &mut CaseFields, field: &str, value: &str) -> Result<(), String> {
    let number = || {
        value
            .parse::<u64>()
            .map_err(|_| format!("`{value}` is not a token count"))
    };
    match field {
        "principal" => fields.principal = Some(value.to_string()),
        "action" => fields.action = Some(value.to_string()),
        "model" => fields.model = Some(value.to_string()),
        "resource" => fields.resource = Some(value.to_string()),
        "input_tokens" => fields.input_tokens = Some(number()?),
        "max_output_tokens" => fields.max_output_tokens = Some(number()?),
        other => return Err(format!("`{other}` cannot be expanded")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_case(json: &str) -> Option<WireCase> {
        serde_json::from_str(json).ok()
    }

    fn expanded_names(json: &str) -> Result<Vec<String>, String> {
        let case = wire_case(json).ok_or("case does not parse")?;
        let base = CaseFields::from_wire(&case, None);
        let expanded = expand_case(&case, &base)?;
        Ok(expanded.into_iter().map(|(name, _)| name).collect())
    }

    #[test]
    fn placeholder_takes_the_value() {
        let names = expanded_names(
            r#"{"name": "call {model}", "principal": "ApiKey::k", "expect": "allow",
                "for_each": {"model": ["a", "b"]}}"#,
        );
        assert_eq!(names, Ok(vec!["call a".to_string(), "call b".to_string()]));
    }

    #[test]
    fn values_without_placeholder_are_appended() {
        let names = expanded_names(
            r#"{"name": "call", "model": "m", "expect": "allow",
                "for_each": {"principal": ["User::a"], "input_tokens": [1, 2]}}"#,
        );
        assert_eq!(
            names,
            Ok(vec![
                "call [principal=User::a, input_tokens=1]".to_string(),
                "call [principal=User::a, input_tokens=2]".to_string(),
            ])
        );
    }

    #[test]
    fn field_in_case_and_for_each_is_rejected() {
        let names = expanded_names(
            r#"{"name": "x", "model": "m", "expect": "allow", "for_each": {"model": ["a"]}}"#,
        );
        assert_eq!(
            names,
            Err("case `x` sets `model` both in the case and in `for_each`".to_string())
        );
    }

    #[test]
    fn empty_list_is_rejected() {
        let names =
            expanded_names(r#"{"name": "x", "expect": "allow", "for_each": {"model": []}}"#);
        assert_eq!(
            names,
            Err("case `x` has an empty `for_each.model` list".to_string())
        );
    }

    #[test]
    fn fixture_now_applies_unless_case_sets_it() {
        let own = wire_case(r#"{"name": "x", "now": "2026-01-01T00:00:00Z", "expect": "allow"}"#);
        let inherited = wire_case(r#"{"name": "y", "expect": "allow"}"#);
        let fixture = Some("2026-12-04T12:00:00Z");
        assert_eq!(
            own.map(|case| CaseFields::from_wire(&case, fixture).now),
            Some(Some("2026-01-01T00:00:00Z".to_string()))
        );
        assert_eq!(
            inherited.map(|case| CaseFields::from_wire(&case, fixture).now),
            Some(Some("2026-12-04T12:00:00Z".to_string()))
        );
    }
}
