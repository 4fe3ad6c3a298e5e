//! The subset of Alibaba's RAM API (product `Ram`, version `2015-05-01`) that manages what ddsvault stores:
//! users, groups, custom policies, their attachments and AccessKeys. Served on the same endpoint as Dds, told apart
//! by `Version`; the official `alibabacloud-ram20150501` SDK calls it. Everything else of RAM (roles, login
//! profiles, MFA, policy versions…) answers `InvalidApi.NotFound`.

use chrono::{DateTime, Utc};
use ddsvault_api::{ApiError, Params};
use ddsvault_catalog::PrincipalKind;
use ddsvault_ram::{access_denied_detail, evaluate, Context, Decision, Request as RamRequest};
use serde_json::{json, Map, Value};

use crate::error::ActionError;
use crate::identity::admin::{IdentityAdmin, Principal};
use crate::router::ActionResult;
use crate::state::{AppState, ROOT_USER};

/// The RAM API version the official SDK sends.
pub const RAM_API_VERSION: &str = "2015-05-01";

const ACTIONS: [&str; 19] = [
    "CreateUser",
    "GetUser",
    "ListUsers",
    "DeleteUser",
    "CreateAccessKey",
    "UpdateAccessKey",
    "DeleteAccessKey",
    "ListAccessKeys",
    "CreatePolicy",
    "DeletePolicy",
    "AttachPolicyToUser",
    "DetachPolicyFromUser",
    "ListPoliciesForUser",
    "CreateGroup",
    "DeleteGroup",
    "AddUserToGroup",
    "RemoveUserFromGroup",
    "AttachPolicyToGroup",
    "DetachPolicyFromGroup",
];

/// RAM's date format.
fn ram_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Parameters ddsvault does not store are refused rather than dropped.
fn refuse_unstored(p: &Params, names: &[&str]) -> Result<(), ApiError> {
    for n in names {
        if p.get(n).is_some_and(|v| !v.is_empty()) {
            return Err(ApiError::invalid_parameter(
                n,
                "ddsvault does not store this field; leave it out.",
            ));
        }
    }
    Ok(())
}

fn custom_policy_type(p: &Params) -> Result<(), ActionError> {
    match p.required("PolicyType")? {
        "Custom" => Ok(()),
        "System" => Err(ActionError::RamNotFound {
            kind: "Policy",
            what: format!(
                "system policy {:?} (ddsvault has custom policies only)",
                p.get("PolicyName").unwrap_or_default()
            ),
        }),
        _ => Err(ApiError::invalid_parameter("PolicyType", "Valid values: Custom, System.").into()),
    }
}

/// The served RAM action of that name, as a static name (for the throttle's per-action buckets).
pub fn action(name: &str) -> Option<&'static str> {
    ACTIONS.iter().copied().find(|a| *a == name)
}

/// The RAM resources a call touches, for the caller's policies (`acs:ram:*:<account>:user/<name>`…) and the
/// audit trail.
pub fn resources(st: &AppState, action: &str, p: &Params) -> Vec<String> {
    let arn = |kind: &str, name: &str| format!("acs:ram:*:{}:{kind}/{name}", st.account_id);
    let mut out = Vec::new();
    if let Some(u) = p.get("UserName").filter(|u| !u.is_empty()) {
        out.push(arn("user", u));
    }
    if let Some(g) = p.get("GroupName").filter(|g| !g.is_empty()) {
        out.push(arn("group", g));
    }
    if matches!(action, "CreatePolicy" | "DeletePolicy") {
        if let Some(n) = p.get("PolicyName") {
            out.push(arn("policy", n));
        }
    }
    if out.is_empty() {
        out.push("*".into());
    }
    out
}

fn authorize(
    st: &AppState,
    access_key_id: &str,
    action: &str,
    p: &Params,
    context: &Context,
) -> Result<String, ApiError> {
    let (user, policies) = st.identities.principal(access_key_id)?;
    if user == ROOT_USER {
        return Ok(user);
    }
    let policies: Vec<&ddsvault_ram::Policy> = policies.iter().map(|p| p.as_ref()).collect();
    let ram_action = format!("ram:{action}");
    for resource in resources(st, action, p) {
        let decision = evaluate(
            &policies,
            &RamRequest::new(&ram_action, &resource).with_context(context),
        );
        if decision != Decision::Allow {
            return Err(ApiError::forbidden_ram(access_denied_detail(
                decision,
                &ram_action,
                &resource,
                &user,
                &st.account_id,
            )));
        }
    }
    Ok(user)
}

/// Authorizes and runs one RAM action.
pub async fn handle(
    st: &AppState,
    access_key_id: &str,
    action: &str,
    p: &Params,
    context: &Context,
) -> ActionResult {
    if !ACTIONS.contains(&action) {
        return Err(ApiError::api_not_found());
    }
    let caller = authorize(st, access_key_id, action, p, context)?;
    let admin = st.identities.admin();
    run(&admin, &caller, action, p)
        .await
        .map_err(ApiError::from)
}

