//! Every validation error, with the exact variant and the words the message
//! must contain for an administrator to find the problem.

use ddsvault_ram::{Location, Policy, PolicyError, MAX_POLICY_DOCUMENT_CHARS};

use Location::{Document, Statement as St};

/// Wraps statement bodies in a valid document.
fn doc(statements: &str) -> String {
    format!(r#"{{"Version":"1","Statement":[{statements}]}}"#)
}

const OK: &str = r#"{"Effect":"Allow","Action":"dds:*","Resource":"*"}"#;

fn err(document: &str) -> PolicyError {
    match Policy::parse(document) {
        Ok(_) => panic!("expected an error for {document}"),
        Err(e) => e,
    }
}

/// Asserts the exact error and that its message mentions each of `words`.
fn check(document: &str, want: PolicyError, words: &[&str]) {
    let got = err(document);
    assert_eq!(got, want, "document: {document}");
    let message = got.to_string();
    for w in words {
        assert!(message.contains(w), "message {message:?} lacks {w:?}");
    }
}

#[test]
fn valid_documents_parse() {
    let valid = [
        doc(OK),
        doc(&format!("{OK},{OK}")),
        r#"{"Version":"1","Statement":{"Effect":"Deny","NotAction":["dds:Delete*"],"NotResource":["acs:dds:*:*:dbinstance/x"]}}"#.to_owned(),
        r#"{"Statement":[{"Resource":"*","Action":"*","Effect":"Allow","Sid":"AnyOrder"}],"Version":"1"}"#.to_owned(),
        doc(r#"{"Effect":"Allow","Action":["dds:Describe*","dds:?reateBackup","DDS:*"],"Resource":["acs:dds:cn-hangzhou:123:dbinstance/dds-*","*"]}"#),
        // Whitespace and a non-ASCII Sid are fine.
        format!("\n  {}  \n", doc(r#"{"Sid":"只读","Effect":"Allow","Action":"dds:*","Resource":"*"}"#)),
    ];
    for d in valid {
        if let Err(e) = Policy::parse(&d) {
            panic!("{d}: {e}");
        }
    }
}

#[test]
fn document_level_errors() {
    assert!(matches!(err(""), PolicyError::MalformedJson { .. }));
    assert!(matches!(err("{"), PolicyError::MalformedJson { .. }));
    assert!(matches!(
        err(r#"{"Version":"1",}"#),
        PolicyError::MalformedJson { .. }
    ));
    assert!(matches!(
        err(&format!("{} trailing", doc(OK))),
        PolicyError::MalformedJson { .. }
    ));
    let deep = "[".repeat(1000) + &"]".repeat(1000);
    assert!(matches!(err(&deep), PolicyError::MalformedJson { .. }));
    assert!(err("{").to_string().contains("not valid JSON"));

    check(
        "[]",
        PolicyError::NotAnObject {
            found: "an array".into(),
        },
        &["JSON object"],
    );
    check(
        r#""x""#,
        PolicyError::NotAnObject {
            found: r#"the string "x""#.into(),
        },
        &["JSON object"],
    );

    check(
        &format!(r#"{{"Statement":[{OK}]}}"#),
        PolicyError::MissingVersion,
        &["Version"],
    );
    check(
        &format!(r#"{{"Version":"2","Statement":[{OK}]}}"#),
        PolicyError::InvalidVersion {
            found: r#"the string "2""#.into(),
        },
        &["Version", "\"1\"", "\"2\""],
    );
    check(
        &format!(r#"{{"Version":1,"Statement":[{OK}]}}"#),
        PolicyError::InvalidVersion {
            found: "the number 1".into(),
        },
        &["Version", "string"],
    );
    check(
        r#"{"Version":"1"}"#,
        PolicyError::MissingStatement,
        &["Statement"],
    );
    check(
        r#"{"Version":"1","Statement":[]}"#,
        PolicyError::EmptyStatement,
        &["Statement", "at least one"],
    );
    check(
        r#"{"Version":"1","Statement":"Allow"}"#,
        PolicyError::InvalidStatement {
            location: Document,
            found: r#"the string "Allow""#.into(),
        },
        &["statement", "object"],
    );
    check(
        &doc(&format!("{OK},[]")),
        PolicyError::InvalidStatement {
            location: St(1),
            found: "an array".into(),
        },
        &["Statement[1]"],
    );
}

#[test]
fn too_long() {
    // Pad with whitespace so the only problem is the length.
    let base = doc(OK);
    let at_limit = format!(
        "{base}{}",
        " ".repeat(MAX_POLICY_DOCUMENT_CHARS - base.len())
    );
    assert_eq!(at_limit.chars().count(), MAX_POLICY_DOCUMENT_CHARS);
    assert!(Policy::parse(&at_limit).is_ok());
    let over = format!("{at_limit} ");
    check(
        &over,
        PolicyError::TooLong {
            length: MAX_POLICY_DOCUMENT_CHARS + 1,
            max: MAX_POLICY_DOCUMENT_CHARS,
        },
        &["6144", "6145"],
    );
    // Characters, not bytes: a 3-byte character counts once.
    let sid = "界".repeat(3000);
    let wide = doc(&format!(
        r#"{{"Sid":"{sid}","Effect":"Allow","Action":"dds:*","Resource":"*"}}"#
    ));
    assert!(wide.len() > MAX_POLICY_DOCUMENT_CHARS);
    assert!(Policy::parse(&wide).is_ok());
    // Huge garbage is rejected by length before any JSON parsing.
    assert!(matches!(
        err(&"x".repeat(1_000_000)),
        PolicyError::TooLong { .. }
    ));
}

#[test]
fn unknown_and_duplicate_elements() {
    let unknown = |location, element: &str| match err(&element_doc(location, element)) {
        PolicyError::UnknownElement {
            location: l,
            element: e,
            hint,
        } => {
            assert_eq!((l, e.as_str()), (location, element));
            hint
        }
        other => panic!("{element}: unexpected {other:?}"),
    };
    let hint = unknown(St(0), "Principal");
    assert!(hint.contains("resource-based"), "{hint}");
    let hint = unknown(St(0), "Actions");
    assert!(hint.contains(r#"did you mean "Action""#), "{hint}");
    let hint = unknown(St(0), "resource");
    assert!(hint.contains(r#"did you mean "Resource""#), "{hint}");
    let hint = unknown(St(0), "condition");
    assert!(hint.contains(r#""Condition""#), "{hint}");
    let hint = unknown(St(0), "Bogus");
    assert!(hint.contains("expected one of"), "{hint}");
    let hint = unknown(Document, "Statements");
    assert!(hint.contains(r#"did you mean "Statement""#), "{hint}");
    let hint = unknown(Document, "Id");
    assert!(hint.contains("Version, Statement"), "{hint}");
    let hint = unknown(Document, "Effect");
    assert!(hint.contains("inside a statement"), "{hint}");
    // Conditions outside a statement are not silently accepted either.
    unknown(Document, "Condition");

    let message = err(&element_doc(St(0), "Principal")).to_string();
    assert!(
        message.contains("Statement[0]") && message.contains("\"Principal\""),
        "{message}"
    );

    check(
        &doc(r#"{"Effect":"Deny","Effect":"Allow","Action":"dds:*","Resource":"*"}"#),
        PolicyError::DuplicateElement {
            location: St(0),
            element: "Effect".into(),
        },
        &["Statement[0]", "Effect", "more than once"],
    );
    check(
        &format!(r#"{{"Version":"1","Version":"1","Statement":[{OK}]}}"#),
        PolicyError::DuplicateElement {
            location: Document,
            element: "Version".into(),
        },
        &["Version"],
    );
}

/// A valid document with one extra element added at `location`.
fn element_doc(location: Location, element: &str) -> String {
    match location {
        Document => format!(r#"{{"Version":"1","{element}":"x","Statement":[{OK}]}}"#),
        St(_) => doc(&format!(
            r#"{{"Effect":"Allow","Action":"dds:*","Resource":"*","{element}":"x"}}"#
        )),
    }
}

/// Conditions: valid blocks parse, and each kind of mistake is reported
/// with the statement, operator and key it concerns.
#[test]
fn condition_validation() {
    let valid = [
        r#"{"IpAddress":{"acs:SourceIp":["10.0.0.0/8","2001:db8::/32","192.168.1.7"]}}"#,
        r#"{"NotIpAddress":{"ACS:SOURCEIP":"10.0.0.0/8"}}"#,
        r#"{"Bool":{"acs:SecureTransport":true,"acs:MFAPresent":"false"}}"#,
        r#"{"DateLessThan":{"acs:CurrentTime":"2019-08-12T17:00:00+08:00"},"DateGreaterThan":{"acs:CurrentTime":"2017-11-11T23:59:59Z"}}"#,
        r#"{"NumericGreaterThanEquals":{"acs:EpochTime":[1500000000,"1600000000.5"]}}"#,
        r#"{"StringLike":{"acs:UserAgent":"*Tea*"},"StringNotEqualsIgnoreCase":{"acs:Referer":"x"}}"#,
        r#"{"StringEquals":{"acs:SecureTransport":"true","acs:SourceIp":"127.0.0.1"}}"#,
    ];
    for c in valid {
        let d = doc(&format!(
            r#"{OK},{{"Effect":"Deny","Action":"dds:*","Resource":"*","Condition":{c}}}"#
        ));
        if let Err(e) = Policy::parse(&d) {
            panic!("{c} should be valid: {e}");
        }
    }

    #[rustfmt::skip]
    let invalid: &[(&str, &[&str])] = &[
        (r#"{}"#, &["Statement[1]", "Condition must not be empty"]),
        (r#"null"#, &["Statement[1]", "\"Condition\"", "an object of operators", "found null"]),
        (r#"{"IpAddress":{}}"#, &["Condition.IpAddress must not be empty"]),
        (r#"{"IpAddress":"10.0.0.0/8"}"#, &["Condition.IpAddress", "object of condition keys"]),
        (r#"{"ipaddress":{"acs:SourceIp":"10.0.0.0/8"}}"#, &["unknown condition operator", "did you mean \"IpAddress\""]),
        (r#"{"StringEqualsIfExists":{"acs:UserAgent":"x"}}"#, &["unknown condition operator", "IfExists"]),
        (r#"{"ForAnyValue:StringEquals":{"acs:UserAgent":"x"}}"#, &["unknown condition operator", "set operators"]),
        (r#"{"Frobnicate":{"acs:UserAgent":"x"}}"#, &["unknown condition operator", "expected one of", "StringLike"]),
        (r#"{"StringEquals":{"acs:SourceVpc":"vpc-1"}}"#, &["Condition.StringEquals", "unknown condition key \"acs:SourceVpc\"", "acs:SourceIp"]),
        (r#"{"StringEquals":{"SourceIp":"1.2.3.4"}}"#, &["unknown condition key"]),
        (r#"{"IpAddress":{"acs:CurrentTime":"10.0.0.0/8"}}"#, &["Condition.IpAddress cannot test acs:CurrentTime", "Date key"]),
        (r#"{"Bool":{"acs:SourceIp":"true"}}"#, &["Condition.Bool cannot test acs:SourceIp", "IP address key"]),
        (r#"{"NumericLessThan":{"acs:CurrentTime":"5"}}"#, &["cannot test acs:CurrentTime"]),
        (r#"{"IpAddress":{"acs:SourceIp":"10.0.0.0/33"}}"#, &["Condition.IpAddress.acs:SourceIp", "CIDR", "\"10.0.0.0/33\""]),
        (r#"{"IpAddress":{"acs:SourceIp":"116.62.XX.XX/24"}}"#, &["CIDR"]),
        (r#"{"IpAddress":{"acs:SourceIp":[]}}"#, &["an empty list"]),
        (r#"{"IpAddress":{"acs:SourceIp":["10.0.0.0/8",7]}}"#, &["the number 7"]),
        (r#"{"DateLessThan":{"acs:CurrentTime":"2019-08-12"}}"#, &["Condition.DateLessThan.acs:CurrentTime", "ISO 8601", "\"2019-08-12\""]),
        (r#"{"DateLessThan":{"acs:CurrentTime":1565600000}}"#, &["ISO 8601", "the number 1565600000"]),
        (r#"{"NumericEquals":{"acs:EpochTime":"soon"}}"#, &["Condition.NumericEquals.acs:EpochTime", "number", "\"soon\""]),
        (r#"{"NumericEquals":{"acs:EpochTime":"NaN"}}"#, &["number"]),
        (r#"{"Bool":{"acs:SecureTransport":"yes"}}"#, &["Condition.Bool.acs:SecureTransport", "true or false", "\"yes\""]),
        (r#"{"StringEquals":{"acs:UserAgent":{"a":1}}}"#, &["a string", "an object"]),
        (r#"{"StringEquals":{"acs:UserAgent":null}}"#, &["found null"]),
        (r#"{"StringEquals":{"acs:UserAgent":"a"},"StringEquals":{"acs:UserAgent":"b"}}"#, &["\"Condition.StringEquals\"", "more than once"]),
        (r#"{"StringEquals":{"acs:UserAgent":"a","ACS:USERAGENT":"b"}}"#, &["\"Condition.StringEquals.acs:UserAgent\"", "more than once"]),
    ];
    for (c, words) in invalid {
        let d = doc(&format!(
            r#"{OK},{{"Effect":"Allow","Action":"dds:*","Resource":"*","Condition":{c}}}"#
        ));
        let e = err(&d);
        let msg = e.to_string();
        for w in *words {
            assert!(msg.contains(w), "{c}: message {msg:?} lacks {w:?}");
        }
    }
}

/// Statement-level errors. Each bad statement is placed second, after a valid
/// one, so that the reported location is really checked.
#[test]
fn statement_errors() {
    const L: Location = St(1);
    const LIST: &str = "a string or a list of strings";
    #[rustfmt::skip]
    let cases: Vec<(&str, PolicyError, &[&str])> = vec![
        (r#"{"Action":"dds:*","Resource":"*"}"#, PolicyError::MissingEffect { location: L }, &["Statement[1]", "Effect"]),
        (r#"{"Effect":"allow","Action":"dds:*","Resource":"*"}"#, PolicyError::InvalidEffect { location: L, found: r#"the string "allow""#.into() }, &["Allow", "Deny", "case-sensitive", "\"allow\""]),
        (r#"{"Effect":"DENY","Action":"dds:*","Resource":"*"}"#, PolicyError::InvalidEffect { location: L, found: r#"the string "DENY""#.into() }, &["Effect"]),
        (r#"{"Effect":true,"Action":"dds:*","Resource":"*"}"#, PolicyError::InvalidEffect { location: L, found: "true".into() }, &["Effect"]),
        (r#"{"Effect":"Allow","Action":"dds:*","NotAction":"dds:Delete*","Resource":"*"}"#, PolicyError::BothActionAndNotAction { location: L }, &["Action", "NotAction", "mutually exclusive"]),
        (r#"{"Effect":"Allow","Resource":"*"}"#, PolicyError::MissingAction { location: L }, &["Action"]),
        (r#"{"Effect":"Allow","Action":"dds:*","Resource":"*","NotResource":"acs:dds:*:*:x"}"#, PolicyError::BothResourceAndNotResource { location: L }, &["Resource", "NotResource", "mutually exclusive"]),
        (r#"{"Effect":"Allow","Action":"dds:*"}"#, PolicyError::MissingResource { location: L }, &["Resource", "\"*\""]),
        (r#"{"Effect":"Allow","Action":"","Resource":"*"}"#, PolicyError::EmptyAction { location: L, element: "Action" }, &["empty action"]),
        (r#"{"Effect":"Allow","NotAction":["dds:*",""],"Resource":"*"}"#, PolicyError::EmptyAction { location: L, element: "NotAction" }, &["NotAction"]),
        (r#"{"Effect":"Allow","Action":"CreateBackup","Resource":"*"}"#, PolicyError::MissingServicePrefix { location: L, action: "CreateBackup".into() }, &["\"CreateBackup\"", "service prefix", "dds:"]),
        (r#"{"Effect":"Allow","Action":":CreateBackup","Resource":"*"}"#, PolicyError::MissingServicePrefix { location: L, action: ":CreateBackup".into() }, &["service prefix"]),
        (r#"{"Effect":"Allow","Action":["dds:*","dds*"],"Resource":"*"}"#, PolicyError::MissingServicePrefix { location: L, action: "dds*".into() }, &["service prefix"]),
        (r#"{"Effect":"Allow","Action":[],"Resource":"*"}"#, PolicyError::EmptyList { location: L, element: "Action" }, &["\"Action\"", "empty list"]),
        (r#"{"Effect":"Allow","Action":"*","Resource":[]}"#, PolicyError::EmptyList { location: L, element: "Resource" }, &["\"Resource\""]),
        (r#"{"Effect":"Allow","Action":7,"Resource":"*"}"#, PolicyError::InvalidValueType { location: L, element: "Action", expected: LIST, found: "the number 7".into() }, &["Action", "list of strings", "number 7"]),
        (r#"{"Effect":"Allow","Action":["dds:*",["x"]],"Resource":"*"}"#, PolicyError::InvalidValueType { location: L, element: "Action", expected: LIST, found: "a list containing an array".into() }, &["list containing"]),
        (r#"{"Effect":"Allow","Action":"*","NotResource":{"a":1}}"#, PolicyError::InvalidValueType { location: L, element: "NotResource", expected: LIST, found: "an object".into() }, &["NotResource"]),
        (r#"{"Sid":5,"Effect":"Allow","Action":"*","Resource":"*"}"#, PolicyError::InvalidValueType { location: L, element: "Sid", expected: "a string", found: "the number 5".into() }, &["Sid"]),
        (r#"{"Effect":"Allow","Action":"*","Resource":""}"#, PolicyError::EmptyResource { location: L, element: "Resource" }, &["empty resource"]),
        (r#"{"Effect":"Allow","Action":"*","NotResource":["*",""]}"#, PolicyError::EmptyResource { location: L, element: "NotResource" }, &["NotResource"]),
        (r#"{"Effect":"Allow","Action":"dds:*","Resource":"*","Condition":{}}"#, PolicyError::EmptyCondition { location: L, operator: None }, &["Condition must not be empty"]),
        (r#"{"Effect":"Allow","Principal":"*","Action":"dds:*","Resource":"*"}"#, PolicyError::UnknownElement { location: L, element: "Principal".into(), hint: "; Principal is only allowed in resource-based policies (such as a role's trust policy), not in identity policies".into() }, &["Principal"]),
    ];
    for (statement, want, words) in cases {
        check(&doc(&format!("{OK},{statement}")), want, words);
    }
}

/// Malformed actions and resources whose error carries a free-text reason:
/// the variant, location and value are exact, the reason is checked for a
/// telling word.
#[test]
fn action_and_resource_format_errors() {
    #[rustfmt::skip]
    let actions = [
        ("dds:", "empty", "\"dds:*\""),
        ("dds: CreateBackup", "whitespace", "whitespace"),
        ("dds:Create\tBackup", "whitespace", "control"),
    ];
    for (action, reason_word, message_word) in actions {
        let statement = json_statement("Action", action, "Resource", "*");
        let e = err(&doc(&format!("{OK},{statement}")));
        match &e {
            PolicyError::InvalidAction {
                location: St(1),
                action: a,
                reason,
            } if a == action && reason.contains(reason_word) => {}
            other => panic!("{action:?}: unexpected {other:?}"),
        }
        assert!(e.to_string().contains(message_word), "{e}");
    }

    #[rustfmt::skip]
    let resources = [
        ("dds-bp1xxxx", "ARN", "acs:dds:"),
        ("ACS:dds:*:*:*", "ARN", "\"ACS:dds:*:*:*\""),
        ("dbinstance/*", "ARN", "ARN"),
        ("acs:dds:*:*:dbinstance/x ", "whitespace", "whitespace"),
    ];
    for (resource, reason_word, message_word) in resources {
        for element in ["Resource", "NotResource"] {
            let statement = json_statement("Action", "dds:*", element, resource);
            let e = err(&doc(&format!("{OK},{statement}")));
            match &e {
                PolicyError::InvalidResource {
                    location: St(1),
                    resource: r,
                    reason,
                } if r == resource && reason.contains(reason_word) => {}
                other => panic!("{resource:?}: unexpected {other:?}"),
            }
            assert!(e.to_string().contains(message_word), "{e}");
        }
    }
}

/// A statement with string values, JSON-escaped properly.
fn json_statement(action_key: &str, action: &str, resource_key: &str, resource: &str) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("Effect".into(), "Allow".into());
    obj.insert(action_key.into(), action.into());
    obj.insert(resource_key.into(), resource.into());
    serde_json::Value::Object(obj).to_string()
}

#[test]
fn messages_name_the_statement() {
    let e = err(&doc(&format!(
        "{OK},{OK},{}",
        r#"{"Effect":"Allow","Action":"Describe*","Resource":"*"}"#
    )));
    assert!(e.to_string().starts_with("Statement[2]: "), "{e}");
}
