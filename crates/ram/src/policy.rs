//! Parsing and validation of RAM identity-policy documents.

use std::str::FromStr;

use crate::condition::{parse_condition, Condition, Context};
use crate::error::{Location, PolicyError};
use crate::glob::{Case, Pattern};
use crate::json::Json;

/// Maximum length of a policy document, in characters (Alibaba's current
/// limit for custom policies; docs/protocol.md §8.5).
pub const MAX_POLICY_DOCUMENT_CHARS: usize = 6144;

const DOCUMENT_ELEMENTS: &[&str] = &["Version", "Statement"];
const STATEMENT_ELEMENTS: &[&str] = &[
    "Sid",
    "Effect",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Condition",
];

/// A parsed and validated RAM identity policy.
///
/// Patterns are compiled at parse time, so a `Policy` is meant to be parsed
/// once (when attached or loaded) and evaluated many times.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) statements: Vec<Statement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone)]
pub(crate) struct Statement {
    pub(crate) effect: Effect,
    action: Matcher,
    resource: Matcher,
    condition: Condition,
}

impl Statement {
    /// Whether the statement's action, resource and condition all cover the
    /// request; the caller then applies the statement's effect.
    pub(crate) fn applies_to(&self, action: &str, resource: &str, context: &Context) -> bool {
        self.action.matches(action)
            && self.resource.matches(resource)
            && self.condition.matches(context)
    }
}

/// The patterns of `Action`/`NotAction` (or `Resource`/`NotResource`).
#[derive(Debug, Clone)]
struct Matcher {
    patterns: Vec<Pattern>,
    /// `NotAction`/`NotResource`: the element matches when *none* of the
    /// patterns match.
    negated: bool,
}

impl Matcher {
    fn matches(&self, text: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(text)) != self.negated
    }
}

impl Policy {
    /// Parses and validates a policy document.
    ///
    /// # Errors
    ///
    /// Returns a [`PolicyError`] naming the first problem found: the document
    /// is too long or not JSON; `Version` is not `"1"`; `Statement` is missing
    /// or empty; a statement has an unknown or duplicated element, a bad
    /// `Effect`, both or neither of `Action`/`NotAction` (or
    /// `Resource`/`NotResource`), a malformed action or resource, or a
    /// `Condition` with an unknown operator or key, an operator that cannot
    /// test its key, or a value of the wrong type for its operator.
    pub fn parse(document: &str) -> Result<Policy, PolicyError> {
        // The limit is in characters, not bytes, so non-ASCII Sids are not
        // penalised. Checked before any JSON work so that oversized input is
        // cheap to reject.
        let length = document.chars().count();
        if length > MAX_POLICY_DOCUMENT_CHARS {
            return Err(PolicyError::TooLong {
                length,
                max: MAX_POLICY_DOCUMENT_CHARS,
            });
        }
        let root: Json =
            serde_json::from_str(document).map_err(|e| PolicyError::MalformedJson {
                message: e.to_string(),
            })?;
        let Json::Object(fields) = &root else {
            return Err(PolicyError::NotAnObject {
                found: root.describe(),
            });
        };
        let fields = Fields::check(fields, DOCUMENT_ELEMENTS, Location::Document)?;

        match fields.get("Version") {
            None => return Err(PolicyError::MissingVersion),
            Some(Json::String(v)) if v == "1" => {}
            Some(other) => {
                return Err(PolicyError::InvalidVersion {
                    found: other.describe(),
                })
            }
        }

        // Alibaba accepts a lone statement object as shorthand for a
        // one-element list.
        let statements: Vec<&Json> = match fields.get("Statement") {
            None => return Err(PolicyError::MissingStatement),
            Some(single @ Json::Object(_)) => vec![single],
            Some(Json::Array(items)) if items.is_empty() => {
                return Err(PolicyError::EmptyStatement)
            }
            Some(Json::Array(items)) => items.iter().collect(),
            Some(other) => {
                return Err(PolicyError::InvalidStatement {
                    location: Location::Document,
                    found: other.describe(),
                })
            }
        };
        let statements = statements
            .into_iter()
            .enumerate()
            .map(|(i, s)| parse_statement(s, Location::Statement(i)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy { statements })
    }
}

impl FromStr for Policy {
    type Err = PolicyError;

