//! Differential test of policy slicing: on random policy sets over random entity hierarchies,
//! the sliced engine must give the same decision, determining policies and errors as Cedar
//! evaluating every policy.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test helpers stop the test on a broken fixture"
)]

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use modelgate::{CheckRequest, Decision, Engine, EngineOptions, LoadOptions};
use serde_json::{json, Value};

const SCHEMA: &str = r#"
entity Org;
entity Team in [Org];
entity Group in [Group, Team, Org];
entity User in [Group, Team] { level: Long, flag?: Bool, manager?: User };
entity Folder in [Folder];
entity Doc in [Folder] { size: Long };

type RequestFacts = { input_tokens: Long, max_output_tokens: Long, total_tokens: Long, stream: Bool };
type RequestContext = { now: datetime, request: RequestFacts };

action all;
action write in [all];
action read, list in [all];
action edit, delete in [write];
action share in [write, read];
action read_doc, edit_doc, delete_doc, share_doc, list_doc, audit in [read, edit, delete, share, list]
  appliesTo { principal: [User], resource: [Doc, Folder], context: RequestContext };
"#;

const LEAF_ACTIONS: [&str; 6] = [
    "read_doc",
    "edit_doc",
    "delete_doc",
    "share_doc",
    "list_doc",
    "audit",
];
const ALL_ACTIONS: [&str; 12] = [
    "all",
    "write",
    "read",
    "list",
    "edit",
    "delete",
    "share",
    "read_doc",
    "edit_doc",
    "delete_doc",
    "share_doc",
    "audit",
];

/// A small deterministic generator (xorshift64*), so that a failure reproduces from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

struct World {
    users: Vec<String>,
    groups: Vec<String>,
    teams: Vec<String>,
    orgs: Vec<String>,
    folders: Vec<String>,
    docs: Vec<String>,
    entities: Vec<Value>,
}

fn uid<S: AsRef<str> + ?Sized>(entity_type: &str, id: &S) -> Value {
    json!({"type": entity_type, "id": id.as_ref()})
}

fn world(rng: &mut Rng) -> World {
    let orgs: Vec<String> = (0..2).map(|i| format!("org{i}")).collect();
    let teams: Vec<String> = (0..5).map(|i| format!("team{i}")).collect();
    let groups: Vec<String> = (0..8).map(|i| format!("group{i}")).collect();
    let users: Vec<String> = (0..30).map(|i| format!("user{i}")).collect();
    let folders: Vec<String> = (0..6).map(|i| format!("folder{i}")).collect();
    let docs: Vec<String> = (0..12).map(|i| format!("doc{i}")).collect();
    let mut entities = Vec::new();

    for org in &orgs {
        entities.push(json!({"uid": uid("Org", org), "attrs": {}, "parents": []}));
    }
    for team in &teams {
        entities.push(json!({"uid": uid("Team", team), "attrs": {}, "parents": [uid("Org", rng.pick(&orgs))]}));
    }
    for (i, group) in groups.iter().enumerate() {
        let mut parents = vec![uid("Team", rng.pick(&teams))];
        // Groups nest in earlier groups, giving hierarchies of several levels.
        if i > 0 && rng.chance(60) {
            parents.push(uid("Group", &groups[rng.below(i)]));
        }
        if rng.chance(20) {
            parents.push(uid("Org", rng.pick(&orgs)));
        }
        entities.push(json!({"uid": uid("Group", group), "attrs": {}, "parents": parents}));
    }
    for (i, user) in users.iter().enumerate() {
        let mut parents = Vec::new();
        for _ in 0..rng.below(3) {
            parents.push(uid("Group", rng.pick(&groups)));
        }
        if rng.chance(30) {
            parents.push(uid("Team", rng.pick(&teams)));
        }
        let mut attrs = json!({"level": rng.below(10)});
        if rng.chance(50) {
            attrs["flag"] = json!(rng.chance(50));
        }
        // Managers are entity-valued attributes, which inline entities may point into.
        if i > 0 && rng.chance(40) {
            attrs["manager"] = uid("User", &users[rng.below(i)]);
        }
        entities.push(json!({"uid": uid("User", user), "attrs": attrs, "parents": parents}));
    }
    for (i, folder) in folders.iter().enumerate() {
        let parents = if i > 0 && rng.chance(70) {
            vec![uid("Folder", &folders[rng.below(i)])]
        } else {
            vec![]
        };
        entities.push(json!({"uid": uid("Folder", folder), "attrs": {}, "parents": parents}));
    }
    for doc in &docs {
        entities.push(json!({
            "uid": uid("Doc", doc),
            "attrs": {"size": rng.below(1000)},
            "parents": [uid("Folder", rng.pick(&folders))]
        }));
    }
    World {
        users,
        groups,
        teams,
        orgs,
        folders,
        docs,
        entities,
    }
}

