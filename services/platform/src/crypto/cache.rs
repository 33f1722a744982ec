//! Unwrapped data keys held in memory, so that reads need neither Vault nor the key table.
//!
//! Bounded by subject count (oldest-loaded subject evicted first) and by age: an entry older
//! than the TTL is a miss, which bounds how long another replica keeps using keys that were
//! shredded elsewhere. Keys live as `Aes256Gcm` (key schedule ready, built with the `zeroize`
//! feature, so it is wiped when the last `Arc` drops).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aes_gcm::Aes256Gcm;

/// A data key ready for use.
pub(crate) type Cipher = Arc<Aes256Gcm>;

struct Loaded {
    version: u32,
    cipher: Cipher,
    loaded: Instant,
}

/// The key new data of a subject is written with, and how many encryptions this process has
/// already reserved (in the database) and not yet used.
struct Current {
    version: u32,
    cipher: Cipher,
    remaining: u64,
    loaded: Instant,
}

#[derive(Default)]
struct SubjectKeys {
    generation: u64,
    versions: Vec<Loaded>,
    current: Option<Current>,
}

#[derive(Default)]
struct Inner {
    subjects: HashMap<String, SubjectKeys>,
    /// Insertion order for eviction; entries whose generation no longer matches are stale.
    order: VecDeque<(String, u64)>,
    next_generation: u64,
}

pub(crate) struct KeyCache {
    inner: Mutex<Inner>,
    capacity: usize,
    ttl: Duration,
}

impl KeyCache {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        KeyCache {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The map stays consistent even if a holder panicked: every update is a single insert.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A loaded data key of `subject`, if held and fresh.
    pub(crate) fn get(&self, subject: &str, version: u32) -> Option<Cipher> {
        let inner = self.lock();
        let keys = inner.subjects.get(subject)?;
        let loaded = keys.versions.iter().find(|k| k.version == version)?;
        (loaded.loaded.elapsed() < self.ttl).then(|| Arc::clone(&loaded.cipher))
    }

    /// Takes one reserved encryption of the subject's current key: `Ok` with the key, or
    /// `Err(Some(version))` when the reservation is used up (the caller reserves more of that
    /// version), `Err(None)` when nothing fresh is known.
    pub(crate) fn take_current(&self, subject: &str) -> Result<(u32, Cipher), Option<u32>> {
        let mut inner = self.lock();
        let Some(current) = inner
            .subjects
            .get_mut(subject)
            .and_then(|k| k.current.as_mut())
        else {
            return Err(None);
        };
        if current.loaded.elapsed() >= self.ttl {
            return Err(None);
        }
        if current.remaining == 0 {
            return Err(Some(current.version));
        }
        current.remaining -= 1;
        Ok((current.version, Arc::clone(&current.cipher)))
    }

    /// Records a loaded key.
    pub(crate) fn insert(&self, subject: &str, version: u32, cipher: Cipher) {
        let mut inner = self.lock();
        let keys = self.entry(&mut inner, subject);
        keys.versions.retain(|k| k.version != version);
        keys.versions.push(Loaded {
            version,
            cipher,
            loaded: Instant::now(),
        });
    }

    /// Records `reserved` encryptions of `version` (one of them is being used by the caller).
    pub(crate) fn add_reservation(
        &self,
        subject: &str,
        version: u32,
        cipher: Cipher,
        reserved: u64,
    ) {
        let mut inner = self.lock();
        let keys = self.entry(&mut inner, subject);
        let spare = reserved.saturating_sub(1);
        match keys.current.as_mut() {
            Some(current) if current.version == version => {
                current.remaining += spare;
                current.loaded = Instant::now();
            }
            // Another task of this process already moved on to a newer key: keep that one.
            Some(current) if current.version > version => {}
            _ => {
                keys.current = Some(Current {
                    version,
                    cipher: Arc::clone(&cipher),
                    remaining: spare,
                    loaded: Instant::now(),
                });
            }
        }
        if !keys.versions.iter().any(|k| k.version == version) {
            keys.versions.push(Loaded {
                version,
                cipher,
                loaded: Instant::now(),
            });
        }
    }

    /// Forgets everything about a subject (after shredding it).
    pub(crate) fn forget(&self, subject: &str) {
        self.lock().subjects.remove(subject);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().subjects.len()
    }

    fn entry<'a>(&self, inner: &'a mut Inner, subject: &str) -> &'a mut SubjectKeys {
        if !inner.subjects.contains_key(subject) {
            while inner.subjects.len() >= self.capacity {
                let Some((oldest, generation)) = inner.order.pop_front() else {
                    break;
                };
                if inner.subjects.get(&oldest).map(|k| k.generation) == Some(generation) {
                    inner.subjects.remove(&oldest);
                }
            }
            inner.next_generation += 1;
            let generation = inner.next_generation;
            inner.order.push_back((subject.to_owned(), generation));
            if inner.order.len() > self.capacity.saturating_mul(2) {
                // Forgotten subjects leave stale order entries behind; drop them now and then.
                let subjects = &inner.subjects;
                inner
                    .order
                    .retain(|(s, g)| subjects.get(s).map(|k| k.generation) == Some(*g));
            }
            inner.subjects.insert(
                subject.to_owned(),
                SubjectKeys {
                    generation,
                    ..SubjectKeys::default()
                },
            );
        }
        inner.subjects.entry(subject.to_owned()).or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use aes_gcm::KeyInit;

    fn cipher() -> Cipher {
        Arc::new(Aes256Gcm::new_from_slice(&[1u8; 32]).unwrap())
    }

    #[test]
    fn bounded_by_subject_count_oldest_first() {
        let cache = KeyCache::new(2, Duration::from_secs(60));
        cache.insert("a", 1, cipher());
        cache.insert("b", 1, cipher());
        cache.insert("c", 1, cipher());
        assert_eq!(cache.len(), 2);
        assert!(cache.get("a", 1).is_none());
        assert!(cache.get("c", 1).is_some());
    }

    #[test]
    fn reservations_are_counted_down() {
        let cache = KeyCache::new(10, Duration::from_secs(60));
        assert_eq!(cache.take_current("s").err(), Some(None));
        cache.add_reservation("s", 1, cipher(), 3);
        assert_eq!(cache.take_current("s").unwrap().0, 1);
        assert_eq!(cache.take_current("s").unwrap().0, 1);
        assert_eq!(cache.take_current("s").err(), Some(Some(1)));
        cache.add_reservation("s", 2, cipher(), 1);
        assert_eq!(cache.take_current("s").err(), Some(Some(2)));
        assert!(cache.get("s", 1).is_some());
    }

    #[test]
    fn expired_entries_are_misses() {
        let cache = KeyCache::new(10, Duration::ZERO);
        cache.add_reservation("s", 1, cipher(), 5);
        assert!(cache.get("s", 1).is_none());
        assert_eq!(cache.take_current("s").err(), Some(None));
    }
}
