//! Table-driven evaluation tests: each case is a set of policies, a request
//! and the expected decision.
//!
//! Statements are written in a compact notation so that a case fits on one
//! line: `"Allow Action=dds:Describe* Resource=*"`. Words are separated by
//! spaces; the first is the Effect, the others are `Element=value`, where a
//! value in brackets, `[a,b]`, becomes a JSON list and anything else a JSON
//! string. The notation is turned into real JSON documents and parsed with
//! [`Policy::parse`], so the parser is exercised too.

use ddsvault_ram::{evaluate, Decision, Policy, Request};
use serde_json::{json, Map, Value};

use Decision::{Allow, ExplicitDeny, ImplicitDeny};

/// `(name, policies (each a list of statements), action, resource, expected)`.
type Case = (
    &'static str,
    &'static [&'static [&'static str]],
    &'static str,
    &'static str,
    Decision,
);

const INST_A: &str = "acs:dds:cn-hangzhou:123:dbinstance/dds-a";
const INST_B: &str = "acs:dds:cn-hangzhou:123:dbinstance/dds-b";
const INST_SANDBOX: &str = "acs:dds:cn-hangzhou:123:dbinstance/dds-sandbox-1";
const INST_OTHER_ACCOUNT: &str = "acs:dds:cn-hangzhou:999:dbinstance/dds-a";

fn statement(notation: &str) -> Value {
    let mut words = notation.split_whitespace();
    let mut obj = Map::new();
    obj.insert("Effect".into(), json!(words.next().unwrap_or_default()));
    for word in words {
        let (key, value) = word
            .split_once('=')
            .unwrap_or_else(|| panic!("bad notation {word:?}"));
        let value = match value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
            Some(list) => json!(list.split(',').collect::<Vec<_>>()),
            None => json!(value),
        };
        obj.insert(key.into(), value);
    }
    Value::Object(obj)
}

