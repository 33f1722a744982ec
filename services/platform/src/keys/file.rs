//! The development key provider: keys read once from a local JSON file laid out like Vault
//! (`{"<service>": {"kek": {"current": "1", "v1": "<base64>"}, "blind-index": ...}}`).
//!
//! Keys on a developer's disk are not protected like keys in Vault, so this provider refuses to
//! start when `server.keys.production` is set and says loudly that it is in use.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use zeroize::Zeroize as _;

use super::config::KeysConfig;
use super::vault_keys::required_keys;
use super::{KeyError, KeyName, KeySource, KeyStatus, KeyVersions};

/// Every service whose keys `carehub keys init` creates.
pub const SERVICES: [&str; 5] = ["identity", "scheduling", "messaging", "records", "billing"];

type FileLayout = BTreeMap<String, BTreeMap<String, HashMap<String, String>>>;

fn wipe(layout: &mut FileLayout) {
    for keys in layout.values_mut() {
        for data in keys.values_mut() {
            for value in data.values_mut() {
                value.zeroize();
            }
        }
    }
}

fn read_layout(path: &Path) -> anyhow::Result<FileLayout> {
    let mut text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading the development key file {} (create it with `carehub keys init --dev {}`)",
            path.display(),
            path.display()
        )
    })?;
    let parsed = serde_json::from_str::<FileLayout>(&text)
        .map_err(|e| {
            anyhow::anyhow!(
                "line {} column {}: {}",
                e.line(),
                e.column(),
                e.classify_name()
            )
        })
        .with_context(|| format!("parsing the development key file {}", path.display()));
    text.zeroize();
    parsed
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    // The message of a serde_json error may quote key material; only its category is shown.
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "not valid JSON",
            serde_json::error::Category::Data => "not the expected layout",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// Keys of one service from the development key file; never refreshed.
#[derive(Debug)]
pub struct FileKeys {
    keys: HashMap<KeyName, Arc<KeyVersions>>,
}

impl FileKeys {
    /// Loads `service`'s keys from `cfg.file`. Refuses when `cfg.production` is set.
    pub fn load(service: &str, cfg: &KeysConfig) -> anyhow::Result<Arc<Self>> {
        if cfg.production {
            bail!(
                "server.keys.provider = \"file\" is for development only and server.keys.production is true; \
                 configure server.keys.provider = \"vault\""
            );
        }
        tracing::warn!(
            service,
            file = %cfg.file.display(),
            "!!! DEVELOPMENT KEYS: keys are read from a local file, not from Vault. \
             Never use this provider with real patient data !!!"
        );
        let mut layout = read_layout(&cfg.file)?;
        let result = (|| {
            let Some(service_keys) = layout.get(service) else {
                bail!(
                    "{} has no keys for `{service}`: run `carehub keys init --dev {}`",
                    cfg.file.display(),
                    cfg.file.display()
                );
            };
            let mut keys = HashMap::new();
            for name in KeyName::ALL {
                match service_keys.get(name.path_segment()) {
                    Some(data) => {
                        let versions = KeyVersions::from_kv_data(data).with_context(|| {
                            format!("{} `{service}.{name}`", cfg.file.display())
                        })?;
                        keys.insert(name, Arc::new(versions));
                    }
                    None if required_keys(service).contains(&name) => bail!(
                        "{} has no `{service}.{name}` key: run `carehub keys init --dev {}`",
                        cfg.file.display(),
                        cfg.file.display()
                    ),
                    None => {}
                }
            }
            Ok(Arc::new(FileKeys { keys }))
        })();
        wipe(&mut layout);
        result
    }
}

impl KeySource for FileKeys {
    fn versions(&self, name: KeyName) -> Result<Arc<KeyVersions>, KeyError> {
        self.keys
            .get(&name)
            .cloned()
            .ok_or(KeyError::Unavailable(name))
    }

    fn status(&self) -> KeyStatus {
        KeyStatus {
            provider: "file",
            ..KeyStatus::default()
        }
    }
}

/// Creates (or completes) a development key file with every key of every service in
/// [`SERVICES`]: keys already in the file are kept. Returns how many keys were added.
pub fn write_dev_key_file(path: &Path) -> anyhow::Result<usize> {
    write_dev_key_file_for(path, &SERVICES)
}

/// [`write_dev_key_file`] for these services (`carehub up` passes its list of services, which
/// may hold one [`SERVICES`] does not name yet).
pub fn write_dev_key_file_for(path: &Path, services: &[&str]) -> anyhow::Result<usize> {
    let mut layout = if path.exists() {
        read_layout(path)?
    } else {
        FileLayout::new()
    };
    let mut added = 0;
    for &service in services {
        let entry = layout.entry(service.to_owned()).or_default();
        for name in required_keys(service) {
            entry
                .entry(name.path_segment().to_owned())
                .or_insert_with(|| {
                    added += 1;
                    KeyVersions::generate().to_kv_data()
                });
        }
    }
    if added > 0 {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut text = serde_json::to_string_pretty(&layout).context("serializing keys")?;
        let result = write_private(path, text.as_bytes());
        text.zeroize();
        result?;
    }
    wipe(&mut layout);
    Ok(added)
}

/// Writes through a temporary file and a rename, readable by the owner only.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
