//! Property tests for the evaluator's algebra and the parser's robustness.
//!
//! Policies are generated as JSON from small pools of actions and resources so
//! that statements match the generated requests often; random patterns over a
//! tiny alphabet add wildcard shapes the pools do not cover.

use ddsvault_ram::{evaluate, Context, Decision, Policy, Request};
use proptest::prelude::*;
use serde_json::{json, Value};

const ACTIONS: &[&str] = &[
    "*",
    "dds:*",
    "dds:Describe*",
    "dds:DescribeBackups",
    "DDS:createbackup",
    "dds:?reateBackup",
    "dds:Delete*",
    "ecs:*",
    "*:Describe*",
];
const RESOURCES: &[&str] = &[
    "*",
    "acs:dds:*:*:dbinstance/*",
    "acs:dds:cn-hangzhou:123:dbinstance/dds-a",
    "acs:dds:cn-hangzhou:123:dbinstance/dds-?",
    "acs:dds:*:123:*",
    "acs:dds:cn-beijing:*",
];
const REQ_ACTIONS: &[&str] = &[
    "dds:DescribeBackups",
    "dds:CreateBackup",
    "DDS:CREATEBACKUP",
    "dds:DeleteDBInstance",
    "ecs:DescribeInstances",
    "dds:ab",
];
const REQ_RESOURCES: &[&str] = &[
    "*",
    "acs:dds:cn-hangzhou:123:dbinstance/dds-a",
    "acs:dds:cn-hangzhou:123:dbinstance/dds-b",
    "acs:dds:cn-beijing:456:dbinstance/dds-a",
    "acs:dds:cn-hangzhou:123:dbinstance/DDS-A",
];

/// Conditions over every operator family; with the contexts below, each holds
/// for some requests and not for others.
const CONDITIONS: &[&str] = &[
    r#"{"IpAddress":{"acs:SourceIp":"10.0.0.0/8"}}"#,
    r#"{"NotIpAddress":{"acs:SourceIp":["192.168.0.0/16","::1"]}}"#,
    r#"{"Bool":{"acs:SecureTransport":"true"}}"#,
    r#"{"Bool":{"acs:MFAPresent":false}}"#,
    r#"{"DateLessThan":{"acs:CurrentTime":"2026-01-01T00:00:00Z"}}"#,
    r#"{"DateGreaterThanEquals":{"acs:CurrentTime":"2026-06-01T00:00:00+08:00"}}"#,
    r#"{"NumericLessThan":{"acs:EpochTime":1780000000}}"#,
    r#"{"StringLike":{"acs:UserAgent":"*Tea*"}}"#,
    r#"{"StringNotEquals":{"acs:Referer":"https://a.example"}}"#,
    r#"{"StringEqualsIgnoreCase":{"acs:UserAgent":"CURL"},"Bool":{"acs:SecureTransport":"false"}}"#,
];

/// A request context: (source ip, time, secure, user agent, referer).
type ContextSpec = (
    &'static str,
    &'static str,
    bool,
    Option<&'static str>,
    Option<&'static str>,
);

const CONTEXTS: &[ContextSpec] = &[
    (
        "10.1.2.3",
        "2025-12-31T23:59:59Z",
        true,
        Some("AlibabaCloud TeaDSL/1"),
        None,
    ),
    (
        "192.168.4.4",
        "2026-07-01T00:00:00Z",
        false,
        Some("curl"),
        Some("https://a.example"),
    ),
    (
        "::1",
        "2026-05-31T16:00:00Z",
        false,
        None,
        Some("https://b.example"),
    ),
    (
        "::ffff:10.0.0.9",
        "2027-01-01T00:00:00Z",
        true,
        Some("curl"),
        None,
    ),
];

fn context(i: usize) -> Context {
    let (ip, time, secure, ua, referer) = CONTEXTS[i];
    let mut c = Context::new();
    c.source_ip(ip.parse().expect("ip"))
        .current_time(
            chrono::DateTime::parse_from_rfc3339(time)
                .expect("time")
                .with_timezone(&chrono::Utc),
        )
        .secure_transport(secure)
        .mfa_present(false);
    if let Some(ua) = ua {
        c.user_agent(ua);
    }
    if let Some(r) = referer {
        c.referer(r);
    }
    c
}

fn pick(pool: &'static [&'static str]) -> impl Strategy<Value = String> {
    proptest::sample::select(pool).prop_map(str::to_owned)
}

