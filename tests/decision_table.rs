//! The role table of the shipped policy set, complete: every role with every model, at the
//! role's token cap and one token above it.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test helpers stop the test on a broken fixture"
)]

use modelgate::{CheckRequest, Engine, LoadOptions, Outcome, Status};

const NOW: &str = "2026-12-04T12:00:00Z";

const MODELS: [&str; 8] = [
    "mistral-small-latest",
    "mistral-embed",
    "codestral-latest",
    "mistral-large-latest",
    "mistral-medium-latest",
    "pixtral-large-latest",
    "ministral-8b-latest",
    "mistral-moderation-latest",
];

/// (role, key in ml-workspace, which has no workspace restriction, models, token cap)
const ROLES: [(&str, &str, &[&str], u64); 4] = [
    (
        "analyst",
        "key-ana-ml",
        &["mistral-small-latest", "mistral-embed"],
        500,
    ),
    (
        "developer",
        "key-devon-ml",
        &["mistral-small-latest", "mistral-embed", "codestral-latest"],
        2_000,
    ),
    (
        "senior",
        "key-sam-ml",
        &[
            "mistral-small-latest",
            "mistral-embed",
            "codestral-latest",
            "mistral-large-latest",
        ],
        4_000,
    ),
    ("admin", "key-ada-ml", &MODELS, 8_000),
];

fn engine() -> Engine {
    Engine::load(LoadOptions::new("policies", "schema")).expect("shipped policies load")
}

