//! The parent types that the schema declares for each entity type, and the check that entity
//! data keeps to them.
//!
//! Cedar 4.14 accepts a parent whose type is any type the entity may have as an ancestor:
//! with `ApiKey in [User]` and `User in [Role]`, it accepts a key whose parent is a role. In
//! an access model that can hand a key a role's permissions without a user, so modelgate
//! also requires each parent's type to be one that the schema lists in the entity type's
//! own `in [...]`.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

/// The declared parent types of each entity type, by fully qualified type name.
#[derive(Debug, Default, Clone)]
pub(crate) struct ParentTypes {
    declared: HashMap<String, BTreeSet<String>>,
}

/// A parent whose type the schema does not declare for the entity's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UndeclaredParent {
    /// The entity, as `Type::"id"`.
    pub entity: String,
    /// The parent, as `Type::"id"`.
    pub parent: String,
    pub entity_type: String,
    /// The parent types the schema declares for `entity_type`.
    pub declared: Vec<String>,
}

impl UndeclaredParent {
    /// Returns the message for this problem.
    pub(crate) fn message(&self) -> String {
        format!(
            "entity `{}` has parent `{}`, but the schema declares `{} in [{}]`",
            self.entity,
            self.parent,
            self.entity_type,
            self.declared.join(", ")
        )
    }
}

impl ParentTypes {
    /// Adds the entity types of one schema fragment in Cedar's JSON schema format.
    pub(crate) fn add_fragment(&mut self, fragment: &Value) {
        let Some(namespaces) = fragment.as_object() else {
            return;
        };
        for (namespace, body) in namespaces {
            let Some(types) = body.get("entityTypes").and_then(Value::as_object) else {
                continue;
            };
            for (name, declaration) in types {
                let entry = self.declared.entry(qualify(namespace, name)).or_default();
                let parents = declaration
                    .get("memberOfTypes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str);
                for parent in parents {
                    // A name without `::` may mean the type in this namespace or a global
                    // one. Both are accepted, so the check never rejects a valid parent.
                    entry.insert(parent.to_string());
                    if !parent.contains("::") {
                        entry.insert(qualify(namespace, parent));
                    }
                }
            }
        }
    }

    /// Returns the parents in `entities` (Cedar's entity JSON format) whose type the schema
    /// does not declare for their entity's type. Entities of types the schema does not
    /// declare, and actions, are left to Cedar's own checks.
    pub(crate) fn undeclared<'a>(
        &self,
        entities: impl IntoIterator<Item = &'a Value>,
    ) -> Vec<UndeclaredParent> {
        let mut found = Vec::new();
        for entity in entities {
            let Some((entity_type, id)) = entity.get("uid").and_then(reference) else {
                continue;
            };
            let Some(declared) = self.declared.get(entity_type) else {
                continue;
            };
            let parents = entity
                .get("parents")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(reference);
            for (parent_type, parent_id) in parents {
                if !declared.contains(parent_type) {
                    found.push(UndeclaredParent {
                        entity: format!("{entity_type}::{}", quote(id)),
                        parent: format!("{parent_type}::{}", quote(parent_id)),
                        entity_type: entity_type.to_string(),
                        declared: declared.iter().cloned().collect(),
                    });
                }
            }
        }
        found
    }
}

/// Reads an entity reference, `{"type": .., "id": ..}` or `{"__entity": {...}}`.
fn reference(value: &Value) -> Option<(&str, &str)> {
    let value = value.get("__entity").unwrap_or(value);
    Some((value.get("type")?.as_str()?, value.get("id")?.as_str()?))
}

fn qualify(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}::{name}")
    }
}

/// Quotes an entity id as Cedar writes it.
fn quote(id: &str) -> String {
    serde_json::to_string(id).unwrap_or_else(|_| format!("\"{id}\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shipped_like() -> ParentTypes {
        let mut types = ParentTypes::default();
        types.add_fragment(&json!({"": {"entityTypes": {
            "Role": {},
            "User": {"memberOfTypes": ["Role"]},
            "ApiKey": {"memberOfTypes": ["User", "Workspace"]},
            "Workspace": {}
        }, "actions": {}}}));
        types
    }

    #[test]
    fn transitive_parent_type_is_undeclared() {
        let found = shipped_like().undeclared(&[json!({
            "uid": {"type": "ApiKey", "id": "k"},
            "attrs": {},
            "parents": [{"type": "User", "id": "ana"}, {"__entity": {"type": "Role", "id": "admin"}}]
        })]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].message(),
            "entity `ApiKey::\"k\"` has parent `Role::\"admin\"`, but the schema declares `ApiKey in [User, Workspace]`"
        );
    }

    #[test]
    fn declared_parents_and_unknown_types_pass() {
        let found = shipped_like().undeclared(&[
            json!({"uid": {"type": "User", "id": "ana"}, "parents": [{"type": "Role", "id": "r"}]}),
            json!({"uid": {"type": "Bogus", "id": "x"}, "parents": [{"type": "Role", "id": "r"}]}),
            json!({"uid": {"type": "Action", "id": "chat"}, "parents": [{"type": "Action", "id": "inference"}]}),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn namespaced_names_resolve_both_ways() {
        let mut types = ParentTypes::default();
        types.add_fragment(&json!({"Acme": {"entityTypes": {
            "Team": {},
            "User": {"memberOfTypes": ["Team"]}
        }, "actions": {}}}));
        let found = types.undeclared(&[json!({
            "uid": {"type": "Acme::User", "id": "u"},
            "parents": [{"type": "Acme::Team", "id": "t"}, {"type": "Acme::User", "id": "v"}]
        })]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].parent, "Acme::User::\"v\"");
    }
}
