//! Engine behaviour on policy sets written to temporary directories: failing closed on
//! evaluation errors, action groups, inline entities, reload and sharing across threads.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test helpers stop the test on a broken fixture"
)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use modelgate::{
    CheckRequest, Engine, EngineOptions, ErrorPolicy, LoadOptions, Outcome, Reason, RequestError,
};
use serde_json::json;

const NOW: &str = "2026-12-04T12:00:00Z";

fn shipped_schema() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schema")
}

/// Writes `policies` and `entities` into a new temporary policy directory.
fn policy_dir(policies: &str, entities: serde_json::Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("policies.cedar"), policies).expect("write policies");
    fs::create_dir(dir.path().join("entities")).expect("create entities dir");
    fs::write(
        dir.path().join("entities/entities.json"),
        entities.to_string(),
    )
    .expect("write entities");
    dir
}

fn load(dir: &Path, error_policy: ErrorPolicy) -> Engine {
    let options = EngineOptions {
        error_policy,
        ..EngineOptions::default()
    };
    Engine::with_options(LoadOptions::new(dir, shipped_schema()), options)
        .expect("policy set loads")
}

fn user_in_team(user: &str, team: &str) -> serde_json::Value {
    json!({
        "uid": {"type": "User", "id": user},
        "attrs": {"email": format!("{user}@example.test"), "name": user},
        "parents": [{"type": "Team", "id": team}]
    })
}

fn chat(principal: &str, tokens: u64) -> CheckRequest {
    CheckRequest::for_model(principal, "chat", "mistral-small-latest")
        .expect("valid request")
        .with_tokens(0, tokens)
        .at(NOW)
}

/// A forbid whose condition overflows for large requests. Plain Cedar skips the erroring
/// forbid and lets the permit through.
const OVERFLOWING_FORBID: &str = r#"
@id("everyone-chats")
@reason("everyone may chat")
permit (principal, action == Action::"chat", resource);

@id("cost-guard")
@reason("requests that cost too much are refused")
@status("403")
forbid (principal, action == Action::"chat", resource)
when { context.request.total_tokens * 1000000000000000 > 9000000000000000000 };
"#;

#[test]
fn erroring_forbid_denies() {
    let dir = policy_dir(OVERFLOWING_FORBID, json!([user_in_team("u1", "ml")]));
    for error_policy in [ErrorPolicy::FailClosed, ErrorPolicy::IgnorePermitErrors] {
        let engine = load(dir.path(), error_policy);

        let small = engine
            .check(&chat("User::\"u1\"", 1_000))
            .expect("decision");
        assert_eq!(small.decision, Outcome::Allow, "{}", small.explanation);

        let huge = engine
            .check(&chat("User::\"u1\"", 10_000))
            .expect("decision");
        assert_eq!(
            huge.decision,
            Outcome::Deny,
            "{:?}: {}",
            error_policy,
            huge.explanation
        );
        assert_eq!(huge.reason, Reason::EvaluationFailed);
        assert_eq!(huge.policy_ids(), ["cost-guard"]);
        assert_eq!(huge.errors.len(), 1);
        assert!(
            huge.errors[0].message.contains("overflow"),
            "{}",
            huge.errors[0].message
        );
        assert_eq!(huge.errors[0].policy.line, 6);
    }
}

const ERRORING_PERMIT: &str = r#"
@id("overflowing-permit")
@reason("a permit whose condition overflows for large requests")
permit (principal, action == Action::"chat", resource)
when { context.request.total_tokens * 1000000000000000 > 0 };

@id("team-ml-chats")
@reason("team ml may chat")
permit (principal in Team::"ml", action == Action::"chat", resource);
"#;

#[test]
fn erroring_permit_denies_unless_relaxed() {
    let dir = policy_dir(ERRORING_PERMIT, json!([user_in_team("u1", "ml")]));

    let strict = load(dir.path(), ErrorPolicy::FailClosed);
    let decision = strict
        .check(&chat("User::\"u1\"", 10_000))
        .expect("decision");
    assert_eq!(decision.decision, Outcome::Deny);
    assert_eq!(decision.policy_ids(), ["overflowing-permit"]);

    let relaxed = load(dir.path(), ErrorPolicy::IgnorePermitErrors);
    let decision = relaxed
        .check(&chat("User::\"u1\"", 10_000))
        .expect("decision");
    assert_eq!(
        decision.decision,
        Outcome::Allow,
        "{}",
        decision.explanation
    );
    assert_eq!(decision.policy_ids(), ["team-ml-chats"]);
    // The error is still reported, even though the request is allowed.
    assert_eq!(decision.errors.len(), 1);
    assert_eq!(decision.errors[0].policy.id, "overflowing-permit");
}

