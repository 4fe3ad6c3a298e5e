//! The `Condition` element (docs/protocol.md §8.2–8.4): operators, condition keys
//! and the request context they are evaluated against.
//!
//! Semantics, chosen so that a condition means exactly what it says:
//!
//! - All operators of a block must hold (AND), all keys within an operator
//!   must hold (AND), and a key holds when the request value matches **any**
//!   of the listed values (OR).
//! - A negated operator (`StringNotEquals`, `StringNotEqualsIgnoreCase`,
//!   `StringNotLike`, `NumericNotEquals`, `DateNotEquals`, `NotIpAddress`) is
//!   the exact complement of its positive form: it holds when the request
//!   value matches **none** of the listed values (NOR).
//! - A key absent from the request context (only `acs:UserAgent` and
//!   `acs:Referer` can be absent: the client sent no such header) makes every
//!   positive operator on it false, and therefore every negated one true.
//!   Keeping "negated = not positive" means a `Deny` guarded by a negated
//!   operator still applies to a request that withholds the key, so leaving a
//!   header out can never dodge a deny.
//! - Only the condition keys this server can supply are accepted; any other
//!   key is a validation error, because a key that is never present would
//!   silently disable the statement (or, negated, make it unconditional).
//! - Condition key names are case-insensitive; operator names are
//!   case-sensitive, like every other element name.

use std::net::IpAddr;

use chrono::{DateTime, FixedOffset, Utc};

use crate::error::{Location, PolicyError};
use crate::glob::{Case, Pattern};
use crate::json::Json;

/// The type of a condition key's value, which decides the operator families
/// that may test it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    String,
    Numeric,
    Date,
    Bool,
    Ip,
}

impl KeyType {
    fn name(self) -> &'static str {
        match self {
            KeyType::String => "String",
            KeyType::Numeric => "Numeric",
            KeyType::Date => "Date",
            KeyType::Bool => "Bool",
            KeyType::Ip => "IP address",
        }
    }
}

/// A condition key this server supplies in every request context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConditionKey {
    /// `acs:SourceIp`: the TCP peer address (never `X-Forwarded-For`).
    SourceIp,
    /// `acs:CurrentTime`: when the server received the request.
    CurrentTime,
    /// `acs:EpochTime`: the same instant as `acs:CurrentTime`, in seconds
    /// since 1970-01-01 UTC, for the `Numeric*` operators (a ddsvault
    /// addition, as on AWS; Alibaba documents no numeric global key).
    EpochTime,
    /// `acs:SecureTransport`: whether the request arrived over TLS.
    SecureTransport,
    /// `acs:MFAPresent`: always false for AccessKey-signed calls.
    MfaPresent,
    /// `acs:UserAgent`: the `User-Agent` header, absent when not sent.
    UserAgent,
    /// `acs:Referer`: the `Referer` header, absent when not sent.
    Referer,
}

const KEYS: &[(ConditionKey, &str, KeyType)] = &[
    (ConditionKey::SourceIp, "acs:SourceIp", KeyType::Ip),
    (ConditionKey::CurrentTime, "acs:CurrentTime", KeyType::Date),
    (ConditionKey::EpochTime, "acs:EpochTime", KeyType::Numeric),
    (
        ConditionKey::SecureTransport,
        "acs:SecureTransport",
        KeyType::Bool,
    ),
    (ConditionKey::MfaPresent, "acs:MFAPresent", KeyType::Bool),
    (ConditionKey::UserAgent, "acs:UserAgent", KeyType::String),
    (ConditionKey::Referer, "acs:Referer", KeyType::String),
];

impl ConditionKey {
    fn lookup(name: &str) -> Option<(ConditionKey, KeyType)> {
        KEYS.iter()
            .find(|(_, n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(k, _, t)| (k, t))
    }

    /// The key's canonical name, e.g. `acs:SourceIp`.
    pub fn name(self) -> &'static str {
        KEYS.iter()
            .find(|(k, _, _)| *k == self)
            .map_or("", |&(_, n, _)| n)
    }
}