/// The user whose keys a key call is about: `UserName`, else the caller (as in RAM).
fn key_owner<'a>(p: &'a Params, caller: &'a str) -> &'a str {
    p.get("UserName")
        .filter(|u| !u.is_empty())
        .unwrap_or(caller)
}

/// Runs one authorized RAM action: a short table from the action's name to the function that serves it, grouped
/// as RAM's documentation groups them (users, AccessKeys, policies, groups).
async fn run(
    admin: &IdentityAdmin,
    caller: &str,
    action: &str,
    p: &Params,
) -> Result<Map<String, Value>, ActionError> {
    match action {
        "CreateUser" => create_user(admin, p).await,
        "GetUser" => get_user(admin, p).await,
        "ListUsers" => list_users(admin).await,
        "DeleteUser" => delete_user(admin, p).await,
        "CreateAccessKey" => create_access_key(admin, caller, p).await,
        "UpdateAccessKey" | "DeleteAccessKey" => change_access_key(admin, caller, action, p).await,
        "ListAccessKeys" => list_access_keys(admin, caller, p).await,
        "CreatePolicy" => create_policy(admin, p).await,
        "DeletePolicy" => delete_policy(admin, p).await,
        "AttachPolicyToUser"
        | "DetachPolicyFromUser"
        | "AttachPolicyToGroup"
        | "DetachPolicyFromGroup" => attach_or_detach_policy(admin, action, p).await,
        "ListPoliciesForUser" => list_policies_for_user(admin, p).await,
        "CreateGroup" => create_group(admin, p).await,
        "DeleteGroup" => delete_group(admin, p).await,
        "AddUserToGroup" => add_user_to_group(admin, p).await,
        "RemoveUserFromGroup" => remove_user_from_group(admin, p).await,
        _ => Err(ApiError::api_not_found().into()),
    }
}

// ------------------------------------------------------------------------------------------------------------
// Users

/// A user as RAM answers it (ddsvault keeps no separate update time: it is the creation time).
fn user_json(u: &ddsvault_catalog::RamUserRecord) -> Value {
    json!({"UserName": u.name, "DisplayName": u.display_name, "CreateDate": ram_time(u.created_at),
           "UpdateDate": ram_time(u.created_at)})
}

async fn create_user(admin: &IdentityAdmin, p: &Params) -> Result<Map<String, Value>, ActionError> {
    refuse_unstored(p, &["Email", "MobilePhone", "Comments"])?;
    let name = p.required("UserName")?;
    admin
        .create_user(name, p.get("DisplayName").unwrap_or_default())
        .await?;
    let snap = admin.snapshot().await?;
    let u = snap.users.iter().find(|u| u.name == name).ok_or_else(|| {
        ActionError::Internal("the user vanished right after its creation".into())
    })?;
    Ok(obj(json!({"User": user_json(u)})))
}

async fn get_user(admin: &IdentityAdmin, p: &Params) -> Result<Map<String, Value>, ActionError> {
    let name = p.required("UserName")?;
    let snap = admin.snapshot().await?;
    let u = snap
        .users
        .iter()
        .find(|u| u.name == name)
        .ok_or_else(|| ActionError::RamNotFound {
            kind: "User",
            what: format!("RAM user {name:?}"),
        })?;
    Ok(obj(json!({"User": user_json(u)})))
}

async fn list_users(admin: &IdentityAdmin) -> Result<Map<String, Value>, ActionError> {
    let snap = admin.snapshot().await?;
    let users: Vec<Value> = snap.users.iter().map(user_json).collect();
    Ok(obj(json!({"IsTruncated": false, "Users": {"User": users}})))
}

async fn delete_user(admin: &IdentityAdmin, p: &Params) -> Result<Map<String, Value>, ActionError> {
    admin.delete_user(p.required("UserName")?).await?;
    Ok(Map::new())
}

// ------------------------------------------------------------------------------------------------------------
// AccessKeys

async fn create_access_key(
    admin: &IdentityAdmin,
    caller: &str,
    p: &Params,
) -> Result<Map<String, Value>, ActionError> {
    let k = admin.create_key(key_owner(p, caller)).await?;
    Ok(obj(
        json!({"AccessKey": {"AccessKeyId": k.id, "AccessKeySecret": k.secret, "Status": "Active",
                             "CreateDate": ram_time(Utc::now())}}),
    ))
}

/// `UpdateAccessKey` (its `Status`) and `DeleteAccessKey`, on a key of the owner [`key_owner`] names.
async fn change_access_key(
    admin: &IdentityAdmin,
    caller: &str,
    action: &str,
    p: &Params,
) -> Result<Map<String, Value>, ActionError> {
    let id = p.required("UserAccessKeyId")?;
    let owner = key_owner(p, caller);
    // A key of another user is "not found" for this user, as in RAM.
    if !admin
        .list_keys(Some(owner))
        .await?
        .iter()
        .any(|k| k.id == id)
    {
        return Err(ActionError::RamNotFound {
            kind: "User.AccessKey",
            what: format!("AccessKey {id:?} of user {owner:?}"),
        });
    }
    if action == "DeleteAccessKey" {
        admin.delete_key(id).await?;
    } else {
        let active = match p.required("Status")? {
            "Active" => true,
            "Inactive" => false,
            _ => {
                return Err(ApiError::invalid_parameter(
                    "Status",
                    "Valid values: Active, Inactive.",
                )
                .into())
            }
        };
        admin.set_key_active(id, active).await?;
    }
    Ok(Map::new())
}