#[test]
fn action_groups_come_from_the_schema() {
    let policies = r#"
@id("ml-inference")
@reason("team ml may call every inference action")
permit (principal in Team::"ml", action in Action::"inference", resource);
"#;
    let dir = policy_dir(policies, json!([user_in_team("u1", "ml")]));
    let engine = load(dir.path(), ErrorPolicy::FailClosed);

    let chat_decision = engine.check(&chat("User::\"u1\"", 10)).expect("decision");
    assert_eq!(
        chat_decision.decision,
        Outcome::Allow,
        "{}",
        chat_decision.explanation
    );

    let fine_tuning =
        CheckRequest::for_model("User::\"u1\"", "fine_tuning", "mistral-small-latest")
            .expect("valid request")
            .at(NOW);
    let decision = engine.check(&fine_tuning).expect("decision");
    assert_eq!(decision.decision, Outcome::Deny);
    assert_eq!(decision.reason, Reason::NoPermit);
}

#[test]
fn inline_entities_add_and_override_for_one_request() {
    let engine = Engine::load(LoadOptions::new("policies", "schema")).expect("shipped set loads");

    let guest_key = json!({
        "uid": {"type": "ApiKey", "id": "key-guest"},
        "attrs": {"created_at": "2026-12-01T00:00:00Z", "revoked": false},
        "parents": [{"type": "User", "id": "ana"}, {"type": "Workspace", "id": "ml-workspace"}]
    });
    let mut request = chat("ApiKey::\"key-guest\"", 100);
    request.entities = vec![guest_key];
    let decision = engine.check(&request).expect("decision");
    assert_eq!(
        decision.decision,
        Outcome::Allow,
        "{}",
        decision.explanation
    );

    let revoked_override = json!({
        "uid": {"type": "ApiKey", "id": "key-ana-ml"},
        "attrs": {"created_at": "2026-09-01T09:00:00Z", "revoked": true},
        "parents": [{"type": "User", "id": "ana"}, {"type": "Workspace", "id": "ml-workspace"}]
    });
    let mut request = chat("ApiKey::\"key-ana-ml\"", 100);
    request.entities = vec![revoked_override];
    let decision = engine.check(&request).expect("decision");
    assert_eq!(decision.policy_ids(), ["revoked-api-key"]);

    // The override lived for one request only.
    let decision = engine
        .check(&chat("ApiKey::\"key-ana-ml\"", 100))
        .expect("decision");
    assert_eq!(
        decision.decision,
        Outcome::Allow,
        "{}",
        decision.explanation
    );
}

#[test]
fn inline_entity_violating_schema_is_rejected() {
    let engine = Engine::load(LoadOptions::new("policies", "schema")).expect("shipped set loads");
    let mut request = chat("ApiKey::\"key-guest\"", 100);
    request.entities = vec![json!({
        "uid": {"type": "ApiKey", "id": "key-guest"},
        "attrs": {"created_at": "2026-12-01T00:00:00Z", "revoked": "no"},
        "parents": []
    })];
    let error = engine.check(&request).expect_err("schema violation");
    assert!(matches!(error, RequestError::InvalidEntities(_)), "{error}");
    // Cedar's cause names the attribute, not only "does not conform".
    assert!(error.to_string().contains("revoked"), "{error}");

    request.entities = vec![json!({
        "uid": {"type": "ApiKey", "id": "key-guest"},
        "attrs": {"created_at": "2026-12-01T00:00:00Z"},
        "parents": []
    })];
    let error = engine.check(&request).expect_err("missing attribute");
    assert!(error.to_string().contains("`revoked`"), "{error}");

    let guest = json!({
        "uid": {"type": "ApiKey", "id": "key-guest"},
        "attrs": {"created_at": "2026-12-01T00:00:00Z", "revoked": false},
        "parents": []
    });
    request.entities = vec![guest.clone(), guest];
    let error = engine.check(&request).expect_err("duplicate entity");
    assert!(error.to_string().contains("more than once"), "{error}");
}

