//! Password policy and argon2id hashing.

use argon2::password_hash::{
    self, rand_core::OsRng, Output, ParamsString, PasswordHash, PasswordHasher as _, Salt,
    SaltString,
};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub const MIN_LEN: usize = 12;
pub const MAX_LEN: usize = 128;

/// The most common passwords of 10+ characters, lower-cased, from the password frequency list
/// of the zxcvbn project (MIT licence); rejected outright.
static COMMON: &str = include_str!("common-passwords.txt");

/// Why a password is refused, worded for the user.
pub fn policy_violation(password: &str) -> Option<&'static str> {
    let n = password.chars().count();
    if n < MIN_LEN {
        return Some("must be at least 12 characters");
    }
    if n > MAX_LEN {
        return Some("must be at most 128 characters");
    }
    let lower = password.to_lowercase();
    if COMMON.lines().any(|l| l == lower) {
        return Some("is too common; choose another");
    }
    None
}

/// argon2id with the configured costs, run on a fixed set of dedicated threads.
///
/// Each hash needs `memory_kib` of memory (19 MiB by default) and tens of milliseconds of a
/// core, so hashing is a bounded resource: at most `threads` hashes run at once and at most
/// `queue` more wait. A caller takes a [`HashPermit`] first ([`PasswordHasher::admit`]); when
/// none is left it is refused at once ([`HashBusy`]) instead of queuing, holding a database
/// connection or growing memory. The permit is taken before any other work of the request
/// (a login's throttle reservation included), so a burst is turned away before it costs
/// anything.
#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    argon2: Argon2<'static>,
    /// A hash of nothing, verified against when no account matches so that timing matches.
    dummy_hash: String,
    admission: Arc<Semaphore>,
    jobs: std::sync::mpsc::SyncSender<Job>,
    threads: usize,
    /// Password checks run so far (tests and metrics).
    verifications: AtomicU64,
    /// Requests refused because every slot was taken.
    refused: AtomicU64,
}

/// Work for a hashing thread, given that thread's argon2 memory (kept for the thread's life:
/// allocating 19 MiB per hash let the allocator keep every buffer of a burst resident).
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// Every hashing slot and queue place is taken: retry shortly.
#[derive(Debug, thiserror::Error)]
#[error("password hashing is at capacity")]
pub struct HashBusy;

/// The right to run one hash (or verification); held for the whole request that needs it.
pub struct HashPermit {
    hasher: PasswordHasher,
    _permit: OwnedSemaphorePermit,
}

impl PasswordHasher {
    /// `threads` hashing threads (0: one per core) and room for `queue` waiting requests.
    pub fn new(
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
        threads: usize,
        queue: usize,
    ) -> Result<Self, HashError> {
        let params = Params::new(memory_kib, iterations, parallelism, None)
            .map_err(|e| HashError(e.to_string()))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut OsRng);
        let dummy_hash = argon2
            .hash_password(b"carehub-timing-equalizer", &salt)
            .map_err(|e| HashError(e.to_string()))?
            .to_string();
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            threads
        };
        let admitted = threads + queue;
        // Admission bounds the jobs in flight, so the channel never fills.
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(admitted);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    let mut memory = Vec::new();
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(&mut memory),
                            // Every hasher handle is gone.
                            Err(_) => return,
                        }
                    }
                })
                .map_err(|e| HashError(e.to_string()))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                argon2,
                dummy_hash,
                admission: Arc::new(Semaphore::new(admitted)),
                jobs,
                threads,
                verifications: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            }),
        })
    }

    /// Checks against a real stored hash run so far (timing-equalizing dummy checks not
    /// included).
    pub fn verifications(&self) -> u64 {
        self.inner.verifications.load(Ordering::Relaxed)
    }

    /// Requests refused at admission so far.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Number of hashes that run at once.
    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    /// A hashing permit, or [`HashBusy`] at once when every slot and queue place is taken.
    pub fn admit(&self) -> Result<HashPermit, HashBusy> {
        let permit = self
            .inner
            .admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                self.inner.refused.fetch_add(1, Ordering::Relaxed);
                HashBusy
            })?;
        Ok(HashPermit {
            hasher: self.clone(),
            _permit: permit,
        })
    }

    /// PHC string of `secret` (CPU-heavy: runs on the caller's thread, allocating its own
    /// argon2 memory).
    pub fn hash(&self, secret: &str) -> Result<String, HashError> {
        self.hash_in(&mut Vec::new(), secret)
    }

    /// Whether `secret` matches `phc`; `None` verifies against a dummy hash and returns false,
    /// taking the same time (CPU-heavy: runs on the caller's thread).
    pub fn verify(&self, secret: &str, phc: Option<&str>) -> bool {
        self.verify_in(&mut Vec::new(), secret, phc)
    }

    fn hash_in(&self, memory: &mut Vec<Block>, secret: &str) -> Result<String, HashError> {
        let salt = SaltString::generate(&mut OsRng);
        let argon2 = &self.inner.argon2;
        let output = fill(argon2, memory, secret.as_bytes(), salt.as_salt(), None)
            .map_err(|e| HashError(e.to_string()))?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(argon2.params())
                .map_err(|e| HashError(e.to_string()))?,
            salt: Some(salt.as_salt()),
            hash: Some(output),
        };
        Ok(phc.to_string())
    }

    fn verify_in(&self, memory: &mut Vec<Block>, secret: &str, phc: Option<&str>) -> bool {
        let (target, real) = match phc {
            Some(p) => {
                self.inner.verifications.fetch_add(1, Ordering::Relaxed);
                (p, true)
            }
            None => (self.inner.dummy_hash.as_str(), false),
        };
        let Ok(parsed) = PasswordHash::new(target) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return false;
        };
        // The stored hash's own costs (older hashes may differ from today's settings).
        let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
            return false;
        };
        let version = parsed.version.map_or(Ok(Version::V0x13), Version::try_from);
        let (Ok(version), Ok(params)) = (version, Params::try_from(&parsed)) else {
            return false;
        };
        let argon2 = Argon2::new(algorithm, version, params);
        // `Output`'s equality is constant-time.
        let ok = fill(
            &argon2,
            memory,
            secret.as_bytes(),
            salt,
            Some(expected.len()),
        )
        .is_ok_and(|computed| computed == expected);
        ok && real
    }

    /// Admits and hashes on the hashing threads.
    pub async fn hash_async(&self, secret: String) -> Result<String, HashFailure> {
        self.admit()?.hash(secret).await
    }

    /// Admits and verifies on the hashing threads.
    pub async fn verify_async(
        &self,
        secret: String,
        phc: Option<String>,
    ) -> Result<bool, HashFailure> {
        Ok(self.admit()?.verify(secret, phc).await)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&PasswordHasher, &mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let me = self.clone();
        let job: Job = Box::new(move |memory| {
            let _ = tx.send(work(&me, memory));
        });
        self.inner
            .jobs
            .try_send(job)
            .map_err(|e| HashError(format!("hashing threads: {e}")))?;
        rx.await
            .map_err(|_| HashError("hashing thread ended".into()))
    }
}