/// The names of every supported condition key, for error messages and docs.
pub fn supported_condition_keys() -> impl Iterator<Item = &'static str> {
    KEYS.iter().map(|&(_, n, _)| n)
}

/// A value of the request context.
#[derive(Debug, Clone, PartialEq)]
enum ContextValue {
    Text(String),
    Number(f64),
    Date(DateTime<FixedOffset>),
    Bool(bool),
    Ip(IpAddr),
}

impl ContextValue {
    /// The text the `String*` operators compare, for keys of any type.
    fn text(&self) -> String {
        match self {
            ContextValue::Text(s) => s.clone(),
            ContextValue::Number(n) => n.to_string(),
            ContextValue::Date(d) => d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ContextValue::Bool(b) => b.to_string(),
            ContextValue::Ip(ip) => ip.to_string(),
        }
    }
}

/// What the server knows about a request, for evaluating conditions.
///
/// Keys not set are absent (see the module docs for what that means).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    values: Vec<(ConditionKey, ContextValue)>,
}

/// The empty context, used by [`Request::new`](crate::Request::new).
pub(crate) static EMPTY_CONTEXT: Context = Context { values: Vec::new() };

impl Context {
    /// An empty context: every key is absent.
    pub fn new() -> Self {
        Self::default()
    }

    fn set(&mut self, key: ConditionKey, value: ContextValue) -> &mut Self {
        self.values.retain(|(k, _)| *k != key);
        self.values.push((key, value));
        self
    }

