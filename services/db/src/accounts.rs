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

/// Verifies passwords on a few dedicated threads, each reusing one argon2 memory block.
/// Allocating a fresh 19 MiB block per verification on tokio's blocking pool left hundreds of
/// MiB resident after a reconnect storm (one malloc arena per pool thread kept its block:
/// measured 387 MB after 1,000 verifications); this keeps it to one block per thread.
pub struct Verifier {
    jobs: tokio::sync::mpsc::Sender<Job>,
}

struct Job {
    hash: String,
    password: String,
    reply: tokio::sync::oneshot::Sender<bool>,
}

impl Verifier {
    /// `threads` verify; at most `queue` more wait (the per-pod budget of unverified logins).
    pub fn spawn(threads: usize, queue: usize) -> std::io::Result<Verifier> {
        let (jobs, rx) = tokio::sync::mpsc::channel::<Job>(queue.max(1));
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    let mut memory: Vec<argon2::Block> = Vec::new();
                    loop {
                        let job = match rx.lock() {
                            Ok(mut rx) => rx.blocking_recv(),
                            Err(_) => None,
                        };
                        let Some(job) = job else { return };
                        let ok = verify_with(&mut memory, &job.hash, &job.password);
                        let _ = job.reply.send(ok);
                    }
                })?;
        }
        Ok(Verifier { jobs })
    }

    /// Whether `password` matches the PHC `hash` (false too if the verifier is gone); `None`
    /// when the queue is full: a flood of logins is turned away at once instead of making every
    /// login behind it wait.
    pub async fn verify(&self, hash: String, password: String) -> Option<bool> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            hash,
            password,
            reply,
        };
        match self.jobs.try_send(job) {
            Ok(()) => Some(answer.await.unwrap_or(false)),
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => None,
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Some(false),
        }
    }
}

fn verify_with(memory: &mut Vec<argon2::Block>, hash: &str, password: &str) -> bool {
    use argon2::{Algorithm, Params, Version};
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = parsed
        .version
        .and_then(|v| Version::try_from(v).ok())
        .unwrap_or_default();
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    memory.resize(params.block_count(), argon2::Block::default());
    let mut out = vec![0u8; expected.len()];
    let hasher = Argon2::new(algorithm, version, params);
    if hasher
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..])
        .is_err()
    {
        return false;
    }
    // Output compares in constant time.
    argon2::password_hash::Output::new(&out).is_ok_and(|computed| computed == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_verifier_agrees_with_the_library() {
        let hash = hash_password("correct horse").expect("hashes");
        assert!(verify_password(&hash, "correct horse"));
        let verifier = Verifier::spawn(2, 16).expect("threads");
        assert_eq!(
            verifier.verify(hash.clone(), "correct horse".into()).await,
            Some(true)
        );
        assert_eq!(
            verifier.verify(hash.clone(), "wrong".into()).await,
            Some(false)
        );
        assert_eq!(
            verifier.verify("not a hash".into(), "x".into()).await,
            Some(false)
        );
        // The reused memory block serves a second verification just as well.
        assert_eq!(
            verifier.verify(hash, "correct horse".into()).await,
            Some(true)
        );
    }

    /// The budget: past `queue` waiting logins, a login is turned away at once (None), and
    /// those already queued are still checked.
    #[tokio::test]
    async fn a_full_queue_turns_logins_away_instead_of_queueing_them() {
        let hash = hash_password("pw").expect("hashes");
        let verifier = Verifier::spawn(1, 2).expect("threads");
        let answers = futures_join(
            (0..20)
                .map(|_| verifier.verify(hash.clone(), "pw".into()))
                .collect(),
        )
        .await;
        let turned_away = answers.iter().filter(|a| a.is_none()).count();
        let checked = answers.iter().filter(|a| **a == Some(true)).count();
        assert!(turned_away >= 10, "{answers:?}");
        assert!(checked >= 1, "{answers:?}");
    }

    async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
        let mut out = Vec::new();
        let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
        // Poll each once first, as a burst of logins arrives together, then finish them.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut ready: Vec<Option<F::Output>> = pinned
            .iter_mut()
            .map(|f| match f.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
            .collect();
        for (f, r) in pinned.into_iter().zip(ready.iter_mut()) {
            out.push(match r.take() {
                Some(v) => v,
                None => f.await,
            });
        }
        out
    }
}
