//! Encryption at rest of AccessKey secrets: AES-256-GCM under a master key that never enters the catalog.

use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ddsvault_api::Secret;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::error::ConfigError;
use crate::Config;

/// `secret_format` of secrets sealed by [`MasterKey::seal`]: base64(nonce ‖ ciphertext ‖ tag), the AccessKeyId as
/// associated data so a sealed secret cannot be moved to another key's row.
pub const SEALED_FORMAT: &str = "aes256gcm-v1";
/// Environment variable holding the master key (64 hex digits); wins over `secret_key_file`.
pub const MASTER_KEY_ENV: &str = "DDSVAULT_MASTER_KEY";
/// Name of the generated master key file inside `data_dir`.
pub const MASTER_KEY_FILE: &str = "master.key";
const NONCE_LEN: usize = 12;

/// Where the master key came from, for the start-up log (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The `DDSVAULT_MASTER_KEY` environment variable.
    Env,
    /// An existing key file: `secret_key_file`, or `<data_dir>/master.key`.
    File(PathBuf),
    /// A key file created at this start with a fresh random key.
    Generated(PathBuf),
}

/// The 256-bit master key. `Debug` hides it.
pub struct MasterKey {
    cipher: Aes256Gcm,
    check: String,
    /// Where the key came from.
    pub source: KeySource,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("key", &"***")
            .field("source", &self.source)
            .finish()
    }
}

/// A secret could not be sealed.
#[derive(Debug, thiserror::Error)]
#[error("the secret of AccessKey {0} could not be encrypted")]
pub struct SealError(pub String);

/// A sealed secret could not be opened: wrong master key or damaged row.
#[derive(Debug, thiserror::Error)]
#[error("the stored secret of AccessKey {0} cannot be decrypted with this master key")]
pub struct OpenError(pub String);

fn parse_hex_key(text: &str, origin: &str) -> Result<[u8; 32], ConfigError> {
    let bytes = hex::decode(text.trim())
        .map_err(|_| ConfigError(format!("{origin}: the master key must be 64 hex digits")))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        ConfigError(format!(
            "{origin}: the master key must be 64 hex digits (32 bytes)"
        ))
    })
}