async fn list_access_keys(
    admin: &IdentityAdmin,
    caller: &str,
    p: &Params,
) -> Result<Map<String, Value>, ActionError> {
    let owner = key_owner(p, caller);
    let keys: Vec<Value> = admin
        .list_keys(Some(owner))
        .await?
        .iter()
        .map(|k| {
            json!({"AccessKeyId": k.id, "Status": if k.active { "Active" } else { "Inactive" },
                   "CreateDate": ram_time(k.created_at)})
        })
        .collect();
    Ok(obj(json!({"AccessKeys": {"AccessKey": keys}})))
}

// ------------------------------------------------------------------------------------------------------------
// Policies

async fn create_policy(
    admin: &IdentityAdmin,
    p: &Params,
) -> Result<Map<String, Value>, ActionError> {
    refuse_unstored(p, &["Description"])?;
    if p.iter().any(|(k, _)| k.starts_with("Tag.")) {
        return Err(ApiError::invalid_parameter(
            "Tag",
            "ddsvault does not store tags; leave them out.",
        )
        .into());
    }
    let name = p.required("PolicyName")?;
    admin
        .create_policy(name, p.required("PolicyDocument")?)
        .await?;
    Ok(obj(
        json!({"Policy": {"PolicyName": name, "PolicyType": "Custom", "Description": "",
                          "DefaultVersion": "v1", "CreateDate": ram_time(Utc::now())}}),
    ))
}

async fn delete_policy(
    admin: &IdentityAdmin,
    p: &Params,
) -> Result<Map<String, Value>, ActionError> {
    admin.delete_policy(p.required("PolicyName")?).await?;
    Ok(Map::new())
}

/// `AttachPolicyTo{User,Group}` and `DetachPolicyFrom{User,Group}`: the action's name says which.
async fn attach_or_detach_policy(
    admin: &IdentityAdmin,
    action: &str,
    p: &Params,
) -> Result<Map<String, Value>, ActionError> {
    custom_policy_type(p)?;
    let policy = p.required("PolicyName")?;
    let to = if action.ends_with("User") {
        Principal::User(p.required("UserName")?.to_string())
    } else {
        Principal::Group(p.required("GroupName")?.to_string())
    };
    if action.starts_with("Attach") {
        admin.attach(policy, &to).await?;
    } else {
        admin.detach(policy, &to).await?;
    }
    Ok(Map::new())
}

async fn list_policies_for_user(
    admin: &IdentityAdmin,
    p: &Params,
) -> Result<Map<String, Value>, ActionError> {
    let name = p.required("UserName")?;
    let snap = admin.snapshot().await?;
    if !snap.users.iter().any(|u| u.name == name) {
        return Err(ActionError::RamNotFound {
            kind: "User",
            what: format!("RAM user {name:?}"),
        });
    }
    let policies: Vec<Value> = snap
        .attachments
        .iter()
        .filter(|a| a.kind == PrincipalKind::User && a.principal == name)
        .map(|a| {
            json!({"PolicyName": a.policy, "PolicyType": "Custom", "Description": "",
                   "DefaultVersion": "v1"})
        })
        .collect();
    Ok(obj(json!({"Policies": {"Policy": policies}})))
}

// ------------------------------------------------------------------------------------------------------------
// Groups

async fn create_group(
    admin: &IdentityAdmin,
    p: &Params,
) -> Result<Map<String, Value>, ActionError> {
    refuse_unstored(p, &["Comments"])?;
    let name = p.required("GroupName")?;
    admin.create_group(name).await?;
    Ok(obj(
        json!({"Group": {"GroupName": name, "Comments": "", "CreateDate": ram_time(Utc::now())}}),
    ))
}

async fn delete_group(
    admin: &IdentityAdmin,
    p: &Params,
) -> Result<Map<String, Value>, ActionError> {
    admin.delete_group(p.required("GroupName")?).await?;
    Ok(Map::new())
}

async fn add_user_to_group(
    admin: &IdentityAdmin,
    p: &Params,
) -> Result<Map<String, Value>, ActionError> {
    admin
        .add_member(p.required("GroupName")?, p.required("UserName")?)
        .await?;
    Ok(Map::new())
}

async fn remove_user_from_group(
    admin: &IdentityAdmin,
    p: &Params,
) -> Result<Map<String, Value>, ActionError> {
    admin
        .remove_member(p.required("GroupName")?, p.required("UserName")?)
        .await?;
    Ok(Map::new())
}
