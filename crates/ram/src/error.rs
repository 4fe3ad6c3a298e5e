//! Policy validation errors.
//!
//! Every message names *where* (the document or `Statement[i]`) and *what*
//! is wrong, because these messages go straight back to the administrator who
//! submitted the policy, and a bare "invalid policy" is useless to them.

use std::fmt;

/// Where in a policy document an error was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// The top-level policy object.
    Document,
    /// The statement with this zero-based index. A `Statement` given as a
    /// single object (not a list) is index 0.
    Statement(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Document => f.write_str("policy document"),
            Location::Statement(i) => write!(f, "Statement[{i}]"),
        }
    }
}

/// Why a policy document was rejected by [`Policy::parse`](crate::Policy::parse).
///
/// Validation is strict on purpose: anything the evaluator would not
/// understand is an error rather than being ignored, so a policy can never
/// grant or deny something other than what its author reads in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The document exceeds [`MAX_POLICY_DOCUMENT_CHARS`](crate::MAX_POLICY_DOCUMENT_CHARS).
    #[error("policy document is {length} characters long; the maximum is {max}")]
    TooLong {
        /// Length of the submitted document, in characters.
        length: usize,
        /// The limit.
        max: usize,
    },

    /// Not syntactically valid JSON (or nested too deeply).
    #[error("policy document is not valid JSON: {message}")]
    MalformedJson {
        /// The JSON parser's message, including line and column.
        message: String,
    },

    /// Valid JSON, but not an object at the top level.
    #[error("policy document must be a JSON object, found {found}")]
    NotAnObject {
        /// Description of what was found instead.
        found: String,
    },

    /// An element the policy language does not have here: a typo such as
    /// `Actions`, or `Principal`, which only resource-based policies may use.
    #[error("{location}: unknown element {element:?}{hint}")]
    UnknownElement {
        /// Where the element was found.
        location: Location,
        /// The element name as written.
        element: String,
        /// Suggestion, starting with "; " (or empty).
        hint: String,
    },

    /// The same element appears twice in one object; JSON parsers disagree
    /// on which one wins, so the document is ambiguous.
    #[error("{location}: element {element:?} appears more than once")]
    DuplicateElement {
        /// Where the duplicate was found.
        location: Location,
        /// The duplicated element name.
        element: String,
    },

    /// No `Version` element.
    #[error("policy document: missing required element \"Version\" (it must be \"1\")")]
    MissingVersion,

    /// `Version` is not the string `"1"`.
    #[error("policy document: \"Version\" must be the string \"1\", found {found}")]
    InvalidVersion {
        /// Description of the value found.
        found: String,
    },

    /// No `Statement` element.
    #[error("policy document: missing required element \"Statement\"")]
    MissingStatement,

    /// `Statement` is an empty list.
    #[error("policy document: \"Statement\" must contain at least one statement")]
    EmptyStatement,

    /// `Statement` (or one of its entries) is not an object.
    #[error("{location}: a statement must be a JSON object, found {found}")]
    InvalidStatement {
        /// The offending statement, or the document if `Statement` itself
        /// is neither an object nor a list.
        location: Location,
        /// Description of the value found.
        found: String,
    },

    /// No `Effect` element.
    #[error("{location}: missing required element \"Effect\" (\"Allow\" or \"Deny\")")]
    MissingEffect {
        /// The offending statement.
        location: Location,
    },

    /// `Effect` is not exactly `"Allow"` or `"Deny"` (case matters).
    #[error(
        "{location}: \"Effect\" must be \"Allow\" or \"Deny\" (case-sensitive), found {found}"
    )]
    InvalidEffect {
        /// The offending statement.
        location: Location,
        /// Description of the value found.
        found: String,
    },

    /// Both `Action` and `NotAction` are present.
    #[error("{location}: \"Action\" and \"NotAction\" are mutually exclusive; use only one")]
    BothActionAndNotAction {
        /// The offending statement.
        location: Location,
    },

    /// Neither `Action` nor `NotAction` is present.
    #[error("{location}: missing required element \"Action\" (or \"NotAction\")")]
    MissingAction {
        /// The offending statement.
        location: Location,
    },

    /// Both `Resource` and `NotResource` are present.
    #[error("{location}: \"Resource\" and \"NotResource\" are mutually exclusive; use only one")]
    BothResourceAndNotResource {
        /// The offending statement.
        location: Location,
    },

    /// Neither `Resource` nor `NotResource` is present.
    #[error("{location}: missing required element \"Resource\" (or \"NotResource\"); use \"*\" for all resources")]
    MissingResource {
        /// The offending statement.
        location: Location,
    },

    /// An `Action`/`NotAction`/`Resource`/`NotResource`/`Sid` value has the
    /// wrong JSON type.
    #[error("{location}: {element:?} must be {expected}, found {found}")]
    InvalidValueType {
        /// The offending statement.
        location: Location,
        /// The element name.
        element: &'static str,
        /// What the element accepts.
        expected: &'static str,
        /// Description of the value found.
        found: String,
    },

    /// An `Action`/`NotAction`/`Resource`/`NotResource` list is empty.
    #[error("{location}: {element:?} must not be an empty list")]
    EmptyList {
        /// The offending statement.
        location: Location,
        /// The element name.
        element: &'static str,
    },

    /// An action is the empty string.
    #[error("{location}: {element:?} contains an empty action string")]
    EmptyAction {
        /// The offending statement.
        location: Location,
        /// `Action` or `NotAction`.
        element: &'static str,
    },

    /// An action other than `*` lacks the `service:` prefix (`dds:...`).
    #[error("{location}: action {action:?} has no service prefix; write actions as \"<service>:<action>\", e.g. \"dds:DescribeBackups\"")]
    MissingServicePrefix {
        /// The offending statement.
        location: Location,
        /// The action as written.
        action: String,
    },

    /// An action that is malformed in some other way.
    #[error("{location}: invalid action {action:?}: {reason}")]
    InvalidAction {
        /// The offending statement.
        location: Location,
        /// The action as written.
        action: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A resource is the empty string.
    #[error("{location}: {element:?} contains an empty resource string")]
    EmptyResource {
        /// The offending statement.
        location: Location,
        /// `Resource` or `NotResource`.
        element: &'static str,
    },

    /// A resource that is neither `*` nor an `acs:` ARN pattern.
    #[error("{location}: invalid resource {resource:?}: {reason}")]
    InvalidResource {
        /// The offending statement.
        location: Location,
        /// The resource as written.
        resource: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A `Condition` block, or one of its operators, is empty: a statement
    /// that looks conditional but is not is almost certainly a mistake.
    #[error("{location}: {} must not be empty", match operator { Some(op) => format!("Condition.{op}"), None => "Condition".to_owned() })]
    EmptyCondition {
        /// The offending statement.
        location: Location,
        /// The empty operator, or `None` when the whole block is empty.
        operator: Option<&'static str>,
    },

    /// An operator the policy language does not have (or a case slip).
    #[error("{location}: unknown condition operator {operator:?}{hint}")]
    UnknownConditionOperator {
        /// The offending statement.
        location: Location,
        /// The operator as written.
        operator: String,
        /// Suggestion, starting with "; ".
        hint: String,
    },

    /// A condition key this server does not supply. Accepting it would make
    /// the statement silently never apply (or always apply, when negated).
    #[error("{location}: Condition.{operator}: unknown condition key {key:?}; supported keys: acs:SourceIp, acs:CurrentTime, acs:EpochTime, acs:SecureTransport, acs:MFAPresent, acs:UserAgent, acs:Referer")]
    UnknownConditionKey {
        /// The offending statement.
        location: Location,
        /// The operator the key appears under.
        operator: &'static str,
        /// The key as written.
        key: String,
    },

    /// A non-String operator applied to a key of another type, e.g.
    /// `IpAddress` on `acs:CurrentTime`: it could never hold.
    #[error("{location}: Condition.{operator} cannot test {key}, which is a {key_type} key")]
    ConditionKeyTypeMismatch {
        /// The offending statement.
        location: Location,
        /// The operator.
        operator: &'static str,
        /// The key's canonical name.
        key: &'static str,
        /// The key's type.
        key_type: &'static str,
    },

    /// A condition value of the wrong type or format for its operator (a
    /// date that is not ISO 8601, a malformed CIDR, an empty list...).
    #[error("{location}: Condition.{operator}{}: value must be {expected}, found {found}", if key.is_empty() { String::new() } else { format!(".{key}") })]
    InvalidConditionValue {
        /// The offending statement.
        location: Location,
        /// The operator.
        operator: &'static str,
        /// The key, or empty when the operator's own value is wrong.
        key: String,
        /// What the operator accepts.
        expected: &'static str,
        /// Description of the value found.
        found: String,
    },
}
