//! A JSON tree that keeps duplicate object keys.
//!
//! `serde_json::Value` silently keeps the last of duplicate keys, so
//! `{"Effect":"Deny","Effect":"Allow"}` would read as Allow while a human (or
//! another parser) may read it as Deny. For an authorization document that
//! ambiguity is a security bug, so we parse into this type instead and let the
//! validator reject duplicates with a precise error.
//!
//! Nesting depth is bounded by serde_json's recursion limit (128), so neither
//! parsing nor dropping a hostile document can overflow the stack.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    /// Kept as text: the policy language has no numeric elements (yet), we
    /// only ever need to show a number back in an error message.
    Number(String),
    String(String),
    Array(Vec<Json>),
    /// In document order, duplicates included.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// A short rendering of the value for error messages ("found ...").
    pub(crate) fn describe(&self) -> String {
        match self {
            Json::Null => "null".to_owned(),
            Json::Bool(b) => b.to_string(),
            Json::Number(n) => format!("the number {n}"),
            // Debug quoting escapes control characters, which keeps hostile
            // input from forging extra lines in logs.
            Json::String(s) => format!("the string {s:?}"),
            Json::Array(_) => "an array".to_owned(),
            Json::Object(_) => "an object".to_owned(),
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.to_string()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.to_string()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        Ok(Json::Number(v.to_string()))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut fields = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Json>()? {
            fields.push((key, value));
        }
        Ok(Json::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_duplicates_in_order() {
        let v: Json = serde_json::from_str(r#"{"a":1,"a":[true,null,"x",-2.5]}"#).unwrap();
        assert_eq!(
            v,
            Json::Object(vec![
                ("a".into(), Json::Number("1".into())),
                (
                    "a".into(),
                    Json::Array(vec![
                        Json::Bool(true),
                        Json::Null,
                        Json::String("x".into()),
                        Json::Number("-2.5".into()),
                    ])
                ),
            ])
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let doc = "[".repeat(5000) + &"]".repeat(5000);
        assert!(serde_json::from_str::<Json>(&doc).is_err());
    }
}
