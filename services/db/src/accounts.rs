//! Accounts: who may Ping, with argon2id password hashes.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sqlx::PgPool;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("account name must be 1-320 characters without control characters")]
    BadName,
    #[error("password must not be empty")]
    EmptyPassword,
    #[error("no account named {0:?}")]
    NoSuchAccount(String),
    #[error("hashing the password failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// One account as `dpctl accounts list` shows it.
#[derive(Debug, sqlx::FromRow)]
pub struct Account {
    pub name: String,
    pub disabled: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

fn check_name(name: &str) -> Result<(), AccountError> {
    if name.is_empty() || name.chars().count() > 320 || name.chars().any(char::is_control) {
        return Err(AccountError::BadName);
    }
    Ok(())
}

/// An argon2id hash (PHC string) of `password` with the crate's default cost.
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC `hash`. CPU-heavy (tens of ms): run it off the runtime.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Adds the account, or sets a new password and enables it if it exists.
pub async fn upsert(pool: &PgPool, name: &str, password: &str) -> Result<(), AccountError> {
    check_name(name)?;
    if password.is_empty() {
        return Err(AccountError::EmptyPassword);
    }
    let owned = password.to_owned();
    let hash = tokio::task::spawn_blocking(move || hash_password(&owned))
        .await
        .map_err(|e| AccountError::Hash(e.to_string()))??;
    sqlx::query(
        "INSERT INTO accounts (name, password_hash) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET password_hash = $2, disabled = false, updated_at = now()",
    )
    .bind(name)
    .bind(hash)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn set_disabled(pool: &PgPool, name: &str, disabled: bool) -> Result<(), AccountError> {
    let done = sqlx::query("UPDATE accounts SET disabled = $2, updated_at = now() WHERE name = $1")
        .bind(name)
        .bind(disabled)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(AccountError::NoSuchAccount(name.to_owned()));
    }
    Ok(())
}

pub async fn list(pool: &PgPool) -> Result<Vec<Account>, AccountError> {
    Ok(
        sqlx::query_as("SELECT name, disabled, created_at FROM accounts ORDER BY name")
            .fetch_all(pool)
            .await?,
    )
}

/// The stored hash and disabled flag of an account, if it exists.
pub async fn credentials(pool: &PgPool, name: &str) -> Result<Option<(String, bool)>, sqlx::Error> {
    sqlx::query_as("SELECT password_hash, disabled FROM accounts WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
}
