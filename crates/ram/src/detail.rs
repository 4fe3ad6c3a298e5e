//! The `AccessDeniedDetail` object returned with authorization failures
//! (docs/protocol.md §9).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::eval::Decision;

/// We only evaluate the account-level identity policies attached to RAM
/// users, so that is always the policy type that denied.
const POLICY_TYPE: &str = "AccountLevelIdentityBasedPolicy";
/// Only RAM users (not roles or federated principals) exist so far.
const PRINCIPAL_TYPE: &str = "SubUser";

/// Builds the `AccessDeniedDetail` JSON object for a denied request.
///
/// Keys are PascalCase and in the order of Alibaba's documented example:
/// `AuthAction`, `AuthPrincipalDisplayName`, `AuthPrincipalOwnerId`,
/// `AuthPrincipalType` (`"SubUser"`), `NoPermissionType`, `PolicyType`
/// (`"AccountLevelIdentityBasedPolicy"`) and `EncodedDiagnosticMessage`.
///
/// `EncodedDiagnosticMessage` is standard base64 (with padding) of a compact
/// JSON object shaped like the output of RAM's `DecodeDiagnosticMessage`:
/// `ExplicitDeny` (bool), `NoPermissionPolicyType`, `AuthAction`,
/// `AuthResource` and `AuthPrincipal` {`AuthPrincipalType`,
/// `AuthPrincipalOwnerId`, `AuthPrincipalDisplayName`}. Alibaba's blob is
/// opaque to clients, so plain base64 is compatible; it only repeats what the
/// caller already knows about its own request.
///
/// `decision` should be a denial. If [`Decision::Allow`] is passed anyway
/// (e.g. the caller denies for another reason, such as another resource of a
/// multi-resource request), the denial is reported as `ImplicitDeny`: no
/// explicit Deny statement was involved.
pub fn access_denied_detail(
    decision: Decision,
    action: &str,
    resource: &str,
    user: &str,
    account_id: &str,
) -> Value {
    let explicit = decision == Decision::ExplicitDeny;
    let no_permission_type = if explicit {
        "ExplicitDeny"
    } else {
        "ImplicitDeny"
    };
    let diagnostic = json!({
        "ExplicitDeny": explicit,
        "NoPermissionPolicyType": POLICY_TYPE,
        "AuthAction": action,
        "AuthResource": resource,
        "AuthPrincipal": {
            "AuthPrincipalType": PRINCIPAL_TYPE,
            "AuthPrincipalOwnerId": account_id,
            "AuthPrincipalDisplayName": user,
        },
    });
    json!({
        "AuthAction": action,
        "AuthPrincipalDisplayName": user,
        "AuthPrincipalOwnerId": account_id,
        "AuthPrincipalType": PRINCIPAL_TYPE,
        "NoPermissionType": no_permission_type,
        "PolicyType": POLICY_TYPE,
        "EncodedDiagnosticMessage": STANDARD.encode(diagnostic.to_string()),
    })
}