fn principal_scope(rng: &mut Rng, world: &World) -> String {
    let some_principal_ancestor = |rng: &mut Rng| -> String {
        match rng.below(4) {
            0 => format!("Group::\"{}\"", rng.pick(&world.groups)),
            1 => format!("Team::\"{}\"", rng.pick(&world.teams)),
            2 => format!("Org::\"{}\"", rng.pick(&world.orgs)),
            _ => format!("User::\"{}\"", rng.pick(&world.users)),
        }
    };
    match rng.below(6) {
        0 => "principal".to_string(),
        1 => format!("principal == User::\"{}\"", rng.pick(&world.users)),
        2 => format!("principal in {}", some_principal_ancestor(rng)),
        3 => "principal is User".to_string(),
        4 => format!("principal is User in {}", some_principal_ancestor(rng)),
        _ => format!("principal in {}", some_principal_ancestor(rng)),
    }
}

fn action_scope(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => "action".to_string(),
        1 => format!("action == Action::\"{}\"", rng.pick(&LEAF_ACTIONS)),
        2 => format!("action in Action::\"{}\"", rng.pick(&ALL_ACTIONS)),
        _ => {
            let list: Vec<String> = (0..1 + rng.below(3))
                .map(|_| format!("Action::\"{}\"", rng.pick(&ALL_ACTIONS)))
                .collect();
            format!("action in [{}]", list.join(", "))
        }
    }
}

fn resource_scope(rng: &mut Rng, world: &World) -> String {
    match rng.below(6) {
        0 | 1 => "resource".to_string(),
        2 => format!("resource == Doc::\"{}\"", rng.pick(&world.docs)),
        3 => format!("resource in Folder::\"{}\"", rng.pick(&world.folders)),
        4 => format!("resource is {}", rng.pick(&["Doc", "Folder"])),
        _ => format!(
            "resource is Doc in Folder::\"{}\"",
            rng.pick(&world.folders)
        ),
    }
}

/// Request times; the `now` conditions below compare with the middle one.
const TIMES: [&str; 3] = [
    "2026-06-01T00:00:00Z",
    "2026-12-04T12:00:00Z",
    "2027-03-01T08:30:00.250Z",
];

fn condition(rng: &mut Rng, world: &World) -> String {
    match rng.below(13) {
        // Reads an entity reached through an attribute, and entities named by literals.
        10 => "when { principal has manager && principal.manager.level > 4 }".to_string(),
        11 => format!(
            "when {{ principal has manager && principal.manager in Group::\"{}\" }}",
            rng.pick(&world.groups)
        ),
        12 => format!("unless {{ Doc::\"{}\".size > 500 }}", rng.pick(&world.docs)),
        // `context.now` is left out of the context when no sliced policy reads it, so every
        // way of reading it must be found.
        7 => "when { context.now > datetime(\"2026-12-04T12:00:00Z\") }".to_string(),
        8 => "unless { context[\"now\"] < datetime(\"2026-12-04T12:00:00Z\") }".to_string(),
        9 => "when { context has now && principal.level > 3 }".to_string(),
        0 | 1 => String::new(),
        2 => format!("when {{ principal.level > {} }}", rng.below(10)),
        // Overflows for large requests, so that some policies fail to evaluate.
        3 => "when { context.request.total_tokens * 1000000000000000 > 5 }".to_string(),
        4 => "unless { principal has flag && principal.flag }".to_string(),
        5 => format!(
            "when {{ resource has size && resource.size < {} }}",
            rng.below(1000)
        ),
        _ => format!(
            "when {{ context.request.total_tokens <= {} }}",
            rng.below(20_000)
        ),
    }
}