#[test]
fn role_table_at_and_above_cap() {
    let engine = engine();
    let mut checked = 0;
    for (role, key, allowed_models, cap) in ROLES {
        for model in MODELS {
            for tokens in [cap, cap + 1] {
                // Split the tokens between prompt and output: the cap applies to their sum.
                let input = tokens / 3;
                let request = CheckRequest::for_model(&format!("ApiKey::\"{key}\""), "chat", model)
                    .expect("valid request")
                    .with_tokens(input, tokens - input)
                    .at(NOW);
                let decision = engine.check(&request).expect("well-formed request");
                let model_allowed = allowed_models.contains(&model);
                let expected = if model_allowed && tokens <= cap {
                    Outcome::Allow
                } else {
                    Outcome::Deny
                };
                assert_eq!(
                    decision.decision, expected,
                    "{role} on {model} with {tokens} tokens: {}",
                    decision.explanation
                );
                if model_allowed && tokens > cap {
                    assert_eq!(
                        decision.policy_ids(),
                        [format!("{role}-token-cap").as_str()]
                    );
                    assert_eq!(decision.status, Some(Status::Forbidden));
                }
                if !model_allowed {
                    // No role grant matches, so the denial is Cedar's default deny.
                    assert!(decision
                        .policies
                        .iter()
                        .all(|p| p.id.ends_with("-token-cap")));
                    assert_eq!(decision.status, Some(Status::Forbidden));
                }
                if expected == Outcome::Allow {
                    assert_eq!(decision.policy_ids(), [format!("{role}-models").as_str()]);
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 4 * 8 * 2);
}

#[test]
fn role_grants_hold_for_users_without_keys() {
    let engine = engine();
    for (user, model, expected) in [
        ("ana", "mistral-embed", Outcome::Allow),
        ("ana", "codestral-latest", Outcome::Deny),
        ("devon", "codestral-latest", Outcome::Allow),
        ("sam", "mistral-large-latest", Outcome::Allow),
        ("sam", "pixtral-large-latest", Outcome::Deny),
        ("ada", "pixtral-large-latest", Outcome::Allow),
    ] {
        let request = CheckRequest::for_model(&format!("User::\"{user}\""), "chat", model)
            .expect("valid request")
            .with_tokens(100, 100)
            .at(NOW);
        let decision = engine.check(&request).expect("well-formed request");
        assert_eq!(
            decision.decision, expected,
            "{user} on {model}: {}",
            decision.explanation
        );
    }
}

/// (key id, action, model, requested tokens, expected status or `None` for an allow, deciding
/// policy or "" for a default deny)
type Row = (
    &'static str,
    &'static str,
    &'static str,
    u64,
    Option<u16>,
    &'static str,
);

#[test]
fn workspace_and_key_rules() {
    let engine = engine();
    let table: [Row; 12] = [
        (
            "key-ana-dev",
            "chat",
            "mistral-small-latest",
            100,
            None,
            "analyst-models",
        ),
        (
            "key-ana-dev",
            "embeddings",
            "mistral-embed",
            100,
            Some(403),
            "dev-workspace-models",
        ),
        (
            "key-devon-dev",
            "fim",
            "codestral-latest",
            100,
            None,
            "developer-models",
        ),
        (
            "key-devon-dev",
            "fim",
            "mistral-small-latest",
            100,
            Some(403),
            "fim-code-models-only",
        ),
        (
            "key-ada-prod",
            "chat",
            "mistral-small-latest",
            100,
            Some(403),
            "prod-workspace-service-keys-only",
        ),
        (
            "key-ci-release-prod",
            "chat",
            "codestral-latest",
            4_000,
            None,
            "service-key-models",
        ),
        (
            "key-ci-release-prod",
            "chat",
            "codestral-latest",
            4_001,
            Some(403),
            "service-token-cap",
        ),
        (
            "key-support-bot-prod",
            "embeddings",
            "mistral-embed",
            100,
            None,
            "service-key-models",
        ),
        (
            "key-support-bot-prod",
            "chat",
            "codestral-latest",
            100,
            Some(403),
            "",
        ),
        (
            "key-ana-old",
            "chat",
            "mistral-small-latest",
            100,
            Some(401),
            "revoked-api-key",
        ),
        (
            "key-devon-trial",
            "chat",
            "mistral-small-latest",
            100,
            Some(401),
            "expired-api-key",
        ),
        (
            "key-nobody",
            "chat",
            "mistral-small-latest",
            100,
            Some(401),
            "unknown-api-key",
        ),
    ];
    for (key, action, model, tokens, status, policy) in table {
        let request = CheckRequest::for_model(&format!("ApiKey::\"{key}\""), action, model)
            .expect("valid request")
            .with_tokens(0, tokens)
            .at(NOW);
        let decision = engine.check(&request).expect("well-formed request");
        let label = format!("{key} {action} {model} {tokens}: {}", decision.explanation);
        assert_eq!(decision.status.map(|s| s.code()), status, "{label}");
        let expected_ids: Vec<&str> = if policy.is_empty() {
            vec![]
        } else {
            vec![policy]
        };
        assert_eq!(decision.policy_ids(), expected_ids, "{label}");
    }
}

#[test]
fn key_expiry_follows_request_time() {
    let engine = engine();
    let request = |now: &str| {
        CheckRequest::for_model(
            "ApiKey::\"key-devon-trial\"",
            "chat",
            "mistral-small-latest",
        )
        .expect("valid request")
        .at(now)
    };
    let before = engine
        .check(&request("2026-04-10T08:59:59Z"))
        .expect("decision");
    assert_eq!(before.decision, Outcome::Allow, "{}", before.explanation);
    let at_expiry = engine
        .check(&request("2026-04-10T09:00:00Z"))
        .expect("decision");
    assert_eq!(at_expiry.policy_ids(), ["expired-api-key"]);
}

#[test]
fn admin_actions_only_for_admins() {
    let engine = engine();
    for (principal, expected) in [
        ("User::\"ada\"", Outcome::Allow),
        ("User::\"sam\"", Outcome::Deny),
        ("ApiKey::\"key-ada-ml\"", Outcome::Allow),
        ("ApiKey::\"key-ci-release-prod\"", Outcome::Deny),
    ] {
        let request = CheckRequest::new(principal, "revoke_key", "ApiKey::\"key-ana-ml\"")
            .expect("valid request")
            .at(NOW);
        let decision = engine.check(&request).expect("decision");
        assert_eq!(
            decision.decision, expected,
            "{principal}: {}",
            decision.explanation
        );
    }
}