#[test]
fn parent_of_undeclared_type_is_rejected() {
    // Cedar accepts a key directly under a role, because users may be in roles and keys in
    // users; the schema declares `ApiKey in [Workspace, User, Service]`.
    let key_under_role = json!({
        "uid": {"type": "ApiKey", "id": "key-boss"},
        "attrs": {"created_at": "2026-12-01T00:00:00Z", "revoked": false},
        "parents": [{"type": "Role", "id": "admin"}]
    });

    let engine = Engine::load(LoadOptions::new("policies", "schema")).expect("shipped set loads");
    let mut request = chat("ApiKey::\"key-boss\"", 100);
    request.entities = vec![key_under_role.clone()];
    let error = engine.check(&request).expect_err("undeclared parent type");
    assert!(matches!(error, RequestError::InvalidEntities(_)), "{error}");
    assert!(
        error.to_string().contains("has parent `Role::\"admin\"`"),
        "{error}"
    );

    let dir = policy_dir(
        r#"@id("admins") @reason("admins may chat")
permit (principal in Role::"admin", action == Action::"chat", resource);"#,
        json!([{"uid": {"type": "Role", "id": "admin"}, "attrs": {}, "parents": []}, key_under_role]),
    );
    let Err(error) = Engine::load(LoadOptions::new(dir.path(), shipped_schema())) else {
        panic!("an undeclared parent type in an entity file must not load");
    };
    let text = error.to_string();
    assert!(text.contains("entities.json"), "{text}");
    assert!(text.contains("has parent `Role::\"admin\"`"), "{text}");
}

#[test]
fn request_time_and_context_are_checked() {
    let engine = Engine::load(LoadOptions::new("policies", "schema")).expect("shipped set loads");

    let bad_time = chat("User::\"ana\"", 10).at("yesterday");
    assert!(matches!(
        engine.check(&bad_time),
        Err(RequestError::InvalidTime(_))
    ));

    let mut overriding = chat("User::\"ana\"", 10);
    overriding
        .context
        .insert("now".to_string(), json!("2020-01-01T00:00:00Z"));
    let error = engine
        .check(&overriding)
        .expect_err("`now` is set by the engine");
    assert!(error.to_string().contains("set by modelgate"), "{error}");

    let wrong_type = CheckRequest::from_json(
        r#"{"principal": "User::\"ana\"", "action": "chat", "model": "mistral-small-latest", "input_tokens": "1024"}"#,
    );
    assert!(matches!(wrong_type, Err(RequestError::InvalidJson(_))));

    let float = CheckRequest::from_json(
        r#"{"principal": "User::\"ana\"", "action": "chat", "model": "mistral-small-latest", "max_output_tokens": 1024.0}"#,
    );
    assert!(matches!(float, Err(RequestError::InvalidJson(_))));

    let wrong_resource_type =
        CheckRequest::new("User::\"ana\"", "chat", "Workspace::\"ml-workspace\"")
            .expect("parses")
            .at(NOW);
    let error = engine
        .check(&wrong_resource_type)
        .expect_err("chat applies to models");
    assert!(matches!(error, RequestError::SchemaMismatch(_)), "{error}");
}

#[test]
fn missing_schema_refuses_to_load() {
    let dir = policy_dir(OVERFLOWING_FORBID, json!([]));
    let empty_schema_dir = tempfile::tempdir().expect("temp dir");
    let error =
        Engine::load(LoadOptions::new(dir.path(), empty_schema_dir.path())).expect_err("no schema");
    assert!(
        error
            .to_string()
            .contains("no `.cedarschema` schema file found"),
        "{error}"
    );
}

#[test]
fn engine_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Engine>();

    let engine = Arc::new(Engine::load(LoadOptions::new("policies", "schema")).expect("loads"));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || {
                let request = chat("ApiKey::\"key-ana-ml\"", 100);
                (0..500)
                    .filter(|_| {
                        engine
                            .check(&request)
                            .map(|d| d.is_allowed())
                            .unwrap_or(false)
                    })
                    .count()
            })
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().expect("thread finishes"), 500);
    }
}

