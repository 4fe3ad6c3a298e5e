//! The AccessDeniedDetail object (docs/protocol.md §9).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ddsvault_ram::{access_denied_detail, Decision};
use serde_json::{json, Value};

const ARN: &str = "acs:dds:cn-hangzhou:111:dbinstance/dds-x";

fn decode(detail: &Value) -> Value {
    let encoded = detail["EncodedDiagnosticMessage"]
        .as_str()
        .expect("EncodedDiagnosticMessage is a string");
    let bytes = STANDARD.decode(encoded).expect("valid base64");
    serde_json::from_slice(&bytes).expect("base64 of JSON")
}

#[test]
fn implicit_deny_detail() {
    let d = access_denied_detail(
        Decision::ImplicitDeny,
        "dds:CreateBackup",
        ARN,
        "alice",
        "111",
    );
    let keys: Vec<&str> = d
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "AuthAction",
            "AuthPrincipalDisplayName",
            "AuthPrincipalOwnerId",
            "AuthPrincipalType",
            "NoPermissionType",
            "PolicyType",
            "EncodedDiagnosticMessage",
        ]
    );
    assert_eq!(d["AuthAction"], "dds:CreateBackup");
    assert_eq!(d["AuthPrincipalDisplayName"], "alice");
    assert_eq!(d["AuthPrincipalOwnerId"], "111");
    assert_eq!(d["AuthPrincipalType"], "SubUser");
    assert_eq!(d["NoPermissionType"], "ImplicitDeny");
    assert_eq!(d["PolicyType"], "AccountLevelIdentityBasedPolicy");
    assert_eq!(
        decode(&d),
        json!({
            "ExplicitDeny": false,
            "NoPermissionPolicyType": "AccountLevelIdentityBasedPolicy",
            "AuthAction": "dds:CreateBackup",
            "AuthResource": ARN,
            "AuthPrincipal": {
                "AuthPrincipalType": "SubUser",
                "AuthPrincipalOwnerId": "111",
                "AuthPrincipalDisplayName": "alice",
            },
        })
    );
}

#[test]
fn explicit_deny_detail() {
    let d = access_denied_detail(
        Decision::ExplicitDeny,
        "dds:DeleteDBInstance",
        "*",
        "bob",
        "222",
    );
    assert_eq!(d["NoPermissionType"], "ExplicitDeny");
    let diag = decode(&d);
    assert_eq!(diag["ExplicitDeny"], true);
    assert_eq!(diag["AuthResource"], "*");
    assert_eq!(diag["AuthAction"], "dds:DeleteDBInstance");
}

#[test]
fn allow_is_reported_as_implicit_deny() {
    let d = access_denied_detail(Decision::Allow, "dds:CreateBackup", "*", "carol", "333");
    assert_eq!(d["NoPermissionType"], "ImplicitDeny");
    assert_eq!(decode(&d)["ExplicitDeny"], false);
}

#[test]
fn hostile_names_are_escaped_not_injected() {
    let user = "eve\",\"NoPermissionType\":\"x";
    let d = access_denied_detail(Decision::ImplicitDeny, "dds:*", "*", user, "1");
    assert_eq!(d["AuthPrincipalDisplayName"], user);
    assert_eq!(d["NoPermissionType"], "ImplicitDeny");
    assert_eq!(
        decode(&d)["AuthPrincipal"]["AuthPrincipalDisplayName"],
        user
    );
}