fn action_pattern() -> impl Strategy<Value = String> {
    prop_oneof![4 => pick(ACTIONS), 1 => "dds:[abAB*?]{1,3}"]
}

fn resource_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => pick(RESOURCES),
        1 => "acs:dds:cn-hangzhou:123:dbinstance/dds-[ab*?]{0,2}"
    ]
}

/// A single string when there is one value (half the time), else a list:
/// both forms must behave identically.
fn string_or_list(values: Vec<String>, as_string: bool) -> Value {
    if values.len() == 1 && as_string {
        json!(values[0])
    } else {
        json!(values)
    }
}

fn statement_with_effect(
    effect: impl Strategy<Value = &'static str>,
) -> impl Strategy<Value = Value> {
    (
        effect,
        any::<bool>(),
        prop::collection::vec(action_pattern(), 1..3),
        any::<bool>(),
        prop::collection::vec(resource_pattern(), 1..3),
        any::<bool>(),
        prop::option::weighted(0.5, pick(CONDITIONS)),
    )
        .prop_map(
            |(effect, not_action, actions, not_resource, resources, as_string, condition)| {
                let action_key = if not_action { "NotAction" } else { "Action" };
                let resource_key = if not_resource {
                    "NotResource"
                } else {
                    "Resource"
                };
                let mut s = json!({
                    "Effect": effect,
                    action_key: string_or_list(actions, as_string),
                    resource_key: string_or_list(resources, as_string),
                });
                if let (Some(c), Some(obj)) = (condition, s.as_object_mut()) {
                    let c: Value = serde_json::from_str(&c).expect("pool condition is JSON");
                    obj.insert("Condition".to_owned(), c);
                }
                s
            },
        )
}

fn statement() -> impl Strategy<Value = Value> {
    // Allow-heavy, so that both Allow and ExplicitDeny outcomes are common.
    statement_with_effect(prop_oneof![3 => Just("Allow"), 1 => Just("Deny")])
}

fn deny_statement() -> impl Strategy<Value = Value> {
    statement_with_effect(Just("Deny"))
}

/// Policies as lists of statements (1..=3 policies of 1..=4 statements).
fn policy_set() -> impl Strategy<Value = Vec<Vec<Value>>> {
    prop::collection::vec(prop::collection::vec(statement(), 1..5), 1..4)
}

fn request() -> impl Strategy<Value = (String, String, usize)> {
    (
        prop_oneof![3 => pick(REQ_ACTIONS), 1 => "dds:[abAB]{0,3}"],
        pick(REQ_RESOURCES),
        0..CONTEXTS.len(),
    )
}

fn to_policy(statements: &[Value]) -> Policy {
    let doc = json!({"Version": "1", "Statement": statements}).to_string();
    match Policy::parse(&doc) {
        Ok(p) => p,
        Err(e) => panic!("generator produced an invalid policy: {e}\n{doc}"),
    }
}