#[test]
fn failed_reload_keeps_last_good_set() {
    let dir = policy_dir(
        r#"@id("ml") @reason("team ml may chat") permit (principal in Team::"ml", action == Action::"chat", resource);"#,
        json!([user_in_team("u1", "ml")]),
    );
    let engine = load(dir.path(), ErrorPolicy::FailClosed);
    assert_eq!(engine.status().generation, 1);

    fs::write(
        dir.path().join("policies.cedar"),
        "permit (principal, action resource);",
    )
    .expect("write");
    let error = engine.reload().expect_err("syntax error");
    let first = error.errors().next().expect("one error");
    assert_eq!(first.location.map(|l| (l.line, l.column)), Some((1, 27)));

    let status = engine.status();
    assert_eq!(status.generation, 1);
    assert!(status.last_error.is_some());
    let decision = engine.check(&chat("User::\"u1\"", 10)).expect("decision");
    assert_eq!(decision.decision, Outcome::Allow);
    assert_eq!(decision.generation, 1);

    fs::write(
        dir.path().join("policies.cedar"),
        r#"@id("nobody") @reason("nobody may chat") @status("403") forbid (principal, action, resource);"#,
    )
    .expect("write");
    assert_eq!(engine.reload().expect("valid set"), 2);
    assert!(engine.status().last_error.is_none());
    let decision = engine.check(&chat("User::\"u1\"", 10)).expect("decision");
    assert_eq!(decision.decision, Outcome::Deny);
    assert_eq!(decision.generation, 2);
}

#[test]
fn schema_with_other_context_shape_rejects_requests() {
    // An action whose declared context is not the one modelgate builds: every request for
    // it must fail validation instead of being evaluated with an unexpected context.
    let schema_dir = tempfile::tempdir().expect("temp dir");
    fs::write(
        schema_dir.path().join("other.cedarschema"),
        r#"entity User;
entity Model;
action chat appliesTo { principal: [User], resource: [Model], context: { region: String } };
"#,
    )
    .expect("write schema");
    let dir = policy_dir(
        r#"@id("all") @reason("everyone") permit (principal, action, resource);"#,
        json!([]),
    );
    let engine = Engine::load(LoadOptions::new(dir.path(), schema_dir.path())).expect("loads");
    let error = engine
        .check(&chat("User::\"u1\"", 10))
        .expect_err("context does not match the schema");
    assert!(matches!(error, RequestError::SchemaMismatch(_)), "{error}");
}

/// Writes `extra.cedar` (u1 may call embeddings) into `dir`, and a copy of the shipped schema
/// into a new directory, which it returns with the schema text, so that tests can edit both.
fn add_extra_policy_and_schema(dir: &Path) -> (tempfile::TempDir, String) {
    fs::write(
        dir.join("extra.cedar"),
        r#"@id("extra") @reason("u1 may embed") permit (principal == User::"u1", action == Action::"embeddings", resource);"#,
    )
    .expect("write");
    let schema_dir = tempfile::tempdir().expect("temp dir");
    let schema_text =
        fs::read_to_string(shipped_schema().join("modelgate.cedarschema")).expect("schema");
    fs::write(schema_dir.path().join("s.cedarschema"), &schema_text).expect("write schema");
    (schema_dir, schema_text)
}

#[test]
fn reload_parses_only_changed_files() {
    let dir = policy_dir(
        r#"@id("team-3") @reason("team 3 may chat")
permit (principal in Team::"team-3", action == Action::"chat", resource);"#,
        json!([user_in_team("u1", "team-3")]),
    );
    let (schema_dir, schema_text) = add_extra_policy_and_schema(dir.path());
    let engine = Engine::load(LoadOptions::new(dir.path(), schema_dir.path())).expect("loads");
    assert_eq!(engine.status().parsed_files, 3);
    assert!(engine
        .check(&chat("User::\"u1\"", 10))
        .expect("decision")
        .is_allowed());

    // One changed policy file is parsed again; the other policy file and the entities are not.
    fs::write(
        dir.path().join("extra.cedar"),
        r#"@id("extra") @reason("u1 may moderate") permit (principal == User::"u1", action == Action::"moderation", resource);"#,
    )
    .expect("write");
    assert_eq!(engine.reload().expect("reloads"), 2);
    assert_eq!(engine.status().parsed_files, 1);
    assert_eq!(engine.status().policy_count, 2);

    // A changed entity file is parsed again and its data is used.
    fs::write(
        dir.path().join("entities/entities.json"),
        json!([user_in_team("u1", "team-4")]).to_string(),
    )
    .expect("write entities");
    assert_eq!(engine.reload().expect("reloads"), 3);
    assert_eq!(engine.status().parsed_files, 1);
    assert!(!engine
        .check(&chat("User::\"u1\"", 10))
        .expect("decision")
        .is_allowed());

    // Entities are parsed with the schema, so a schema change parses them again.
    fs::write(
        schema_dir.path().join("s.cedarschema"),
        schema_text + "\n// comment\n",
    )
    .expect("write");
    assert_eq!(engine.reload().expect("reloads"), 4);
    assert_eq!(engine.status().parsed_files, 1);

    // A deleted file leaves the set, and its cached parse goes with it.
    fs::remove_file(dir.path().join("extra.cedar")).expect("remove");
    assert_eq!(engine.reload().expect("reloads"), 5);
    assert_eq!(engine.status().policy_count, 1);
    assert_eq!(engine.status().parsed_files, 0);

    // An added entity file is merged in; when it is deleted again, its entities go too, even
    // though no file was parsed.
    fs::write(
        dir.path().join("entities/more.json"),
        json!([user_in_team("u2", "team-3")]).to_string(),
    )
    .expect("write entities");
    assert_eq!(engine.reload().expect("reloads"), 6);
    assert!(engine
        .check(&chat("User::\"u2\"", 10))
        .expect("decision")
        .is_allowed());
    fs::remove_file(dir.path().join("entities/more.json")).expect("remove");
    assert_eq!(engine.reload().expect("reloads"), 7);
    assert_eq!(engine.status().parsed_files, 0);
    assert!(!engine
        .check(&chat("User::\"u2\"", 10))
        .expect("decision")
        .is_allowed());
}

