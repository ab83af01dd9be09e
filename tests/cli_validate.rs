//! `modelgate validate` on the shipped policy set and on deliberately broken fixtures, in
//! every output format.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test helpers stop the test on a broken fixture"
)]

mod common;

use common::modelgate;

const FIXTURES: &str = "tests/fixtures/validate";

fn validate(fixture: &str, format: &str) -> common::Run {
    let policies = format!("{FIXTURES}/{fixture}/policies");
    modelgate(
        &["validate", "--policies", &policies, "--format", format],
        None,
    )
}

#[test]
fn shipped_policies_are_valid() {
    let run = modelgate(&["validate", "--deny-warnings"], None);
    assert_eq!(run.code, 0, "{}", run.transcript());
    assert!(run.stdout.starts_with("valid: "), "{}", run.stdout);
    assert_eq!(run.stderr, "");
}

#[test]
fn syntax_errors_in_every_format() {
    for format in ["human", "json", "github"] {
        let run = validate("syntax", format);
        assert_eq!(run.code, 1);
        insta::assert_snapshot!(format!("syntax_{format}"), run.transcript());
    }
}

#[test]
fn syntax_errors_name_both_files() {
    let run = validate("syntax", "human");
    assert!(
        run.stderr.contains("syntax/policies/broken.cedar:3:27"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("syntax/policies/also-broken.cedar:5:39"),
        "{}",
        run.stderr
    );
}

#[test]
fn validation_errors_in_every_format() {
    for format in ["human", "json", "github"] {
        let run = validate("invalid", format);
        assert_eq!(run.code, 1);
        insta::assert_snapshot!(format!("invalid_{format}"), run.transcript());
    }
}

#[test]
fn entity_errors_are_located() {
    let run = validate("entities", "human");
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("entities/syntax.json:3:1"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("entities/schema.json:4:82"),
        "{}",
        run.stderr
    );
    // Every bad entity of a file is reported, not only the first.
    assert!(
        run.stderr.contains("entities/schema.json:9:"),
        "{}",
        run.stderr
    );
    // A parent of a type that the schema does not list in `in [...]`.
    assert!(
        run.stderr.contains("entities/parents.json:3:"),
        "{}",
        run.stderr
    );
    insta::assert_snapshot!(run.transcript());
}

#[test]
fn duplicate_id_names_both_files() {
    let run = validate("duplicate", "human");
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("team-a/p.cedar:1"), "{}", run.stderr);
    assert!(run.stderr.contains("team-b/p.cedar:1:1"), "{}", run.stderr);
    assert!(
        run.stderr.contains("is used twice: here and at"),
        "{}",
        run.stderr
    );
}

#[test]
fn empty_policy_set_is_rejected() {
    let run = validate("empty", "human");
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("contains no policies"),
        "{}",
        run.stderr
    );
    let allowed = modelgate(
        &[
            "validate",
            "--policies",
            "tests/fixtures/validate/empty/policies",
            "--allow-empty",
        ],
        None,
    );
    assert_eq!(allowed.code, 0, "{}", allowed.transcript());
}

#[test]
fn missing_policy_directory_is_an_error() {
    let run = modelgate(&["validate", "--policies", "no/such/dir"], None);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no/such/dir"), "{}", run.stderr);
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);
}

#[test]
fn lints_warn_without_failing() {
    let run = validate("lints", "human");
    assert_eq!(run.code, 0, "{}", run.transcript());
    insta::assert_snapshot!(run.transcript());
}

#[test]
fn deny_warnings_fails_on_lints() {
    let policies = format!("{FIXTURES}/lints/policies");
    let run = modelgate(
        &["validate", "--policies", &policies, "--deny-warnings"],
        None,
    );
    assert_eq!(run.code, 1);
    assert!(run.stdout.starts_with("invalid: "), "{}", run.stdout);
}

#[test]
fn lints_in_github_format() {
    let run = validate("lints", "github");
    insta::assert_snapshot!(run.transcript());
}

#[test]
fn syntax_error_does_not_hide_type_errors() {
    let run = validate("mixed", "human");
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("mixed/policies/a-syntax.cedar:3:27"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("mixed/policies/b-types.cedar:5:39"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("2 errors"), "{}", run.stdout);
}
