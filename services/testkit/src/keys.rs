//! Keys for a service under test: the development key file, or keys the test holds and rotates.
//! The Vault API double is [`crate::vault_double`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use carehub_platform::keys::{KeyError, KeyName, KeySource, KeyVersions, StaticKeys};

/// Writes the development key file (KEK, blind-index, signing keys; as `carehub up` makes it)
/// into `dir`; returns its path.
pub fn dev_key_file(dir: &Path) -> PathBuf {
    let file = dir.join("dev-keys.json");
    carehub_platform::keys::file::write_dev_key_file(&file).expect("writing the dev key file");
    file
}

/// [`dev_key_file`] holding the keys of `service` too (a service the platform's list of
/// development services does not name yet).
pub fn dev_key_file_for(dir: &Path, service: &str) -> PathBuf {
    let file = dev_key_file(dir);
    carehub_platform::keys::file::write_dev_key_file_for(&file, &[service])
        .expect("writing the dev key file");
    file
}

/// A key source the test can rotate while the service runs.
#[derive(Default)]
pub struct RotatingKeys(RwLock<StaticKeys>);

impl RotatingKeys {
    pub fn new() -> Arc<Self> {
        Arc::new(RotatingKeys(RwLock::new(StaticKeys::generate())))
    }

    /// Adds a version of `name` and makes it current; returns its number.
    pub fn rotate(&self, name: KeyName) -> u32 {
        let mut keys = self.0.write().unwrap();
        let mut versions: KeyVersions = keys.versions(name).unwrap().as_ref().clone();
        let next = versions.rotate();
        *keys = keys.clone().with(name, versions);
        next
    }
}

impl KeySource for RotatingKeys {
    fn versions(&self, name: KeyName) -> Result<Arc<KeyVersions>, KeyError> {
        self.0.read().unwrap().versions(name)
    }
}