fn run(cases: &[Case]) {
    let mut failures = Vec::new();
    for &(name, policies, action, resource, want) in cases {
        let parsed: Vec<Policy> = policies
            .iter()
            .map(|statements| {
                let statements: Vec<Value> = statements.iter().map(|s| statement(s)).collect();
                let doc = json!({"Version": "1", "Statement": statements}).to_string();
                Policy::parse(&doc).unwrap_or_else(|e| panic!("{name}: {doc}: {e}"))
            })
            .collect();
        let refs: Vec<&Policy> = parsed.iter().collect();
        let got = evaluate(&refs, &Request::new(action, resource));
        if got != want {
            failures.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures.join("\n")
    );
}

#[rustfmt::skip]
const BASICS: &[Case] = &[
    ("no policies", &[], "dds:CreateBackup", INST_A, ImplicitDeny),
    ("a policy that matches nothing", &[&["Allow Action=ecs:* Resource=*"]], "dds:CreateBackup", INST_A, ImplicitDeny),
    ("single strings", &[&["Allow Action=dds:CreateBackup Resource=acs:dds:cn-hangzhou:123:dbinstance/dds-a"]], "dds:CreateBackup", INST_A, Allow),
    ("one-element lists", &[&["Allow Action=[dds:CreateBackup] Resource=[acs:dds:cn-hangzhou:123:dbinstance/dds-a]"]], "dds:CreateBackup", INST_A, Allow),
    ("lists, second entries match", &[&["Allow Action=[dds:DeleteBackup,dds:CreateBackup] Resource=[acs:dds:*:*:dbinstance/dds-z,acs:dds:*:*:dbinstance/dds-a]"]], "dds:CreateBackup", INST_A, Allow),
    ("list, no entry matches", &[&["Allow Action=[dds:DeleteBackup,dds:RestoreDBInstance] Resource=*"]], "dds:CreateBackup", INST_A, ImplicitDeny),
    ("other action", &[&["Allow Action=dds:CreateBackup Resource=*"]], "dds:DeleteBackup", INST_A, ImplicitDeny),
    ("other resource", &[&["Allow Action=dds:CreateBackup Resource=acs:dds:cn-hangzhou:123:dbinstance/dds-a"]], "dds:CreateBackup", INST_B, ImplicitDeny),
    ("action must match too", &[&["Allow Action=dds:DeleteBackup Resource=acs:dds:cn-hangzhou:123:dbinstance/dds-a"]], "dds:CreateBackup", INST_A, ImplicitDeny),
    ("star action and resource", &[&["Allow Action=* Resource=*"]], "ecs:DeleteInstance", INST_A, Allow),
    ("Sid is ignored", &[&["Allow Sid=ReadOnly Action=dds:* Resource=*"]], "dds:CreateBackup", INST_A, Allow),
    ("deny alone is explicit", &[&["Deny Action=dds:* Resource=*"]], "dds:CreateBackup", INST_A, ExplicitDeny),
    ("non-matching deny alone is implicit", &[&["Deny Action=dds:DeleteBackup Resource=*"]], "dds:CreateBackup", INST_A, ImplicitDeny),
];

#[rustfmt::skip]
const ACTIONS: &[Case] = &[
    ("Describe* covers DescribeBackups", &[&["Allow Action=dds:Describe* Resource=*"]], "dds:DescribeBackups", "*", Allow),
    ("Describe* covers Describe (empty run)", &[&["Allow Action=dds:Describe* Resource=*"]], "dds:Describe", "*", Allow),
    ("Describe* does not cover CreateBackup", &[&["Allow Action=dds:Describe* Resource=*"]], "dds:CreateBackup", "*", ImplicitDeny),
    ("DescribeBackups does not cover DescribeBackupPolicy", &[&["Allow Action=dds:DescribeBackups Resource=*"]], "dds:DescribeBackupPolicy", "*", ImplicitDeny),
    ("DescribeBackups does not cover a literal Describe*", &[&["Allow Action=dds:DescribeBackups Resource=*"]], "dds:Describe*", "*", ImplicitDeny),
    ("actions match whole strings", &[&["Allow Action=dds:Create Resource=*"]], "dds:CreateBackup", "*", ImplicitDeny),
    ("service star", &[&["Allow Action=dds:* Resource=*"]], "dds:RestoreDBInstance", "*", Allow),
    ("service star is per service", &[&["Allow Action=dds:* Resource=*"]], "ecs:DescribeInstances", "*", ImplicitDeny),
    ("star in the middle", &[&["Allow Action=dds:*Backup Resource=*"]], "dds:CreateBackup", "*", Allow),
    ("star in the service", &[&["Allow Action=*:Describe* Resource=*"]], "ecs:DescribeInstances", "*", Allow),
    ("? is exactly one char", &[&["Allow Action=dds:?reateBackup Resource=*"]], "dds:CreateBackup", "*", Allow),
    ("? is not zero chars", &[&["Allow Action=dds:?CreateBackup Resource=*"]], "dds:CreateBackup", "*", ImplicitDeny),
    ("? is not two chars", &[&["Allow Action=dds:?eateBackup Resource=*"]], "dds:CreateBackup", "*", ImplicitDeny),
    ("policy in lower case", &[&["Allow Action=dds:createbackup Resource=*"]], "dds:CreateBackup", "*", Allow),
    ("request in upper case", &[&["Allow Action=dds:CreateBackup Resource=*"]], "DDS:CREATEBACKUP", "*", Allow),
    ("case-insensitive wildcard", &[&["Allow Action=DDS:describe* Resource=*"]], "dds:DescribeBackups", "*", Allow),
    ("case-insensitive deny", &[&["Allow Action=dds:* Resource=*"], &["Deny Action=dds:deletedbinstance Resource=*"]], "dds:DeleteDBInstance", "*", ExplicitDeny),
];

// Requests for actions that are not resource-scoped (create, list without an
// id) carry resource "*"; only a policy Resource that matches the text "*"
// covers them.
#[rustfmt::skip]
const RESOURCES: &[Case] = &[
    ("exact ARN", &[&["Allow Action=dds:* Resource=acs:dds:cn-hangzhou:123:dbinstance/dds-a"]], "dds:CreateBackup", INST_A, Allow),
    ("instance wildcard", &[&["Allow Action=dds:* Resource=acs:dds:*:*:dbinstance/*"]], "dds:CreateBackup", INST_B, Allow),
    ("account-scoped wildcard, same account", &[&["Allow Action=dds:* Resource=acs:dds:*:123:dbinstance/*"]], "dds:CreateBackup", INST_A, Allow),
    ("account-scoped wildcard, other account", &[&["Allow Action=dds:* Resource=acs:dds:*:123:dbinstance/*"]], "dds:CreateBackup", INST_OTHER_ACCOUNT, ImplicitDeny),
    ("? in an ARN", &[&["Allow Action=dds:* Resource=acs:dds:cn-hangzhou:123:dbinstance/dds-?"]], "dds:CreateBackup", INST_B, Allow),
    ("resources are case-sensitive", &[&["Allow Action=dds:* Resource=acs:dds:cn-hangzhou:123:dbinstance/DDS-A"]], "dds:CreateBackup", INST_A, ImplicitDeny),
    ("a differently-cased deny does not fire", &[&["Allow Action=dds:* Resource=*", "Deny Action=dds:* Resource=acs:dds:cn-hangzhou:123:dbinstance/DDS-A"]], "dds:CreateBackup", INST_A, Allow),
    ("resources match whole strings", &[&["Allow Action=dds:* Resource=acs:dds:cn-hangzhou:123:dbinstance/dds"]], "dds:CreateBackup", INST_A, ImplicitDeny),
    ("star resource covers an instance", &[&["Allow Action=dds:* Resource=*"]], "dds:CreateBackup", INST_A, Allow),
    ("star request, star resource", &[&["Allow Action=dds:CreateDBInstance Resource=*"]], "dds:CreateDBInstance", "*", Allow),
    ("star request, instance pattern", &[&["Allow Action=dds:* Resource=acs:dds:*:*:dbinstance/*"]], "dds:CreateDBInstance", "*", ImplicitDeny),
    ("star request, widest ARN pattern", &[&["Allow Action=dds:* Resource=acs:*"]], "dds:DescribeDBInstances", "*", ImplicitDeny),
    ("star request, star in a list", &[&["Allow Action=dds:* Resource=[acs:dds:*:*:dbinstance/*,*]"]], "dds:DescribeDBInstances", "*", Allow),
    ("star request, instance deny does not fire", &[&["Allow Action=dds:* Resource=*"], &["Deny Action=dds:* Resource=acs:dds:*:*:dbinstance/*"]], "dds:DescribeDBInstances", "*", Allow),
    ("star request, star deny fires", &[&["Allow Action=dds:* Resource=*"], &["Deny Action=dds:Create* Resource=*"]], "dds:CreateDBInstance", "*", ExplicitDeny),
];

#[rustfmt::skip]
const NEGATIONS: &[Case] = &[
    ("NotAction allows everything else", &[&["Allow NotAction=dds:Delete* Resource=*"]], "dds:CreateBackup", INST_A, Allow),
    ("NotAction excludes its pattern", &[&["Allow NotAction=dds:Delete* Resource=*"]], "dds:DeleteDBInstance", INST_A, ImplicitDeny),
    ("NotAction list excludes every entry", &[&["Allow NotAction=[dds:Delete*,dds:Restore*] Resource=*"]], "dds:RestoreDBInstance", INST_A, ImplicitDeny),
    ("NotAction covers other services", &[&["Allow NotAction=dds:* Resource=*"]], "ecs:DescribeInstances", INST_A, Allow),
    ("NotAction is case-insensitive", &[&["Allow NotAction=DDS:DELETE* Resource=*"]], "dds:DeleteDBInstance", INST_A, ImplicitDeny),
    ("NotAction * matches nothing", &[&["Allow NotAction=* Resource=*"]], "dds:CreateBackup", INST_A, ImplicitDeny),
    ("Deny+NotAction denies all but Describe", &[&["Allow Action=* Resource=*", "Deny NotAction=dds:Describe* Resource=*"]], "dds:CreateBackup", INST_A, ExplicitDeny),
    ("Deny+NotAction lets Describe through", &[&["Allow Action=* Resource=*", "Deny NotAction=dds:Describe* Resource=*"]], "dds:DescribeBackups", INST_A, Allow),
    ("NotResource allows other instances", &[&["Allow Action=dds:* NotResource=acs:dds:cn-hangzhou:123:dbinstance/dds-a"]], "dds:CreateBackup", INST_B, Allow),
    ("NotResource excludes its pattern", &[&["Allow Action=dds:* NotResource=acs:dds:cn-hangzhou:123:dbinstance/dds-a"]], "dds:CreateBackup", INST_A, ImplicitDeny),
    ("NotResource list excludes every entry", &[&["Allow Action=dds:* NotResource=[acs:dds:*:*:dbinstance/dds-b,acs:dds:*:*:dbinstance/dds-a]"]], "dds:CreateBackup", INST_A, ImplicitDeny),
    ("NotResource is case-sensitive", &[&["Allow Action=dds:* NotResource=acs:dds:cn-hangzhou:123:dbinstance/DDS-A"]], "dds:CreateBackup", INST_A, Allow),
    ("NotResource covers star requests", &[&["Allow Action=dds:* NotResource=acs:dds:*:*:dbinstance/*"]], "dds:CreateDBInstance", "*", Allow),
    ("NotResource * matches nothing", &[&["Allow Action=dds:* NotResource=*"]], "dds:CreateBackup", INST_A, ImplicitDeny),
    ("Deny+NotResource protects all but sandboxes", &[&["Allow Action=* Resource=*", "Deny Action=dds:Delete* NotResource=acs:dds:*:*:dbinstance/dds-sandbox-*"]], "dds:DeleteDBInstance", INST_A, ExplicitDeny),
    ("Deny+NotResource spares sandboxes", &[&["Allow Action=* Resource=*", "Deny Action=dds:Delete* NotResource=acs:dds:*:*:dbinstance/dds-sandbox-*"]], "dds:DeleteDBInstance", INST_SANDBOX, Allow),
    ("NotAction with NotResource", &[&["Allow NotAction=dds:Delete* NotResource=acs:dds:cn-hangzhou:123:dbinstance/dds-a"]], "dds:CreateBackup", INST_B, Allow),
    ("NotAction with NotResource, excluded resource", &[&["Allow NotAction=dds:Delete* NotResource=acs:dds:cn-hangzhou:123:dbinstance/dds-a"]], "dds:CreateBackup", INST_A, ImplicitDeny),
];

#[rustfmt::skip]
const DENY_OVER_ALLOW: &[Case] = &[
    ("deny before allow in one policy", &[&["Deny Action=dds:DeleteDBInstance Resource=*", "Allow Action=dds:* Resource=*"]], "dds:DeleteDBInstance", INST_A, ExplicitDeny),
    ("deny after allow in one policy", &[&["Allow Action=dds:* Resource=*", "Deny Action=dds:DeleteDBInstance Resource=*"]], "dds:DeleteDBInstance", INST_A, ExplicitDeny),
    ("deny elsewhere leaves other actions", &[&["Deny Action=dds:DeleteDBInstance Resource=*", "Allow Action=dds:* Resource=*"]], "dds:CreateBackup", INST_A, Allow),
    ("deny in a later policy", &[&["Allow Action=dds:* Resource=*"], &["Deny Action=dds:Delete* Resource=*"]], "dds:DeleteDBInstance", INST_A, ExplicitDeny),
    ("deny in an earlier policy", &[&["Deny Action=dds:Delete* Resource=*"], &["Allow Action=dds:* Resource=*"]], "dds:DeleteDBInstance", INST_A, ExplicitDeny),
    ("exact allow vs wildcard deny", &[&["Allow Action=dds:DeleteDBInstance Resource=acs:dds:cn-hangzhou:123:dbinstance/dds-a"], &["Deny Action=* Resource=*"]], "dds:DeleteDBInstance", INST_A, ExplicitDeny),
    ("deny scoped to another instance", &[&["Allow Action=dds:* Resource=*"], &["Deny Action=dds:* Resource=acs:dds:cn-hangzhou:123:dbinstance/dds-b"]], "dds:CreateBackup", INST_A, Allow),
    ("deny scoped to this instance", &[&["Allow Action=dds:* Resource=*"], &["Deny Action=dds:* Resource=acs:dds:cn-hangzhou:123:dbinstance/dds-a"]], "dds:CreateBackup", INST_A, ExplicitDeny),
    ("many allows, one deny", &[&["Allow Action=dds:* Resource=*"], &["Allow Action=* Resource=*"], &["Allow Action=dds:CreateBackup Resource=acs:dds:cn-hangzhou:123:dbinstance/dds-a"], &["Deny Action=dds:CreateBackup Resource=acs:dds:*:*:dbinstance/*"]], "dds:CreateBackup", INST_A, ExplicitDeny),
];

#[test]
fn basics_and_value_forms() {
    run(BASICS);
}

#[test]
fn action_wildcards_and_case() {
    run(ACTIONS);
}

#[test]
fn resource_wildcards_and_case() {
    run(RESOURCES);
}

#[test]
fn not_action_and_not_resource() {
    run(NEGATIONS);
}

#[test]
fn deny_overrides_allow_across_policies() {
    run(DENY_OVER_ALLOW);
}

#[test]
fn single_statement_object_is_a_one_element_list() {
    let single =
        r#"{"Version":"1","Statement":{"Effect":"Allow","Action":"dds:*","Resource":"*"}}"#;
    let policy = Policy::parse(single).expect("valid policy");
    let req = Request::new("dds:CreateBackup", INST_A);
    assert_eq!(evaluate(&[&policy], &req), Allow);
    assert_eq!(
        evaluate(&[&policy], &Request::new("ecs:X", "*")),
        ImplicitDeny
    );
}

#[test]
fn from_str_and_decision_helpers() {
    let policy: Policy =
        r#"{"Version":"1","Statement":[{"Effect":"Allow","Action":"dds:*","Resource":"*"}]}"#
            .parse()
            .expect("valid policy");
    let d = evaluate(&[&policy], &Request::new("dds:CreateBackup", "*"));
    assert!(d.is_allowed());
    assert_eq!(d.no_permission_type(), None);
    assert!(!ExplicitDeny.is_allowed());
    assert!(!ImplicitDeny.is_allowed());
    assert_eq!(ExplicitDeny.no_permission_type(), Some("ExplicitDeny"));
    assert_eq!(ImplicitDeny.no_permission_type(), Some("ImplicitDeny"));
}

#[test]
fn the_notation_builds_what_it_says() {
    assert_eq!(
        statement("Deny NotAction=[a:b,c:*] Resource=*"),
        json!({"Effect": "Deny", "NotAction": ["a:b", "c:*"], "Resource": "*"})
    );
}
