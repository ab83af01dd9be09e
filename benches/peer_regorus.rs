//! Peer comparison: the shipped policy set's base rules in Cedar through modelgate, against
//! the same rules in Rego run by regorus's compiled virtual machine (RVM). Decisions are
//! checked equal on every key, model and token level before anything is timed.
//!
//! Run with `cargo bench --features peer-bench --bench peer_regorus`.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark on a broken fixture should stop"
)]

use std::fs;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use modelgate::{CheckRequest, Engine, LoadOptions};
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::RegoVM;
use serde_json::{json, Map, Value};

const NOW: &str = "2026-12-04T12:00:00Z";
const ENTRY: &str = "data.modelgate.allow";

fn entity_files() -> Vec<Value> {
    let mut all = Vec::new();
    for entry in fs::read_dir("policies/entities").expect("entity dir") {
        let text = fs::read_to_string(entry.expect("entry").path()).expect("read");
        let Value::Array(items) = serde_json::from_str(&text).expect("json") else {
            panic!("entity file is not an array");
        };
        all.extend(items);
    }
    all
}

fn nanos(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .expect("valid time")
        .timestamp_nanos_opt()
        .expect("in range")
}

fn uid_of(value: &Value) -> (String, String) {
    let uid = value.get("__entity").unwrap_or(value);
    (
        uid["type"].as_str().expect("type").to_string(),
        uid["id"].as_str().expect("id").to_string(),
    )
}

fn parent_of(entity: &Value, entity_type: &str) -> Option<String> {
    entity["parents"]
        .as_array()
        .expect("parents")
        .iter()
        .map(uid_of)
        .find(|(t, _)| t == entity_type)
        .map(|(_, id)| id)
}

/// Converts the Cedar entity data into the shape the Rego rules read.
fn rego_data(entities: &[Value]) -> Value {
    let (mut keys, mut users, mut models, mut services) =
        (Map::new(), Map::new(), Map::new(), Map::new());
    for entity in entities {
        let (entity_type, id) = uid_of(&entity["uid"]);
        let attrs = &entity["attrs"];
        match entity_type.as_str() {
            "ApiKey" => {
                let mut key = json!({
                    "revoked": attrs["revoked"],
                    "workspace": parent_of(entity, "Workspace"),
                    // A key without expiry never expires.
                    "expires_at_ns": i64::MAX,
                });
                if let Some(user) = parent_of(entity, "User") {
                    key["owner_user"] = json!(user);
                }
                if let Some(service) = attrs.get("service") {
                    key["service"] = json!(uid_of(service).1);
                }
                if let Some(expires) = attrs.get("expires_at") {
                    let text = expires["__extn"]["arg"]
                        .as_str()
                        .or(expires.as_str())
                        .expect("time");
                    key["expires_at_ns"] = json!(nanos(text));
                }
                keys.insert(id, key);
            }
            "User" => {
                users.insert(id, json!({"role": parent_of(entity, "Role")}));
            }
            "Model" => {
                models.insert(
                    id,
                    json!({"tier": parent_of(entity, "ModelTier"), "family": attrs["family"]}),
                );
            }
            "Service" => {
                let models: Vec<String> = attrs["models"]
                    .as_array()
                    .expect("models")
                    .iter()
                    .map(|m| uid_of(m).1)
                    .collect();
                services.insert(
                    id,
                    json!({"models": models, "max_tokens_per_request": attrs["max_tokens_per_request"]}),
                );
            }
            _ => {}
        }
    }
    json!({"keys": keys, "users": users, "models": models, "services": services})
}

fn rego_input(key: &str, action: &str, model: &str, tokens: u64) -> Value {
    json!({"principal": key, "action": action, "model": model, "total_tokens": tokens, "now_ns": nanos(NOW)})
}

fn to_regorus(value: &Value) -> regorus::Value {
    regorus::Value::from_json_str(&value.to_string()).expect("valid JSON")
}

fn bench_peer(c: &mut Criterion) {
    let engine = Engine::load(LoadOptions::new("policies", "schema")).expect("shipped set loads");
    let entities = entity_files();
    let data = rego_data(&entities);

    let mut rego = regorus::Engine::new();
    rego.add_policy(
        "modelgate.rego".to_string(),
        fs::read_to_string("benches/peer/modelgate.rego").expect("rego policy"),
    )
    .expect("rego parses");
    rego.add_data(to_regorus(&data)).expect("data loads");
    let compiled = rego
        .compile_with_entrypoint(&ENTRY.into())
        .expect("compiles");
    let program = Compiler::compile_from_policy(&compiled, &[ENTRY]).expect("compiles to RVM");
    let mut vm = RegoVM::new_with_policy(compiled.clone());
    vm.load_program(program);
    vm.set_data(to_regorus(&data)).expect("data");

    let keys: Vec<String> = data["keys"]
        .as_object()
        .expect("keys")
        .keys()
        .cloned()
        .collect();
    let models: Vec<String> = data["models"]
        .as_object()
        .expect("models")
        .keys()
        .cloned()
        .collect();
    let mut compared = 0;
    for key in &keys {
        for model in &models {
            for action in ["chat", "fim", "embeddings"] {
                for tokens in [100, 500, 501, 2_000, 2_001, 4_000, 4_001, 8_000, 8_001] {
                    let request =
                        CheckRequest::for_model(&format!("ApiKey::\"{key}\""), action, model)
                            .expect("request")
                            .with_tokens(0, tokens)
                            .at(NOW);
                    let cedar = engine.check(&request).expect("decision").is_allowed();
                    vm.set_input(to_regorus(&rego_input(key, action, model, tokens)));
                    let rego_allows = vm.execute_entry_point_by_name(ENTRY).expect("rego runs")
                        == regorus::Value::from(true);
                    assert_eq!(cedar, rego_allows, "{key} {action} {model} {tokens}");
                    compared += 1;
                }
            }
        }
    }
    println!("decisions compared before timing: {compared}, all equal");

    let request = CheckRequest::for_model("ApiKey::\"key-ana-ml\"", "chat", "mistral-small-latest")
        .expect("request")
        .with_tokens(120, 300)
        .at(NOW);
    let input = to_regorus(&rego_input(
        "key-ana-ml",
        "chat",
        "mistral-small-latest",
        420,
    ));
    let mut group = c.benchmark_group("peer_shipped_rules");
    group.bench_function("modelgate_check", |b| {
        b.iter(|| engine.check(black_box(&request)))
    });
    group.bench_function("regorus_rvm", |b| {
        b.iter(|| {
            vm.set_input(input.clone());
            vm.execute_entry_point_by_name(ENTRY)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_peer);
criterion_main!(benches);