    fn from_str(document: &str) -> Result<Self, Self::Err> {
        Policy::parse(document)
    }
}

/// The known elements of one JSON object, after rejecting unknown and
/// duplicated ones.
struct Fields<'a> {
    known: Vec<(&'static str, &'a Json)>,
}

impl<'a> Fields<'a> {
    fn check(
        fields: &'a [(String, Json)],
        allowed: &[&'static str],
        location: Location,
    ) -> Result<Self, PolicyError> {
        let mut known: Vec<(&'static str, &'a Json)> = Vec::with_capacity(fields.len());
        for (name, value) in fields {
            // Element names are case-sensitive, as in Alibaba: "action" is
            // not "Action" (the hint points that out).
            let Some(&element) = allowed.iter().find(|&&a| a == name) else {
                return Err(PolicyError::UnknownElement {
                    location,
                    element: name.clone(),
                    hint: unknown_element_hint(name, allowed, location),
                });
            };
            if known.iter().any(|&(k, _)| k == element) {
                return Err(PolicyError::DuplicateElement {
                    location,
                    element: element.to_owned(),
                });
            }
            known.push((element, value));
        }
        Ok(Fields { known })
    }

    fn get(&self, element: &str) -> Option<&'a Json> {
        self.known
            .iter()
            .find(|&&(k, _)| k == element)
            .map(|&(_, v)| v)
    }
}

fn unknown_element_hint(element: &str, allowed: &[&str], location: Location) -> String {
    if element.eq_ignore_ascii_case("Principal") {
        return "; Principal is only allowed in resource-based policies (such as a role's trust \
                policy), not in identity policies"
            .to_owned();
    }
    // Case slips ("action") and plural slips ("Actions", "Statements").
    let singular = element
        .strip_suffix('s')
        .or_else(|| element.strip_suffix('S'));
    let suggestion = allowed.iter().find(|a| {
        a.eq_ignore_ascii_case(element) || singular.is_some_and(|s| a.eq_ignore_ascii_case(s))
    });
    if let Some(s) = suggestion {
        return format!("; did you mean {s:?}? (element names are case-sensitive)");
    }
    if location == Location::Document
        && STATEMENT_ELEMENTS
            .iter()
            .any(|s| s.eq_ignore_ascii_case(element))
    {
        return "; it belongs inside a statement in \"Statement\"".to_owned();
    }
    format!("; expected one of: {}", allowed.join(", "))
}

fn parse_statement(value: &Json, location: Location) -> Result<Statement, PolicyError> {
    let Json::Object(fields) = value else {
        return Err(PolicyError::InvalidStatement {
            location,
            found: value.describe(),
        });
    };
    let fields = Fields::check(fields, STATEMENT_ELEMENTS, location)?;

    // Sid carries no meaning for evaluation, but a non-string Sid is almost
    // certainly a structural mistake worth reporting.
    if let Some(sid) = fields.get("Sid") {
        if !matches!(sid, Json::String(_)) {
            return Err(PolicyError::InvalidValueType {
                location,
                element: "Sid",
                expected: "a string",
                found: sid.describe(),
            });
        }
    }

    // Exact case only, as Alibaba does: "allow" is rejected rather than
    // guessed at, since guessing wrong on a Deny would grant access.
    let effect = match fields.get("Effect") {
        None => return Err(PolicyError::MissingEffect { location }),
        Some(Json::String(s)) if s == "Allow" => Effect::Allow,
        Some(Json::String(s)) if s == "Deny" => Effect::Deny,
        Some(other) => {
            return Err(PolicyError::InvalidEffect {
                location,
                found: other.describe(),
            })
        }
    };

    let (element, value, negated) = match (fields.get("Action"), fields.get("NotAction")) {
        (Some(_), Some(_)) => return Err(PolicyError::BothActionAndNotAction { location }),
        (None, None) => return Err(PolicyError::MissingAction { location }),
        (Some(v), None) => ("Action", v, false),
        (None, Some(v)) => ("NotAction", v, true),
    };
    let action = Matcher {
        patterns: string_list(value, element, location)?
            .into_iter()
            .map(|a| parse_action(a, element, location))
            .collect::<Result<_, _>>()?,
        negated,
    };

    let (element, value, negated) = match (fields.get("Resource"), fields.get("NotResource")) {
        (Some(_), Some(_)) => return Err(PolicyError::BothResourceAndNotResource { location }),
        (None, None) => return Err(PolicyError::MissingResource { location }),
        (Some(v), None) => ("Resource", v, false),
        (None, Some(v)) => ("NotResource", v, true),
    };
    let resource = Matcher {
        patterns: string_list(value, element, location)?
            .into_iter()
            .map(|r| parse_resource(r, element, location))
            .collect::<Result<_, _>>()?,
        negated,
    };

    let condition = match fields.get("Condition") {
        Some(c) => parse_condition(c, location)?,
        None => Condition::default(),
    };

    Ok(Statement {
        effect,
        action,
        resource,
        condition,
    })
}