#[test]
fn reload_validates_only_changed_files() {
    let mut many = String::new();
    for team in 0..50 {
        many.push_str(&format!(
            "@id(\"team-{team}\") @reason(\"team {team} may chat\")\npermit (principal in Team::\"team-{team}\", action == Action::\"chat\", resource);\n"
        ));
    }
    let dir = policy_dir(&many, json!([user_in_team("u1", "team-3")]));
    let (schema_dir, schema_text) = add_extra_policy_and_schema(dir.path());
    let engine = Engine::load(LoadOptions::new(dir.path(), schema_dir.path())).expect("loads");
    assert_eq!(engine.status().validated_policies, 51);

    fs::write(
        dir.path().join("extra.cedar"),
        r#"@id("extra") @reason("u1 may moderate") permit (principal == User::"u1", action == Action::"moderation", resource);"#,
    )
    .expect("write");
    assert_eq!(engine.reload().expect("reloads"), 2);
    assert_eq!(engine.status().validated_policies, 1);
    assert_eq!(engine.status().policy_count, 51);
    assert!(engine
        .check(&chat("User::\"u1\"", 10))
        .expect("decision")
        .is_allowed());

    // A changed file that no longer validates is caught, and the set in use stays.
    fs::write(
        dir.path().join("extra.cedar"),
        r#"@id("extra") @reason("bad") permit (principal, action, resource) when { principal.nope };"#,
    )
    .expect("write");
    let error = engine.reload().expect_err("validation error");
    assert!(error.to_string().contains("extra.cedar"), "{error}");
    assert_eq!(engine.status().generation, 2);

    // A schema change validates every file again.
    fs::write(
        dir.path().join("extra.cedar"),
        r#"@id("extra") @reason("u1 may moderate") permit (principal == User::"u1", action == Action::"moderation", resource);"#,
    )
    .expect("write");
    fs::write(
        schema_dir.path().join("s.cedarschema"),
        schema_text + "\n// comment\n",
    )
    .expect("write");
    assert_eq!(engine.reload().expect("reloads"), 3);
    assert_eq!(engine.status().validated_policies, 51);

    // Within a changed file, only the changed policy is validated, and a text that
    // validated cleanly before is not validated again.
    let edited = many.replace(
        "permit (principal in Team::\"team-7\", action == Action::\"chat\"",
        "permit (principal in Team::\"team-7\", action == Action::\"moderation\"",
    );
    assert_ne!(edited, many);
    fs::write(dir.path().join("policies.cedar"), &edited).expect("write");
    assert_eq!(engine.reload().expect("reloads"), 4);
    assert_eq!(engine.status().validated_policies, 1);
    fs::write(dir.path().join("policies.cedar"), &many).expect("write");
    assert_eq!(engine.reload().expect("reloads"), 5);
    assert_eq!(engine.status().validated_policies, 0);

    // A changed policy that no longer validates is still caught.
    let broken = many.replace(
        "permit (principal in Team::\"team-7\", action == Action::\"chat\", resource)",
        "permit (principal in Team::\"team-7\", action == Action::\"chat\", resource) when { principal.nope }",
    );
    assert_ne!(broken, many);
    fs::write(dir.path().join("policies.cedar"), &broken).expect("write");
    let error = engine.reload().expect_err("validation error");
    assert!(error.to_string().contains("policies.cedar"), "{error}");
    assert_eq!(engine.status().generation, 5);
}
