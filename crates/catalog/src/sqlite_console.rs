//! SQLite side of the console's shared session state (docs/console.md; migration 0021): sessions ended by logout
//! and failed logins per client address, so that every process sharing the catalog honours them.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{from_ms, ms, SqliteCatalog};
use crate::{CatalogError, LoginFailures};

impl SqliteCatalog {
    pub(super) async fn revoke_console_session_impl(
        &self,
        nonce: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), CatalogError> {
        let mut tx = self.write.begin().await?;
        // Sessions past their expiry are refused anyway: their rows are only kept until then.
        sqlx::query("DELETE FROM console_revoked_sessions WHERE expires_at <= ?")
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO console_revoked_sessions (nonce, expires_at) VALUES (?, ?) \
             ON CONFLICT (nonce) DO NOTHING",
        )
        .bind(nonce)
        .bind(ms(expires_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn console_session_revoked_impl(
        &self,
        nonce: &str,
    ) -> Result<bool, CatalogError> {
        Ok(
            sqlx::query("SELECT 1 FROM console_revoked_sessions WHERE nonce = ?")
                .bind(nonce)
                .fetch_optional(&self.read)
                .await?
                .is_some(),
        )
    }

    pub(super) async fn record_console_login_failure_impl(
        &self,
        address: &str,
        now: DateTime<Utc>,
        window_start_after: DateTime<Utc>,
    ) -> Result<LoginFailures, CatalogError> {
        let mut tx = self.write.begin().await?;
        // Addresses whose window is over are forgotten (bounded table, like the per-process map was).
        sqlx::query("DELETE FROM console_login_failures WHERE window_start <= ? AND address <> ?")
            .bind(ms(window_start_after))
            .bind(address)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(
            "INSERT INTO console_login_failures (address, failures, window_start) VALUES (?, 1, ?) \
             ON CONFLICT (address) DO UPDATE SET \
               failures = CASE WHEN console_login_failures.window_start <= ? THEN 1 \
                          ELSE console_login_failures.failures + 1 END, \
               window_start = CASE WHEN console_login_failures.window_start <= ? THEN excluded.window_start \
                          ELSE console_login_failures.window_start END \
             RETURNING failures, window_start",
        )
        .bind(address)
        .bind(ms(now))
        .bind(ms(window_start_after))
        .bind(ms(window_start_after))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(LoginFailures {
            failures: u32::try_from(row.try_get::<i64, _>("failures")?).unwrap_or(u32::MAX),
            window_start: from_ms(row.try_get("window_start")?)?,
        })
    }

    pub(super) async fn console_login_failures_impl(
        &self,
        address: &str,
        window_start_after: DateTime<Utc>,
    ) -> Result<Option<LoginFailures>, CatalogError> {
        let Some(row) = sqlx::query(
            "SELECT failures, window_start FROM console_login_failures WHERE address = ? AND window_start > ?",
        )
        .bind(address)
        .bind(ms(window_start_after))
        .fetch_optional(&self.read)
        .await?
        else {
            return Ok(None);
        };
        Ok(Some(LoginFailures {
            failures: u32::try_from(row.try_get::<i64, _>("failures")?).unwrap_or(u32::MAX),
            window_start: from_ms(row.try_get("window_start")?)?,
        }))
    }

    pub(super) async fn clear_console_login_failures_impl(
        &self,
        address: &str,
    ) -> Result<(), CatalogError> {
        sqlx::query("DELETE FROM console_login_failures WHERE address = ?")
            .bind(address)
            .execute(&self.write)
            .await?;
        Ok(())
    }
}
