//! Evaluation of a request against a user's policies (docs/protocol.md §8.2).

use crate::condition::{Context, EMPTY_CONTEXT};
use crate::policy::{Effect, Policy};

/// The outcome of evaluating a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Some statement allows the request and none denies it.
    Allow,
    /// Some `Deny` statement matches the request; this overrides any Allow.
    ExplicitDeny,
    /// No statement matches the request (RAM's default).
    ImplicitDeny,
}

impl Decision {
    /// `true` only for [`Decision::Allow`].
    pub fn is_allowed(self) -> bool {
        self == Decision::Allow
    }

    /// The `NoPermissionType` value reported to clients for a denial, or
    /// `None` for [`Decision::Allow`].
    pub fn no_permission_type(self) -> Option<&'static str> {
        match self {
            Decision::Allow => None,
            Decision::ExplicitDeny => Some("ExplicitDeny"),
            Decision::ImplicitDeny => Some("ImplicitDeny"),
        }
    }
}

/// What a caller is trying to do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request<'a> {
    /// The RAM action, e.g. `"dds:CreateBackup"`. Matched case-insensitively.
    pub action: &'a str,
    /// The resource ARN, e.g. `"acs:dds:cn-hangzhou:123:dbinstance/dds-x"`,
    /// or `"*"` for actions that are not resource-scoped (creation, listing
    /// without an id). Matched case-sensitively.
    ///
    /// Patterns are matched against this string literally, so a `"*"`
    /// request is only covered by statements whose `Resource` matches the
    /// text `*`, in practice `"*"` itself; an instance ARN pattern such as
    /// `acs:dds:*:*:dbinstance/*` does not cover it.
    pub resource: &'a str,
    /// The condition keys' values for this request. Keys it does not set are
    /// absent, which makes positive condition operators on them false.
    pub context: &'a Context,
}

impl<'a> Request<'a> {
    /// A request with an empty context: statements with a `Condition` on any
    /// key only apply through negated operators.
    pub fn new(action: &'a str, resource: &'a str) -> Self {
        Request {
            action,
            resource,
            context: &EMPTY_CONTEXT,
        }
    }

    /// The same request evaluated against `context`.
    #[must_use]
    pub fn with_context(self, context: &'a Context) -> Self {
        Request { context, ..self }
    }
}

/// Evaluates `req` against every statement of every policy.
///
/// Explicit deny beats allow, which beats the implicit default deny. The
/// result depends only on the *set* of statements: neither the order of
/// statements nor how they are split into policies matters. An empty policy
/// list yields [`Decision::ImplicitDeny`].
///
/// A request touching several resources must be evaluated once per resource
/// and is allowed only if every evaluation allows it.
pub fn evaluate(policies: &[&Policy], req: &Request<'_>) -> Decision {
    let mut allowed = false;
    for statement in policies.iter().flat_map(|p| &p.statements) {
        if !statement.applies_to(req.action, req.resource, req.context) {
            continue;
        }
        match statement.effect {
            // Nothing can override an explicit deny, so there is no point
            // looking further; stopping early does not make the result
            // order-dependent.
            Effect::Deny => return Decision::ExplicitDeny,
            Effect::Allow => allowed = true,
        }
    }
    if allowed {
        Decision::Allow
    } else {
        Decision::ImplicitDeny
    }
}
