//! Entity stores for requests that carry inline entities.
//!
//! Copying the snapshot's whole entity store for each such request costs time in proportion
//! to the store, so a request gets a small store instead: its inline entities plus every
//! entity of the snapshot that evaluation can reach. Evaluation reaches an entity only
//! through the request's principal, action and resource, an entity literal in an evaluated
//! policy, or an attribute or tag of an entity it reached. The small store also contains the
//! ancestors of every entity in it, so that Cedar computes the same ancestors for them as
//! it would in the full store.

use std::collections::HashSet;

use cedar_policy::{Entities, Entity, EntityUid, EvalResult};
use serde_json::Value;

use crate::diagnostic::message_with_causes;
use crate::request::RequestError;
use crate::snapshot::Snapshot;

/// A request's inline entities, parsed and checked against the schema.
#[derive(Debug)]
pub(crate) struct InlineEntities {
    entities: Vec<Entity>,
}

impl InlineEntities {
    /// Parses inline entities with the snapshot's schema, one by one: parsing them as one
    /// store would also build every action entity of the schema. Action entities come from
    /// the schema and are left out. A parent whose type the entity's type does not declare
    /// is rejected (see [`crate::parents`]).
    pub(crate) fn parse(snapshot: &Snapshot, inline: &[Value]) -> Result<Self, RequestError> {
        if let Some(problem) = snapshot.parent_types.undeclared(inline).first() {
            return Err(RequestError::InvalidEntities(problem.message()));
        }
        let mut entities = Vec::with_capacity(inline.len());
        let mut ids = HashSet::new();
        for value in inline {
            let entity = Entity::from_json_value(value.clone(), Some(&snapshot.schema))
                .map_err(|error| invalid_entities(&error))?;
            let uid = entity.uid();
            if is_action(&uid) {
                continue;
            }
            if !ids.insert(uid.clone()) {
                return Err(RequestError::InvalidEntities(format!(
                    "entity `{uid}` is given more than once"
                )));
            }
            entities.push(entity);
        }
        Ok(Self { entities })
    }

    /// Returns `base` with these entities added or replacing entities of the same id. The
    /// result copies `base`, so use it where it is built once (test fixtures).
    pub(crate) fn merge_into(
        &self,
        snapshot: &Snapshot,
        base: &Entities,
    ) -> Result<Entities, RequestError> {
        base.clone()
            .upsert_entities(self.entities.iter().cloned(), Some(&snapshot.schema))
            .map_err(|error| invalid_entities(&error))
    }

    /// Returns the store that evaluation reads when these entities are merged into `base`,
    /// limited to the entities reachable from `roots` and from these entities, and the
    /// references it followed (reached or not).
    ///
    /// For every entity in the result, its attributes, tags and ancestors are the same as
    /// in `merge_into`'s result, as long as `roots` contains the request's principal, action
    /// and resource and every entity literal of the policies evaluated.
    pub(crate) fn reachable_store<'a>(
        &self,
        snapshot: &Snapshot,
        base: &Entities,
        roots: impl IntoIterator<Item = &'a EntityUid>,
    ) -> Result<(Entities, HashSet<EntityUid>), RequestError> {
        let mut queue: Vec<EntityUid> = roots.into_iter().cloned().collect();
        for entity in &self.entities {
            queue.push(entity.uid());
            push_references(entity, &mut queue);
            // A parsed entity's ancestors are its parents until a store computes more.
            let (_, _, parents) = entity.clone().into_inner();
            queue.extend(parents);
        }

        // The base version of a replaced entity is included too, so that Cedar removes the
        // ancestors it gave its descendants, as it does when replacing in the full store.
        let mut seen: HashSet<EntityUid> = HashSet::new();
        let mut reached: Vec<Entity> = Vec::new();
        while let Some(uid) = queue.pop() {
            if seen.contains(&uid) {
                continue;
            }
            if let Some(entity) = base.get(&uid) {
                push_references(entity, &mut queue);
                if let Some(ancestors) = base.ancestors(&uid) {
                    queue.extend(ancestors.cloned());
                }
                reached.push(entity.clone());
            }
            seen.insert(uid);
        }

        // Entities from `base` conform to the schema already and carry their ancestors, so
        // only the inline entities are checked against the schema.
        let invalid =
            |error: cedar_policy::entities_errors::EntitiesError| invalid_entities(&error);
        let store = Entities::from_entities(reached, None).map_err(invalid)?;
        let store = store
            .upsert_entities(self.entities.iter().cloned(), Some(&snapshot.schema))
            .map_err(invalid)?;
        Ok((store, seen))
    }
}

/// Returns the error for inline entities that Cedar rejected, with Cedar's causes: the
/// top-level message alone ("entity does not conform to the schema") does not say which
/// attribute is wrong.
fn invalid_entities(error: &dyn std::error::Error) -> RequestError {
    RequestError::InvalidEntities(message_with_causes(error))
}

/// Queues the entities that `entity`'s attributes and tags refer to.
fn push_references(entity: &Entity, queue: &mut Vec<EntityUid>) {
    for (_, value) in entity.attrs().chain(entity.tags()) {
        // An attribute that is not a value (only possible in partial evaluation) refers to
        // nothing evaluation can reach.
        if let Ok(value) = value {
            push_value_references(&value, queue);
        }
    }
}

fn push_value_references(value: &EvalResult, queue: &mut Vec<EntityUid>) {
    match value {
        EvalResult::EntityUid(uid) => queue.push(uid.clone()),
        EvalResult::Set(set) => {
            for element in set.iter() {
                push_value_references(element, queue);
            }
        }
        EvalResult::Record(record) => {
            for (_, field) in record.iter() {
                push_value_references(field, queue);
            }
        }
        EvalResult::Bool(_)
        | EvalResult::Long(_)
        | EvalResult::String(_)
        | EvalResult::ExtensionValue(_) => {}
    }
}

/// Returns whether `uid` is an action, in any namespace.
fn is_action(uid: &EntityUid) -> bool {
    uid.type_name().basename() == "Action"
}

/// Collects the entity references in a policy's JSON form (Cedar's EST): `__entity`
/// literals and the entities of its scope. Returns `None` if the JSON has a reference that
/// does not parse, so that callers fall back to the full store.
pub(crate) fn entity_literals(json: &Value) -> Option<Vec<EntityUid>> {
    let mut found = Vec::new();
    collect_literals(json, &mut found)?;
    Some(found)
}

fn collect_literals(json: &Value, found: &mut Vec<EntityUid>) -> Option<()> {
    match json {
        Value::Object(object) => {
            if let (Some(Value::String(entity_type)), Some(Value::String(id))) =
                (object.get("type"), object.get("id"))
            {
                let entity_type = entity_type.parse().ok()?;
                found.push(EntityUid::from_type_name_and_id(
                    entity_type,
                    cedar_policy::EntityId::new(id),
                ));
            }
            // Annotations are strings, so `@type` and `@id` would read as a reference.
            let values = object
                .iter()
                .filter(|(key, _)| *key != "annotations")
                .map(|(_, value)| value);
            for value in values {
                collect_literals(value, found)?;
            }
        }
        Value::Array(values) => {
            for value in values {
                collect_literals(value, found)?;
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
    }
    Some(())
}