fn policy_set(rng: &mut Rng, world: &World, count: usize) -> String {
    let mut text = String::new();
    for i in 0..count {
        let effect = if rng.chance(8) { "forbid" } else { "permit" };
        let _ = writeln!(
            text,
            "@id(\"p{i}\") @reason(\"generated\") @status(\"403\")\n{effect} ({}, {}, {})\n{};\n",
            principal_scope(rng, world),
            action_scope(rng),
            resource_scope(rng, world),
            condition(rng, world),
        );
    }
    text
}

fn write_set(dir: &Path, world: &World, policies: &str) {
    fs::create_dir_all(dir.join("policies/entities")).expect("create dirs");
    fs::create_dir_all(dir.join("schema")).expect("create schema dir");
    fs::write(dir.join("schema/test.cedarschema"), SCHEMA).expect("write schema");
    fs::write(dir.join("policies/generated.cedar"), policies).expect("write policies");
    fs::write(
        dir.join("policies/entities/entities.json"),
        Value::Array(world.entities.clone()).to_string(),
    )
    .expect("write entities");
}

fn engine(dir: &Path, slicing: bool) -> Engine {
    let options = EngineOptions {
        policy_slicing: slicing,
        ..EngineOptions::default()
    };
    Engine::with_options(
        LoadOptions::new(dir.join("policies"), dir.join("schema")),
        options,
    )
    .expect("generated set loads")
}

fn summary(decision: &Decision) -> (String, Vec<String>, Vec<(String, String)>, String) {
    (
        decision.decision.to_string(),
        decision.policies.iter().map(|p| p.id.clone()).collect(),
        decision
            .errors
            .iter()
            .map(|e| (e.policy.id.clone(), e.message.clone()))
            .collect(),
        format!("{:?}", decision.reason),
    )
}

/// A random world and policy set on disk, loaded with and without slicing.
struct Generated {
    world: World,
    policies: String,
    sliced: Engine,
    unsliced: Engine,
    _dir: tempfile::TempDir,
}

fn generate(rng: &mut Rng) -> Generated {
    let world = world(rng);
    let count = 30 + rng.below(120);
    let policies = policy_set(rng, &world, count);
    let dir = tempfile::tempdir().expect("temp dir");
    write_set(dir.path(), &world, &policies);
    Generated {
        sliced: engine(dir.path(), true),
        unsliced: engine(dir.path(), false),
        world,
        policies,
        _dir: dir,
    }
}

#[test]
fn sliced_decisions_equal_unsliced() {
    let mut compared = 0;
    let mut allowed = 0;
    let mut with_errors = 0;
    for seed in 1..=12u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let Generated {
            world,
            policies,
            sliced,
            unsliced,
            _dir,
        } = generate(&mut rng);

        for _ in 0..400 {
            let principal = if rng.chance(5) {
                "User::\"ghost\"".to_string()
            } else {
                format!("User::\"{}\"", rng.pick(&world.users))
            };
            let resource = if rng.chance(70) {
                format!("Doc::\"{}\"", rng.pick(&world.docs))
            } else {
                format!("Folder::\"{}\"", rng.pick(&world.folders))
            };
            let tokens = if rng.chance(10) {
                9_000_000
            } else {
                rng.below(20_000) as u64
            };
            let action = *rng.pick(&LEAF_ACTIONS);
            let request = CheckRequest::new(&principal, action, &resource)
                .expect("valid request")
                .with_tokens(0, tokens)
                .at(*rng.pick(&TIMES));
            let a = sliced.check(&request).expect("sliced decision");
            let b = unsliced.check(&request).expect("unsliced decision");
            if summary(&a) != summary(&b) {
                let differing: Vec<&str> = policies
                    .split("\n\n")
                    .filter(|text| {
                        b.policies.iter().chain(a.policies.iter()).any(|p| {
                            text.contains(&format!("@id(\"{}\")", p.id))
                                && !(a.policy_ids().contains(&p.id.as_str())
                                    && b.policy_ids().contains(&p.id.as_str()))
                        })
                    })
                    .collect();
                panic!(
                    "seed {seed}: {principal} {action} {resource} tokens {tokens}\nsliced:   {:?}\nunsliced: {:?}\npolicies that differ:\n{}",
                    summary(&a),
                    summary(&b),
                    differing.join("\n")
                );
            }
            compared += 1;
            allowed += usize::from(a.is_allowed());
            with_errors += usize::from(!a.errors.is_empty());
        }
    }
    assert_eq!(compared, 12 * 400);
    // The generator must exercise both outcomes and evaluation errors, or the comparison
    // proves little.
    assert!(
        allowed > compared / 20,
        "only {allowed} of {compared} allowed"
    );
    assert!(
        allowed < compared * 19 / 20,
        "{allowed} of {compared} allowed"
    );
    assert!(
        with_errors > compared / 50,
        "only {with_errors} decisions with errors"
    );
}

