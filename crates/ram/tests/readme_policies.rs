//! The example policies of docs/ram.md's "RAM policies" section parse and grant what the text says they grant.

use chrono::{DateTime, Utc};
use ddsvault_ram::{evaluate, Context, Decision, Policy, Request};

const ARN_A: &str = "acs:dds:cn-hangzhou:1234567890123456:dbinstance/dds-bp1aaaa";
const ARN_B: &str = "acs:dds:cn-hangzhou:1234567890123456:dbinstance/dds-bp1bbbb";

fn readme_policy(name: &str) -> Policy {
    let readme = include_str!("../../../docs/ram.md");
    let marker = format!("<!-- policy:{name} -->");
    let start = readme.find(&marker).expect("README has the policy marker");
    let rest = &readme[start..];
    let body = rest.find("```json\n").expect("json block") + "```json\n".len();
    let end = rest[body..].find("```").expect("block end");
    Policy::parse(&rest[body..body + end]).unwrap_or_else(|e| panic!("README policy {name}: {e}"))
}

fn ctx(ip: &str, secure: bool) -> Context {
    let mut c = Context::new();
    c.source_ip(ip.parse().expect("ip"))
        .current_time(
            DateTime::parse_from_rfc3339("2026-11-28T01:00:00Z")
                .expect("time")
                .with_timezone(&Utc),
        )
        .secure_transport(secure)
        .mfa_present(false);
    c
}

fn decide(p: &Policy, action: &str, resource: &str, c: &Context) -> Decision {
    evaluate(&[p], &Request::new(action, resource).with_context(c))
}

#[test]
fn auditor_reads_only_over_tls_from_the_office() {
    let p = readme_policy("auditor");
    let office = ctx("10.2.3.4", true);
    assert_eq!(
        decide(&p, "dds:DescribeDBInstances", "*", &office),
        Decision::Allow
    );
    assert_eq!(
        decide(&p, "dds:DescribeBackups", ARN_B, &office),
        Decision::Allow
    );
    assert_eq!(
        decide(&p, "dds:CreateBackup", ARN_A, &office),
        Decision::ImplicitDeny
    );
    assert_eq!(
        decide(&p, "dds:DeleteBackup", "*", &office),
        Decision::ImplicitDeny
    );
    let home = ctx("203.0.113.9", true);
    assert_eq!(
        decide(&p, "dds:DescribeBackups", ARN_A, &home),
        Decision::ExplicitDeny
    );
    let plain = ctx("192.168.1.1", false);
    assert_eq!(
        decide(&p, "dds:DescribeBackups", ARN_A, &plain),
        Decision::ExplicitDeny
    );
}

#[test]
fn operator_works_on_one_instance_and_never_deletes() {
    let p = readme_policy("operator");
    let c = ctx("127.0.0.1", false);
    for action in [
        "dds:CreateBackup",
        "dds:RestoreDBInstance",
        "dds:ModifyBackupPolicy",
        "dds:ModifyBackupExpireTime",
        "dds:DescribeBackups",
        "dds:DescribeBackupTasks",
    ] {
        assert_eq!(decide(&p, action, ARN_A, &c), Decision::Allow, "{action}");
        assert_eq!(
            decide(&p, action, ARN_B, &c),
            Decision::ImplicitDeny,
            "{action}"
        );
    }
    assert_eq!(
        decide(&p, "dds:DescribeDBInstances", "*", &c),
        Decision::Allow
    );
    assert_eq!(
        decide(&p, "dds:DeleteBackup", ARN_A, &c),
        Decision::ExplicitDeny
    );
    assert_eq!(
        decide(&p, "dds:CreateBackup", "*", &c),
        Decision::ImplicitDeny
    );
}

#[test]
fn admin_may_do_everything_in_dds_only() {
    let p = readme_policy("admin");
    let c = ctx("203.0.113.9", false);
    for (action, resource) in [
        ("dds:DeleteBackup", ARN_A),
        ("dds:CreateBackup", ARN_B),
        ("dds:DescribeDBInstances", "*"),
        ("dds:ModifyBackupPolicy", ARN_A),
    ] {
        assert_eq!(
            decide(&p, action, resource, &c),
            Decision::Allow,
            "{action}"
        );
    }
    assert_eq!(
        decide(&p, "ecs:DescribeInstances", "*", &c),
        Decision::ImplicitDeny
    );
}
