//! Shared by the targets: a key store, a nonce store and a fixed clock, so every run is deterministic.

use ddsvault_api::{ApiError, KeyState, Secret};

pub const KEY_ID: &str = "testid";
pub const SECRET: &str = "testsecret";

pub fn keys(ak: &str) -> Result<Option<KeyState>, ApiError> {
    Ok((ak == KEY_ID).then(|| KeyState::Active(Secret::new(SECRET))))
}

pub fn peer() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 50000))
}

/// Splits fuzz input into `n` pieces at 0xFF bytes (missing pieces are empty).
pub fn pieces(data: &[u8], n: usize) -> Vec<String> {
    let mut out: Vec<String> = data
        .splitn(n, |&b| b == 0xFF)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    out.resize(n, String::new());
    out
}