/// Returns inline entities for one request and the principal and resource to use.
fn inline_entities(rng: &mut Rng, world: &World) -> (Vec<Value>, String, String) {
    let mut principal = format!("User::\"{}\"", rng.pick(&world.users));
    let mut resource = format!("Doc::\"{}\"", rng.pick(&world.docs));
    let mut entities = Vec::new();
    let user = |rng: &mut Rng, id: &str, parents: Vec<Value>| {
        let mut attrs = json!({"level": rng.below(10)});
        if rng.chance(50) {
            attrs["manager"] = uid("User", rng.pick(&world.users));
        }
        json!({"uid": uid("User", id), "attrs": attrs, "parents": parents})
    };
    match rng.below(5) {
        // A new user in existing groups and teams.
        0 => {
            let parents = vec![
                uid("Group", rng.pick(&world.groups)),
                uid("Team", rng.pick(&world.teams)),
            ];
            entities.push(user(rng, "newcomer", parents));
            principal = "User::\"newcomer\"".to_string();
        }
        // An existing user replaced with other parents and attributes.
        1 => {
            let id = rng.pick(&world.users).clone();
            let parents = vec![uid("Group", rng.pick(&world.groups))];
            entities.push(user(rng, &id, parents));
            principal = format!("User::\"{id}\"");
        }
        // A new group between a new user and an existing group.
        2 => {
            entities.push(json!({"uid": uid("Group", "newgroup"), "attrs": {},
                "parents": [uid("Group", rng.pick(&world.groups)), uid("Team", rng.pick(&world.teams))]}));
            entities.push(user(rng, "newcomer", vec![uid("Group", "newgroup")]));
            principal = "User::\"newcomer\"".to_string();
        }
        // An existing group moved under other parents: its members' ancestors change.
        3 => {
            let group = rng.pick(&world.groups).clone();
            entities.push(json!({"uid": uid("Group", &group), "attrs": {},
                "parents": [uid("Team", rng.pick(&world.teams)), uid("Org", rng.pick(&world.orgs))]}));
        }
        // A new document in an existing folder.
        _ => {
            entities.push(
                json!({"uid": uid("Doc", "newdoc"), "attrs": {"size": rng.below(1000)},
                "parents": [uid("Folder", rng.pick(&world.folders))]}),
            );
            resource = "Doc::\"newdoc\"".to_string();
        }
    }
    (entities, principal, resource)
}

#[test]
fn inline_entities_decide_as_merged_store() {
    let mut compared = 0;
    let mut allowed = 0;
    for seed in 1..=8u64 {
        let mut rng = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
        // The sliced engine builds a store of the reachable entities; the unsliced one
        // merges the inline entities into a copy of the whole store.
        let Generated {
            world,
            policies,
            sliced,
            unsliced,
            _dir,
        } = generate(&mut rng);

        for _ in 0..300 {
            let (entities, principal, resource) = inline_entities(&mut rng, &world);
            let action = *rng.pick(&LEAF_ACTIONS);
            let mut request = CheckRequest::new(&principal, action, &resource)
                .expect("valid request")
                .with_tokens(0, rng.below(20_000) as u64)
                .at(*rng.pick(&TIMES));
            request.entities = entities.clone();
            let a = sliced.check(&request).expect("sliced decision");
            let b = unsliced.check(&request).expect("unsliced decision");
            assert_eq!(
                summary(&a),
                summary(&b),
                "seed {seed}: {principal} {action} {resource}\ninline: {}\npolicies:\n{policies}",
                Value::Array(entities)
            );
            compared += 1;
            allowed += usize::from(a.is_allowed());
        }
    }
    assert_eq!(compared, 8 * 300);
    assert!(
        allowed > compared / 20,
        "only {allowed} of {compared} allowed"
    );
    assert!(
        allowed < compared * 19 / 20,
        "{allowed} of {compared} allowed"
    );
}