/// Why a hash did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HashFailure {
    #[error(transparent)]
    Busy(#[from] HashBusy),
    #[error(transparent)]
    Failed(#[from] HashError),
}

impl HashPermit {
    /// Hashes `secret` on a hashing thread.
    pub async fn hash(&self, secret: String) -> Result<String, HashFailure> {
        Ok(self
            .hasher
            .run(move |h, memory| h.hash_in(memory, &secret))
            .await??)
    }

    /// Verifies `secret` against `phc` (or the dummy hash) on a hashing thread; a failure of
    /// the hashing machinery counts as a mismatch.
    pub async fn verify(&self, secret: String, phc: Option<String>) -> bool {
        self.hasher
            .run(move |h, memory| h.verify_in(memory, &secret, phc.as_deref()))
            .await
            .unwrap_or(false)
    }
}

/// Runs argon2 over `memory` (grown to the costs' size once, then reused) and returns the
/// output (`len` bytes, or the costs' default).
fn fill(
    argon2: &Argon2<'_>,
    memory: &mut Vec<Block>,
    secret: &[u8],
    salt: Salt<'_>,
    len: Option<usize>,
) -> Result<Output, password_hash::Error> {
    let blocks = argon2.params().block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut salt_buf = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buf)?;
    let len = len.unwrap_or_else(|| {
        argon2
            .params()
            .output_len()
            .unwrap_or(Params::DEFAULT_OUTPUT_LEN)
    });
    Output::init_with(len, |out| {
        argon2
            .hash_password_into_with_memory(secret, salt, out, &mut memory[..blocks])
            .map_err(password_hash::Error::from)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn policy() {
        assert_eq!(
            policy_violation("short"),
            Some("must be at least 12 characters")
        );
        assert!(policy_violation(&"x".repeat(129)).is_some());
        assert!(policy_violation(&"Ab1!".repeat(32)).is_none());
        assert_eq!(
            policy_violation("Password1234"),
            Some("is too common; choose another")
        );
        assert!(policy_violation("correct horse battery staple").is_none());
    }

    #[test]
    fn hash_and_verify() {
        let h = PasswordHasher::new(19 * 1024, 2, 1, 1, 0).unwrap();
        let phc = h.hash("correct horse battery staple").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(h.verify("correct horse battery staple", Some(&phc)));
        assert!(!h.verify("wrong horse battery staple", Some(&phc)));
        assert!(!h.verify("carehub-timing-equalizer", None));
    }
}

#[cfg(test)]
mod pool_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn admission_is_bounded_and_released() {
        let h = PasswordHasher::new(19 * 1024, 2, 1, 2, 1).unwrap();
        assert_eq!(h.threads(), 2);
        let held: Vec<_> = (0..3).map(|_| h.admit().unwrap()).collect();
        assert!(h.admit().is_err(), "a fourth request is refused at once");
        assert!(matches!(
            h.hash_async("x".repeat(12)).await,
            Err(HashFailure::Busy(_))
        ));
        drop(held);
        let phc = h.hash_async("correct horse battery".into()).await.unwrap();
        assert!(h
            .verify_async("correct horse battery".into(), Some(phc))
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn hashes_run_on_the_dedicated_threads() {
        let h = PasswordHasher::new(19 * 1024, 2, 1, 1, 4).unwrap();
        let permit = h.admit().unwrap();
        let name = permit
            .hasher
            .run(|_, _| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("argon2-0"));
    }
}
