//! Table-driven tests of condition evaluation: every operator, allowing and
//! denying, the AND/OR structure, and absent keys.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ddsvault_ram::{evaluate, Context, Decision, Policy, Request};

const ACTION: &str = "dds:DescribeBackups";

fn ctx() -> Context {
    let mut c = Context::new();
    c.source_ip("10.1.2.3".parse::<IpAddr>().unwrap())
        .current_time(
            DateTime::parse_from_rfc3339("2026-11-28T01:00:00.750Z")
                .unwrap()
                .with_timezone(&Utc),
        )
        .secure_transport(false)
        .mfa_present(false)
        .user_agent("AlibabaCloud (Linux) Python/3.11 TeaDSL/1");
    c
}

/// The decision of a single `Allow` statement with this condition block.
fn allow_with(condition: &str, context: &Context) -> Decision {
    let p = Policy::parse(&format!(
        r#"{{"Version":"1","Statement":{{"Effect":"Allow","Action":"dds:*","Resource":"*","Condition":{condition}}}}}"#
    ))
    .unwrap_or_else(|e| panic!("{condition}: {e}"));
    evaluate(&[&p], &Request::new(ACTION, "*").with_context(context))
}

#[test]
fn operators_allow_and_deny() {
    use Decision::{Allow, ImplicitDeny as No};
    #[rustfmt::skip]
    let cases: &[(&str, Decision)] = &[
        // String
        (r#"{"StringEquals":{"acs:UserAgent":"AlibabaCloud (Linux) Python/3.11 TeaDSL/1"}}"#, Allow),
        (r#"{"StringEquals":{"acs:UserAgent":"alibabacloud (linux) python/3.11 teadsl/1"}}"#, No),
        (r#"{"StringNotEquals":{"acs:UserAgent":"curl"}}"#, Allow),
        (r#"{"StringNotEquals":{"acs:UserAgent":["curl","AlibabaCloud (Linux) Python/3.11 TeaDSL/1"]}}"#, No),
        (r#"{"StringEqualsIgnoreCase":{"acs:UserAgent":"ALIBABACLOUD (LINUX) PYTHON/3.11 TEADSL/1"}}"#, Allow),
        (r#"{"StringEqualsIgnoreCase":{"acs:UserAgent":"curl"}}"#, No),
        (r#"{"StringNotEqualsIgnoreCase":{"acs:UserAgent":"CURL"}}"#, Allow),
        (r#"{"StringNotEqualsIgnoreCase":{"acs:UserAgent":"alibabacloud (linux) python/3.11 teadsl/1"}}"#, No),
        (r#"{"StringLike":{"acs:UserAgent":"AlibabaCloud*TeaDSL/?"}}"#, Allow),
        (r#"{"StringLike":{"acs:UserAgent":"alibabacloud*"}}"#, No),
        (r#"{"StringNotLike":{"acs:UserAgent":"curl/*"}}"#, Allow),
        (r#"{"StringNotLike":{"acs:UserAgent":"*Python*"}}"#, No),
        // String operators read other keys as text.
        (r#"{"StringEquals":{"acs:SourceIp":"10.1.2.3","acs:SecureTransport":"false"}}"#, Allow),
        (r#"{"StringEquals":{"acs:CurrentTime":"2026-11-28T01:00:00Z"}}"#, Allow),
        // Numeric (acs:EpochTime = 1795827600)
        (r#"{"NumericEquals":{"acs:EpochTime":1795827600}}"#, Allow),
        (r#"{"NumericEquals":{"acs:EpochTime":"1795827601"}}"#, No),
        (r#"{"NumericNotEquals":{"acs:EpochTime":1}}"#, Allow),
        (r#"{"NumericNotEquals":{"acs:EpochTime":"1795827600.0"}}"#, No),
        (r#"{"NumericLessThan":{"acs:EpochTime":1795827601}}"#, Allow),
        (r#"{"NumericLessThan":{"acs:EpochTime":1795827600}}"#, No),
        (r#"{"NumericLessThanEquals":{"acs:EpochTime":1795827600}}"#, Allow),
        (r#"{"NumericLessThanEquals":{"acs:EpochTime":1795827599}}"#, No),
        (r#"{"NumericGreaterThan":{"acs:EpochTime":1795827599.5}}"#, Allow),
        (r#"{"NumericGreaterThan":{"acs:EpochTime":1795827600}}"#, No),
        (r#"{"NumericGreaterThanEquals":{"acs:EpochTime":1795827600}}"#, Allow),
        (r#"{"NumericGreaterThanEquals":{"acs:EpochTime":1795827601}}"#, No),
        // Date (sub-seconds dropped; offsets honoured)
        (r#"{"DateEquals":{"acs:CurrentTime":"2026-11-28T09:00:00+08:00"}}"#, Allow),
        (r#"{"DateEquals":{"acs:CurrentTime":"2026-11-28T01:00:01Z"}}"#, No),
        (r#"{"DateNotEquals":{"acs:CurrentTime":"2026-11-28T01:00:01Z"}}"#, Allow),
        (r#"{"DateNotEquals":{"acs:CurrentTime":"2026-11-28T01:00:00Z"}}"#, No),
        (r#"{"DateLessThan":{"acs:CurrentTime":"2026-11-28T01:00:01Z"}}"#, Allow),
        (r#"{"DateLessThan":{"acs:CurrentTime":"2026-11-28T01:00:00Z"}}"#, No),
        (r#"{"DateLessThanEquals":{"acs:CurrentTime":"2026-11-28T01:00:00Z"}}"#, Allow),
        (r#"{"DateLessThanEquals":{"acs:CurrentTime":"2026-11-28T00:59:59Z"}}"#, No),
        (r#"{"DateGreaterThan":{"acs:CurrentTime":"2026-11-28T08:59:59+08:00"}}"#, Allow),
        (r#"{"DateGreaterThan":{"acs:CurrentTime":"2026-11-28T01:00:00Z"}}"#, No),
        (r#"{"DateGreaterThanEquals":{"acs:CurrentTime":"2026-11-28T01:00:00Z"}}"#, Allow),
        (r#"{"DateGreaterThanEquals":{"acs:CurrentTime":"2027-01-01T00:00:00Z"}}"#, No),
        // Bool
        (r#"{"Bool":{"acs:SecureTransport":false}}"#, Allow),
        (r#"{"Bool":{"acs:SecureTransport":"true"}}"#, No),
        (r#"{"Bool":{"acs:MFAPresent":"FALSE"}}"#, Allow),
        (r#"{"Bool":{"acs:MFAPresent":true}}"#, No),
        // IP
        (r#"{"IpAddress":{"acs:SourceIp":"10.0.0.0/8"}}"#, Allow),
        (r#"{"IpAddress":{"acs:SourceIp":["192.168.0.0/16","10.1.2.3"]}}"#, Allow),
        (r#"{"IpAddress":{"acs:SourceIp":["192.168.0.0/16","10.1.2.4/32"]}}"#, No),
        (r#"{"IpAddress":{"acs:SourceIp":"::/0"}}"#, No),
        (r#"{"NotIpAddress":{"acs:SourceIp":"192.168.0.0/16"}}"#, Allow),
        (r#"{"NotIpAddress":{"acs:SourceIp":["192.168.0.0/16","10.1.0.0/16"]}}"#, No),
        // AND across operators and keys, OR across values.
        (r#"{"IpAddress":{"acs:SourceIp":"10.0.0.0/8"},"Bool":{"acs:SecureTransport":"false"}}"#, Allow),
        (r#"{"IpAddress":{"acs:SourceIp":"10.0.0.0/8"},"Bool":{"acs:SecureTransport":"true"}}"#, No),
        (r#"{"Bool":{"acs:SecureTransport":"false","acs:MFAPresent":"true"}}"#, No),
        (r#"{"Bool":{"acs:SecureTransport":["true","false"]}}"#, Allow),
        // Absent key (no Referer header): positive false, negated true.
        (r#"{"StringLike":{"acs:Referer":"*"}}"#, No),
        (r#"{"StringNotEquals":{"acs:Referer":"https://evil.example"}}"#, Allow),
    ];
    let c = ctx();
    for (condition, want) in cases {
        assert_eq!(allow_with(condition, &c), *want, "{condition}");
    }
}

#[test]
fn ipv4_mapped_peer_matches_ipv4_cidr() {
    let mut c = Context::new();
    c.source_ip("::ffff:10.9.8.7".parse().unwrap());
    assert_eq!(
        allow_with(r#"{"IpAddress":{"acs:SourceIp":"10.9.0.0/16"}}"#, &c),
        Decision::Allow
    );
    let mut v6 = Context::new();
    v6.source_ip("2001:db8::5".parse().unwrap());
    assert_eq!(
        allow_with(r#"{"IpAddress":{"acs:SourceIp":"2001:db8::/64"}}"#, &v6),
        Decision::Allow
    );
    assert_eq!(
        allow_with(r#"{"IpAddress":{"acs:SourceIp":"10.0.0.0/8"}}"#, &v6),
        Decision::ImplicitDeny
    );
}

#[test]
fn empty_context_only_negated_operators_hold() {
    let empty = Context::new();
    assert_eq!(
        allow_with(r#"{"Bool":{"acs:SecureTransport":"false"}}"#, &empty),
        Decision::ImplicitDeny
    );
    assert_eq!(
        allow_with(r#"{"NotIpAddress":{"acs:SourceIp":"10.0.0.0/8"}}"#, &empty),
        Decision::Allow
    );
}

/// A Deny guarded by a condition only applies when the condition holds; when
/// it does not, an unconditional Allow still grants.
#[test]
fn conditional_deny() {
    let p = Policy::parse(
        r#"{"Version":"1","Statement":[
            {"Effect":"Allow","Action":"dds:*","Resource":"*"},
            {"Effect":"Deny","Action":"dds:*","Resource":"*","Condition":{"Bool":{"acs:SecureTransport":"false"}}}
        ]}"#,
    )
    .unwrap();
    let mut plain = ctx();
    assert_eq!(
        evaluate(&[&p], &Request::new(ACTION, "*").with_context(&plain)),
        Decision::ExplicitDeny
    );
    plain.secure_transport(true);
    assert_eq!(
        evaluate(&[&p], &Request::new(ACTION, "*").with_context(&plain)),
        Decision::Allow
    );
}