impl MasterKey {
    /// A key from raw bytes (tests, and the loaders below).
    pub fn from_bytes(bytes: &[u8; 32], source: KeySource) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(bytes)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(b"ddsvault master key check v1");
        Self {
            cipher: Aes256Gcm::new(bytes.into()),
            check: hex::encode(mac.finalize().into_bytes()),
            source,
        }
    }

    /// Finds the master key: `DDSVAULT_MASTER_KEY`, else `secret_key_file`, else `<data_dir>/master.key`, which is
    /// created (mode 0600) with a fresh random key if it does not exist yet.
    ///
    /// # Errors
    /// A malformed key, an unreadable file, or a file that cannot be created.
    pub fn load(cfg: &Config) -> Result<Self, ConfigError> {
        Self::load_with(cfg, true)
    }

    /// As [`MasterKey::load`], but a missing `<data_dir>/master.key` is an error naming it, never a new key.
    ///
    /// # Errors
    /// As [`MasterKey::load`], and the missing key file.
    pub fn load_existing(cfg: &Config) -> Result<Self, ConfigError> {
        Self::load_with(cfg, false)
    }

    fn load_with(cfg: &Config, generate: bool) -> Result<Self, ConfigError> {
        if let Ok(v) = std::env::var(MASTER_KEY_ENV) {
            return Ok(Self::from_bytes(
                &parse_hex_key(&v, MASTER_KEY_ENV)?,
                KeySource::Env,
            ));
        }
        if let Some(path) = &cfg.secret_key_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!("read secret_key_file {}: {e}", path.display()))
            })?;
            let origin = format!("secret_key_file {}", path.display());
            return Ok(Self::from_bytes(
                &parse_hex_key(&text, &origin)?,
                KeySource::File(path.clone()),
            ));
        }
        let path = cfg.data_dir.join(MASTER_KEY_FILE);
        if !generate && !path.exists() {
            return Err(ConfigError(format!(
                "no master key at {} (set {MASTER_KEY_ENV} or secret_key_file, or check data_dir: relative paths \
                 in a configuration file are relative to that file)",
                path.display()
            )));
        }
        Self::load_or_generate(&path)
    }

    fn load_or_generate(path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                return Ok(Self::from_bytes(
                    &parse_hex_key(&text, &origin)?,
                    KeySource::File(path.to_path_buf()),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ConfigError(format!("read master key {origin}: {e}"))),
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ConfigError(format!("create {}: {e}", dir.display())))?;
        }
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        match opts.open(path) {
            Ok(mut f) => {
                f.write_all(format!("{}\n", hex::encode(bytes)).as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| ConfigError(format!("write master key {origin}: {e}")))?;
                Ok(Self::from_bytes(
                    &bytes,
                    KeySource::Generated(path.to_path_buf()),
                ))
            }
            // Another process (the server, or a CLI beside it) created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("read master key {origin}: {e}")))?;
                Ok(Self::from_bytes(
                    &parse_hex_key(&text, &origin)?,
                    KeySource::File(path.to_path_buf()),
                ))
            }
            Err(e) => Err(ConfigError(format!("create master key {origin}: {e}"))),
        }
    }

    /// A value derived from the key (HMAC, not the key) that the catalog keeps, so a start with another key is
    /// refused instead of failing every request.
    pub fn check_value(&self) -> &str {
        &self.check
    }

    /// Encrypts a secret for the row of `key_id`.
    ///
    /// # Errors
    /// [`SealError`] if AES-GCM refuses the input (only for inputs of gigabytes).
    pub fn seal(&self, key_id: &str, secret: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: key_id.as_bytes(),
                },
            )
            .map_err(|_| SealError(key_id.to_string()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(B64.encode(out))
    }

    /// Decrypts what [`MasterKey::seal`] produced for `key_id`.
    ///
    /// # Errors
    /// [`OpenError`] when the data is damaged, belongs to another key id, or was sealed under another master key.
    pub fn open(&self, key_id: &str, stored: &str) -> Result<Secret, OpenError> {
        let fail = || OpenError(key_id.to_string());
        let raw = B64.decode(stored).map_err(|_| fail())?;
        if raw.len() <= NONCE_LEN {
            return Err(fail());
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: key_id.as_bytes(),
                },
            )
            .map_err(|_| fail())?;
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| fail())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> MasterKey {
        MasterKey::from_bytes(&[b; 32], KeySource::Env)
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let k = key(7);
        let sealed = k.seal("LTAIa", "s3cr3t-value").expect("seal");
        assert!(!sealed.contains("s3cr3t"));
        assert_ne!(
            sealed,
            k.seal("LTAIa", "s3cr3t-value").expect("seal"),
            "fresh nonce each time"
        );
        assert_eq!(
            k.open("LTAIa", &sealed).expect("open").expose(),
            "s3cr3t-value"
        );
        assert!(k.open("LTAIb", &sealed).is_err(), "bound to its key id");
        assert!(
            key(8).open("LTAIa", &sealed).is_err(),
            "another master key fails"
        );
        assert!(k.open("LTAIa", "not base64!").is_err());
        assert!(k.open("LTAIa", "AAAA").is_err());
        assert_ne!(k.check_value(), key(8).check_value());
        assert!(!format!("{k:?}").contains("0707"));
    }

    #[test]
    fn generated_file_is_private_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join(MASTER_KEY_FILE);
        let a = MasterKey::load_or_generate(&path).expect("generate");
        assert_eq!(a.source, KeySource::Generated(path.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let b = MasterKey::load_or_generate(&path).expect("reload");
        assert_eq!(a.check_value(), b.check_value());
        std::fs::write(&path, "short").expect("write");
        assert!(MasterKey::load_or_generate(&path).is_err());
    }

    #[test]
    fn hex_keys_are_validated() {
        assert!(parse_hex_key(&"ab".repeat(32), "t").is_ok());
        assert!(parse_hex_key(&format!("{}\n", "ab".repeat(32)), "t").is_ok());
        assert!(parse_hex_key(&"ab".repeat(31), "t").is_err());
        assert!(parse_hex_key(&"zz".repeat(32), "t").is_err());
    }
}
