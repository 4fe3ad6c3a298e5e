//! RAM identity policies for ddsvault: parsing, validation and evaluation.
//!
//! ddsvault speaks Alibaba Cloud's Dds API, and RAM users' access is governed
//! by the same JSON policy language as on Alibaba Cloud (docs/protocol.md §8):
//!
//! ```
//! use ddsvault_ram::{evaluate, Decision, Policy, Request};
//!
//! let policy = Policy::parse(r#"{
//!     "Version": "1",
//!     "Statement": [
//!         {"Effect": "Allow", "Action": "dds:Describe*", "Resource": "*"},
//!         {"Effect": "Deny", "Action": "dds:*",
//!          "Resource": "acs:dds:*:*:dbinstance/dds-prod-*"}
//!     ]
//! }"#)?;
//! let req = Request::new("dds:DescribeBackups", "*");
//! assert_eq!(evaluate(&[&policy], &req), Decision::Allow);
//! let req = Request::new("dds:DescribeBackups", "acs:dds:cn-hangzhou:1:dbinstance/dds-prod-1");
//! assert_eq!(evaluate(&[&policy], &req), Decision::ExplicitDeny);
//! # Ok::<(), ddsvault_ram::PolicyError>(())
//! ```
//!
//! Design choices, all in favour of a policy meaning exactly what it says:
//!
//! - **Strict validation.** Unknown elements (`Principal`, typos such as
//!   `Actions`), duplicate elements, wrong types, malformed actions and
//!   resources are errors with a message naming the statement and the
//!   problem. Nothing is silently ignored, because an ignored element changes
//!   what a policy grants without its author noticing.
//! - **Conditions** (`String*`, `Numeric*`, `Date*`, `Bool`, `IpAddress`,
//!   `NotIpAddress`) are evaluated against a [`Context`] the server fills
//!   per request. Only keys the server supplies are accepted, and each
//!   operator family only on keys of its type; see [`Context`] for the keys
//!   and the `condition` module docs for the absent-key rule.
//! - **Matching:** actions case-insensitively (ASCII), resources
//!   case-sensitively, both with `*` (any run, including empty) and `?`
//!   (exactly one character). The matcher is the two-pointer wildcard
//!   algorithm, so hostile patterns cannot trigger exponential backtracking.
//! - **Evaluation:** explicit Deny beats Allow beats implicit deny; statement
//!   and policy order never matter.
//!
//! Root-account requests bypass RAM entirely; that decision belongs to the
//! caller, not to this crate.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod condition;
mod detail;
mod error;
mod eval;
mod glob;
mod json;
mod policy;

pub use condition::{
    supported_condition_keys, supported_condition_operators, ConditionKey, Context,
};
pub use detail::access_denied_detail;
pub use error::{Location, PolicyError};
pub use eval::{evaluate, Decision, Request};
pub use policy::{Policy, MAX_POLICY_DOCUMENT_CHARS};
