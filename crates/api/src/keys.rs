//! AccessKey secrets and the lookup the verifier needs.

use std::fmt;

use crate::error::ApiError;

/// An AccessKey secret. `Debug` prints `***` so secrets cannot leak through logs of
/// requests, options or errors that happen to contain one.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, for computing HMACs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

/// What the key store knows about an AccessKeyId.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// The key may sign requests with this secret.
    Active(Secret),
    /// The key exists but is disabled.
    Inactive,
}

/// Looks up the secret of an AccessKey. Implemented by the server over its catalog.
pub trait SecretLookup: Send + Sync {
    /// `Ok(None)` if the key does not exist. An `Err` (e.g. the catalog is down) is
    /// returned to the client as is, so it should be an [`ApiError::internal`] or
    /// [`ApiError::service_unavailable`].
    fn secret(&self, access_key_id: &str) -> Result<Option<KeyState>, ApiError>;
}

impl<F> SecretLookup for F
where
    F: Fn(&str) -> Result<Option<KeyState>, ApiError> + Send + Sync,
{
    fn secret(&self, access_key_id: &str) -> Result<Option<KeyState>, ApiError> {
        self(access_key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secret() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{:?}", KeyState::Active(s.clone())), "Active(***)");
        assert_eq!(s.expose(), "hunter2");
    }
}