    fn get(&self, key: ConditionKey) -> Option<&ContextValue> {
        self.values.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Sets `acs:SourceIp`. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`,
    /// what a dual-stack listener reports for IPv4 peers) are stored as IPv4
    /// so that IPv4 CIDRs match them.
    pub fn source_ip(&mut self, ip: IpAddr) -> &mut Self {
        self.set(ConditionKey::SourceIp, ContextValue::Ip(ip.to_canonical()))
    }

    /// Sets `acs:CurrentTime` and `acs:EpochTime`.
    pub fn current_time(&mut self, now: DateTime<Utc>) -> &mut Self {
        // Whole seconds: policy dates have no finer precision, and a sub-second
        // remainder would make `DateEquals` on the current second never hold.
        let secs = now.timestamp();
        let whole = DateTime::<Utc>::from_timestamp(secs, 0).unwrap_or(now);
        self.set(ConditionKey::CurrentTime, ContextValue::Date(whole.into()));
        // f64 represents every second up to year 285 million exactly.
        #[allow(clippy::cast_precision_loss)]
        self.set(ConditionKey::EpochTime, ContextValue::Number(secs as f64))
    }

    /// Sets `acs:SecureTransport`.
    pub fn secure_transport(&mut self, secure: bool) -> &mut Self {
        self.set(ConditionKey::SecureTransport, ContextValue::Bool(secure))
    }

    /// Sets `acs:MFAPresent`.
    pub fn mfa_present(&mut self, present: bool) -> &mut Self {
        self.set(ConditionKey::MfaPresent, ContextValue::Bool(present))
    }

    /// Sets `acs:UserAgent`.
    pub fn user_agent(&mut self, user_agent: &str) -> &mut Self {
        self.set(
            ConditionKey::UserAgent,
            ContextValue::Text(user_agent.to_owned()),
        )
    }

    /// Sets `acs:Referer`.
    pub fn referer(&mut self, referer: &str) -> &mut Self {
        self.set(
            ConditionKey::Referer,
            ContextValue::Text(referer.to_owned()),
        )
    }
}

/// The operator families and their members (docs/protocol.md §8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    StringEquals,
    StringEqualsIgnoreCase,
    StringLike,
    NumericEquals,
    NumericLessThan,
    NumericLessThanEquals,
    NumericGreaterThan,
    NumericGreaterThanEquals,
    DateEquals,
    DateLessThan,
    DateLessThanEquals,
    DateGreaterThan,
    DateGreaterThanEquals,
    Bool,
    IpAddress,
}

/// `(name, positive operator, negated)`.
const OPERATORS: &[(&str, Op, bool)] = &[
    ("StringEquals", Op::StringEquals, false),
    ("StringNotEquals", Op::StringEquals, true),
    ("StringEqualsIgnoreCase", Op::StringEqualsIgnoreCase, false),
    (
        "StringNotEqualsIgnoreCase",
        Op::StringEqualsIgnoreCase,
        true,
    ),
    ("StringLike", Op::StringLike, false),
    ("StringNotLike", Op::StringLike, true),
    ("NumericEquals", Op::NumericEquals, false),
    ("NumericNotEquals", Op::NumericEquals, true),
    ("NumericLessThan", Op::NumericLessThan, false),
    ("NumericLessThanEquals", Op::NumericLessThanEquals, false),
    ("NumericGreaterThan", Op::NumericGreaterThan, false),
    (
        "NumericGreaterThanEquals",
        Op::NumericGreaterThanEquals,
        false,
    ),
    ("DateEquals", Op::DateEquals, false),
    ("DateNotEquals", Op::DateEquals, true),
    ("DateLessThan", Op::DateLessThan, false),
    ("DateLessThanEquals", Op::DateLessThanEquals, false),
    ("DateGreaterThan", Op::DateGreaterThan, false),
    ("DateGreaterThanEquals", Op::DateGreaterThanEquals, false),
    ("Bool", Op::Bool, false),
    ("IpAddress", Op::IpAddress, false),
    ("NotIpAddress", Op::IpAddress, true),
];

/// The names of every supported condition operator.
pub fn supported_condition_operators() -> impl Iterator<Item = &'static str> {
    OPERATORS.iter().map(|&(n, _, _)| n)
}

impl Op {
    fn family(self) -> KeyType {
        match self {
            Op::StringEquals | Op::StringEqualsIgnoreCase | Op::StringLike => KeyType::String,
            Op::NumericEquals
            | Op::NumericLessThan
            | Op::NumericLessThanEquals
            | Op::NumericGreaterThan
            | Op::NumericGreaterThanEquals => KeyType::Numeric,
            Op::DateEquals
            | Op::DateLessThan
            | Op::DateLessThanEquals
            | Op::DateGreaterThan
            | Op::DateGreaterThanEquals => KeyType::Date,
            Op::Bool => KeyType::Bool,
            Op::IpAddress => KeyType::Ip,
        }
    }

    fn expected(self) -> &'static str {
        match self.family() {
            KeyType::String => "a string (or a list of strings)",
            KeyType::Numeric => "a number or a numeric string (or a list of them)",
            KeyType::Date => {
                "an ISO 8601 date-time with a time zone, e.g. \"2019-08-12T17:00:00+08:00\" \
                 or \"2017-11-11T23:59:59Z\" (or a list of them)"
            }
            KeyType::Bool => "true or false (a JSON boolean or the string \"true\"/\"false\")",
            KeyType::Ip => {
                "an IPv4/IPv6 address or CIDR block, e.g. \"192.168.0.0/16\" (or a list of them)"
            }
        }
    }
}

/// A policy value, parsed according to its operator.
#[derive(Debug, Clone)]
enum Value {
    Text(String),
    Pattern(Pattern),
    Number(f64),
    Date(DateTime<FixedOffset>),
    Bool(bool),
    Cidr(IpAddr, u8),
}

/// One `operator: { key: values }` clause, for one key.
#[derive(Debug, Clone)]
struct Clause {
    op: Op,
    negated: bool,
    key: ConditionKey,
    values: Vec<Value>,
}

/// A parsed `Condition` block: every clause must hold.
#[derive(Debug, Clone, Default)]
pub(crate) struct Condition {
    clauses: Vec<Clause>,
}

impl Condition {
    pub(crate) fn matches(&self, ctx: &Context) -> bool {
        self.clauses.iter().all(|c| c.matches(ctx))
    }
}

impl Clause {
    fn matches(&self, ctx: &Context) -> bool {
        let any = match ctx.get(self.key) {
            None => false,
            Some(actual) => self
                .values
                .iter()
                .any(|v| value_matches(self.op, v, actual)),
        };
        any != self.negated
    }
}

fn value_matches(op: Op, expected: &Value, actual: &ContextValue) -> bool {
    match (op, expected) {
        (Op::StringEquals, Value::Text(t)) => actual.text() == *t,
        (Op::StringEqualsIgnoreCase, Value::Text(t)) => actual.text().to_lowercase() == *t,
        (Op::StringLike, Value::Pattern(p)) => p.matches(&actual.text()),
        (_, Value::Number(n)) => {
            let ContextValue::Number(a) = actual else {
                return false;
            };
            match op {
                Op::NumericEquals => a == n,
                Op::NumericLessThan => a < n,
                Op::NumericLessThanEquals => a <= n,
                Op::NumericGreaterThan => a > n,
                Op::NumericGreaterThanEquals => a >= n,
                _ => false,
            }
        }
        (_, Value::Date(d)) => {
            let ContextValue::Date(a) = actual else {
                return false;
            };
            match op {
                Op::DateEquals => a == d,
                Op::DateLessThan => a < d,
                Op::DateLessThanEquals => a <= d,
                Op::DateGreaterThan => a > d,
                Op::DateGreaterThanEquals => a >= d,
                _ => false,
            }
        }
        (Op::Bool, Value::Bool(b)) => matches!(actual, ContextValue::Bool(a) if a == b),
        (Op::IpAddress, Value::Cidr(net, prefix)) => {
            matches!(actual, ContextValue::Ip(a) if in_cidr(*a, *net, *prefix))
        }
        _ => false,
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Parses a statement's `Condition` element.
pub(crate) fn parse_condition(value: &Json, location: Location) -> Result<Condition, PolicyError> {
    let Json::Object(operators) = value else {
        return Err(PolicyError::InvalidValueType {
            location,
            element: "Condition",
            expected:
                "an object of operators, e.g. {\"IpAddress\": {\"acs:SourceIp\": \"10.0.0.0/8\"}}",
            found: value.describe(),
        });
    };
    if operators.is_empty() {
        return Err(PolicyError::EmptyCondition {
            location,
            operator: None,
        });
    }
    let mut clauses = Vec::new();
    let mut seen_ops: Vec<&str> = Vec::new();
    for (op_name, keys) in operators {
        if seen_ops.contains(&op_name.as_str()) {
            return Err(PolicyError::DuplicateElement {
                location,
                element: format!("Condition.{op_name}"),
            });
        }
        seen_ops.push(op_name);
        let Some(&(canonical, op, negated)) = OPERATORS.iter().find(|(n, _, _)| n == op_name)
        else {
            return Err(PolicyError::UnknownConditionOperator {
                location,
                operator: op_name.clone(),
                hint: operator_hint(op_name),
            });
        };
        let Json::Object(keys) = keys else {
            return Err(PolicyError::InvalidConditionValue {
                location,
                operator: canonical,
                key: String::new(),
                expected: "an object of condition keys to values",
                found: keys.describe(),
            });
        };
        if keys.is_empty() {
            return Err(PolicyError::EmptyCondition {
                location,
                operator: Some(canonical),
            });
        }
        let mut seen_keys: Vec<ConditionKey> = Vec::new();
        for (key_name, values) in keys {
            let Some((key, key_type)) = ConditionKey::lookup(key_name) else {
                return Err(PolicyError::UnknownConditionKey {
                    location,
                    operator: canonical,
                    key: key_name.clone(),
                });
            };
            if seen_keys.contains(&key) {
                return Err(PolicyError::DuplicateElement {
                    location,
                    element: format!("Condition.{canonical}.{}", key.name()),
                });
            }
            seen_keys.push(key);
            // String operators compare any key's text form; the others only
            // make sense on keys of their own type.
            if op.family() != KeyType::String && op.family() != key_type {
                return Err(PolicyError::ConditionKeyTypeMismatch {
                    location,
                    operator: canonical,
                    key: key.name(),
                    key_type: key_type.name(),
                });
            }
            let values = condition_values(values, op, canonical, key, location)?;
            clauses.push(Clause {
                op,
                negated,
                key,
                values,
            });
        }
    }
    Ok(Condition { clauses })
}

fn operator_hint(name: &str) -> String {
    if let Some((n, _, _)) = OPERATORS
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
    {
        return format!("; did you mean {n:?}? (operator names are case-sensitive)");
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("forallvalues:")
        || lower.starts_with("foranyvalue:")
        || lower.ends_with("ifexists")
        || lower == "null"
    {
        return "; set operators, IfExists variants and Null are not supported".to_owned();
    }
    let names: Vec<&str> = supported_condition_operators().collect();
    format!("; expected one of: {}", names.join(", "))
}

fn condition_values(
    value: &Json,
    op: Op,
    operator: &'static str,
    key: ConditionKey,
    location: Location,
) -> Result<Vec<Value>, PolicyError> {
    let items: Vec<&Json> = match value {
        Json::Array(items) if items.is_empty() => {
            return Err(PolicyError::InvalidConditionValue {
                location,
                operator,
                key: key.name().to_owned(),
                expected: op.expected(),
                found: "an empty list".to_owned(),
            })
        }
        Json::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    items
        .into_iter()
        .map(|item| {
            parse_value(item, op).ok_or_else(|| PolicyError::InvalidConditionValue {
                location,
                operator,
                key: key.name().to_owned(),
                expected: op.expected(),
                found: item.describe(),
            })
        })
        .collect()
}

fn parse_value(item: &Json, op: Op) -> Option<Value> {
    match op.family() {
        KeyType::String => {
            let text = match item {
                Json::String(s) => s.clone(),
                Json::Number(n) => n.clone(),
                Json::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some(match op {
                Op::StringLike => Value::Pattern(Pattern::new(&text, Case::Sensitive)),
                Op::StringEqualsIgnoreCase => Value::Text(text.to_lowercase()),
                _ => Value::Text(text),
            })
        }
        KeyType::Numeric => {
            let text = match item {
                Json::String(s) | Json::Number(s) => s.trim(),
                _ => return None,
            };
            text.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .map(Value::Number)
        }
        KeyType::Date => match item {
            Json::String(s) => DateTime::parse_from_rfc3339(s.trim()).ok().map(Value::Date),
            _ => None,
        },
        KeyType::Bool => match item {
            Json::Bool(b) => Some(Value::Bool(*b)),
            Json::String(s) if s.eq_ignore_ascii_case("true") => Some(Value::Bool(true)),
            Json::String(s) if s.eq_ignore_ascii_case("false") => Some(Value::Bool(false)),
            _ => None,
        },
        KeyType::Ip => match item {
            Json::String(s) => parse_cidr(s.trim()),
            _ => None,
        },
    }
}

fn parse_cidr(s: &str) -> Option<Value> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().ok()?;
    let ip = ip.to_canonical();
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        // Digits only: `u8::from_str` would also take a leading `+`.
        Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u8>().ok().filter(|&n| n <= max)?
        }
        Some(_) => return None,
    };
    Some(Value::Cidr(ip, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_edges() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_cidr(v4("10.1.2.3"), v4("10.0.0.0"), 8));
        assert!(!in_cidr(v4("11.1.2.3"), v4("10.0.0.0"), 8));
        assert!(in_cidr(v4("1.2.3.4"), v4("9.9.9.9"), 0));
        assert!(in_cidr(v4("1.2.3.4"), v4("1.2.3.4"), 32));
        assert!(!in_cidr(v4("1.2.3.5"), v4("1.2.3.4"), 32));
        assert!(in_cidr(v4("::1"), v4("::"), 0));
        assert!(in_cidr(v4("2001:db8::1"), v4("2001:db8::"), 32));
        assert!(!in_cidr(v4("2001:db9::1"), v4("2001:db8::"), 32));
        assert!(!in_cidr(v4("10.0.0.1"), v4("::"), 0));
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("10.0.0.0/+8").is_none());
        assert!(parse_cidr("10.0.0.0/").is_none());
        assert!(parse_cidr("116.62.XX.XX/24").is_none());
        assert!(parse_cidr("::ffff:10.0.0.1/8").is_some());
    }
}