/// A single string and a one-element list are equivalent (docs/protocol.md §8.1).
fn string_list<'a>(
    value: &'a Json,
    element: &'static str,
    location: Location,
) -> Result<Vec<&'a str>, PolicyError> {
    const EXPECTED: &str = "a string or a list of strings";
    match value {
        Json::String(s) => Ok(vec![s]),
        Json::Array(items) if items.is_empty() => Err(PolicyError::EmptyList { location, element }),
        Json::Array(items) => items
            .iter()
            .map(|item| match item {
                Json::String(s) => Ok(s.as_str()),
                other => Err(PolicyError::InvalidValueType {
                    location,
                    element,
                    expected: EXPECTED,
                    found: format!("a list containing {}", other.describe()),
                }),
            })
            .collect(),
        other => Err(PolicyError::InvalidValueType {
            location,
            element,
            expected: EXPECTED,
            found: other.describe(),
        }),
    }
}

fn has_blank(s: &str) -> bool {
    s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn parse_action(
    action: &str,
    element: &'static str,
    location: Location,
) -> Result<Pattern, PolicyError> {
    if action.is_empty() {
        return Err(PolicyError::EmptyAction { location, element });
    }
    // An action with a space can never match a real request, so it is a
    // typo that would otherwise fail silently (grant nothing / deny nothing).
    if has_blank(action) {
        return Err(PolicyError::InvalidAction {
            location,
            action: action.to_owned(),
            reason: "actions must not contain whitespace or control characters",
        });
    }
    if action != "*" {
        match action.split_once(':') {
            None | Some(("", _)) => {
                return Err(PolicyError::MissingServicePrefix {
                    location,
                    action: action.to_owned(),
                })
            }
            Some((_, "")) => {
                return Err(PolicyError::InvalidAction {
                    location,
                    action: action.to_owned(),
                    reason: "the action name after the service prefix is empty; \
                             use e.g. \"dds:*\" for all actions of a service",
                })
            }
            Some(_) => {}
        }
    }
    Ok(Pattern::new(action, Case::AsciiInsensitive))
}

fn parse_resource(
    resource: &str,
    element: &'static str,
    location: Location,
) -> Result<Pattern, PolicyError> {
    if resource.is_empty() {
        return Err(PolicyError::EmptyResource { location, element });
    }
    // Anything other than "*" or an ARN (e.g. a bare instance id) could never
    // match a request, so it is a mistake that would otherwise fail silently.
    // The "acs:" prefix is case-sensitive because resource matching is.
    let reason = if has_blank(resource) {
        Some("resources must not contain whitespace or control characters")
    } else if resource != "*" && !resource.starts_with("acs:") {
        Some(
            "a resource must be \"*\" or an ARN such as \
             \"acs:dds:<region>:<account-id>:dbinstance/<instance-id>\"",
        )
    } else {
        None
    };
    if let Some(reason) = reason {
        return Err(PolicyError::InvalidResource {
            location,
            resource: resource.to_owned(),
            reason,
        });
    }
    Ok(Pattern::new(resource, Case::Sensitive))
}