fn decide(policies: &[Vec<Value>], (action, resource, ctx): &(String, String, usize)) -> Decision {
    let parsed: Vec<Policy> = policies.iter().map(|s| to_policy(s)).collect();
    let refs: Vec<&Policy> = parsed.iter().collect();
    let context = context(*ctx);
    evaluate(
        &refs,
        &Request::new(action, resource).with_context(&context),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (1) Adding a Deny statement (to an existing policy or as a new one)
    /// can never produce Allow unless the request was already allowed, and
    /// can never undo an explicit deny.
    #[test]
    fn adding_deny_never_grants(
        policies in policy_set(),
        deny in deny_statement(),
        target in any::<prop::sample::Index>(),
        as_new_policy in any::<bool>(),
        req in request(),
    ) {
        let before = decide(&policies, &req);
        let mut after_policies = policies.clone();
        if as_new_policy {
            after_policies.push(vec![deny]);
        } else {
            let i = target.index(after_policies.len());
            after_policies[i].push(deny);
        }
        let after = decide(&after_policies, &req);
        if after == Decision::Allow {
            prop_assert_eq!(before, Decision::Allow);
        }
        match before {
            Decision::ExplicitDeny => prop_assert_eq!(after, Decision::ExplicitDeny),
            Decision::ImplicitDeny => prop_assert_ne!(after, Decision::Allow),
            Decision::Allow => {}
        }
    }

    /// (2) Permuting statements inside policies and permuting the policies
    /// never changes the decision.
    #[test]
    fn order_never_matters(
        (policies, shuffled) in policy_set().prop_flat_map(|policies| {
            let inner: Vec<_> = policies
                .iter()
                .map(|statements| Just(statements.clone()).prop_shuffle())
                .collect();
            (Just(policies), inner.prop_flat_map(|p| Just(p).prop_shuffle()))
        }),
        req in request(),
    ) {
        prop_assert_eq!(decide(&policies, &req), decide(&shuffled, &req));
    }

    /// (2b) How statements are split into policies never matters either:
    /// merging all of them into one policy gives the same decision.
    #[test]
    fn grouping_never_matters(policies in policy_set(), req in request()) {
        let merged = vec![policies.concat()];
        prop_assert_eq!(decide(&policies, &req), decide(&merged, &req));
    }

    /// A single-element list and a bare string are equivalent, and actions are
    /// case-insensitive: upper-casing every action pattern changes nothing.
    #[test]
    fn action_case_never_matters(policies in policy_set(), req in request()) {
        let upper: Vec<Vec<Value>> = policies
            .iter()
            .map(|statements| statements.iter().map(upcase_actions).collect())
            .collect();
        prop_assert_eq!(decide(&policies, &req), decide(&upper, &req));
    }
}

fn upcase_actions(statement: &Value) -> Value {
    let mut s = statement.clone();
    if let Some(obj) = s.as_object_mut() {
        for key in ["Action", "NotAction"] {
            if let Some(v) = obj.get_mut(key) {
                *v = match &*v {
                    Value::String(a) => json!(a.to_ascii_uppercase()),
                    Value::Array(items) => Value::Array(
                        items
                            .iter()
                            .map(|a| json!(a.as_str().unwrap_or_default().to_ascii_uppercase()))
                            .collect(),
                    ),
                    other => other.clone(),
                };
            }
        }
    }
    s
}

/// JSON trees whose object keys are mostly real element names, so that the
/// fuzzing reaches deep into statement validation instead of stopping at the
/// first unknown key.
fn json_tree() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        pick(&[
            "Version",
            "Statement",
            "Sid",
            "Effect",
            "Action",
            "NotAction",
            "Resource",
            "NotResource",
            "Condition",
            "Principal",
            "IpAddress",
            "StringLike",
            "Bool",
            "DateLessThan",
            "NumericEquals",
            "acs:SourceIp",
            "acs:CurrentTime",
            "acs:EpochTime",
            "acs:SecureTransport",
        ]),
        "\\PC{0,4}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        pick(&[
            "1",
            "Allow",
            "Deny",
            "*",
            "dds:*",
            "acs:dds:*",
            "",
            ":",
            "dds:",
            "10.0.0.0/8",
            "::/0",
            "true",
            "2026-01-01T00:00:00Z",
            "1.5e3",
        ])
        .prop_map(Value::String),
        "\\PC{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// (3) Parsing never panics on arbitrary strings, and whatever parses
    /// can be evaluated without panicking.
    #[test]
    fn parse_never_panics_on_strings(s in "\\PC*") {
        if let Ok(p) = Policy::parse(&s) {
            let _ = evaluate(&[&p], &Request::new("dds:CreateBackup", "*"));
        }
    }

    #[test]
    fn parse_never_panics_on_bytes_as_lossy_strings(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Policy::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn parse_never_panics_on_policy_shaped_json(
        tree in json_tree(),
        statements in prop::collection::vec(json_tree(), 0..3),
    ) {
        let _ = Policy::parse(&tree.to_string());
        let doc = json!({"Version": "1", "Statement": statements}).to_string();
        if let Ok(p) = Policy::parse(&doc) {
            for i in 0..CONTEXTS.len() {
                let c = context(i);
                let _ = evaluate(&[&p], &Request::new("dds:CreateBackup", "*").with_context(&c));
            }
        }
    }

    /// Corrupting one character of a valid policy never panics the parser.
    #[test]
    fn parse_never_panics_on_mutated_policies(
        statements in prop::collection::vec(statement(), 1..3),
        at in any::<prop::sample::Index>(),
        replacement in any::<char>(),
    ) {
        let doc = json!({"Version": "1", "Statement": statements}).to_string();
        let mut chars: Vec<char> = doc.chars().collect();
        let i = at.index(chars.len());
        chars[i] = replacement;
        let mutated: String = chars.into_iter().collect();
        let _ = Policy::parse(&mutated);
    }
}
