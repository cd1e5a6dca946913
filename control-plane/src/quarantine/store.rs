//! The embedded mode's quarantine entries: one `<name>.yaml` file each in
//! `<data-dir>/quarantine/`, written by `ward quarantine` and watched by
//! the control plane. A file appears whole or not at all (written under a
//! temporary name, then linked into place, which fails rather than replace
//! an existing entry) and is readable by its owner only.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::document::{DocError, Entry};
use super::target::Target;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{target} is already quarantined (entry {entry}); lift it first to quarantine it again"
    )]
    AlreadyQuarantined { target: String, entry: String },
    #[error("{0} is not quarantined")]
    NotQuarantined(String),
}

/// One file of the directory and what it holds.
pub struct StoredEntry {
    pub path: PathBuf,
    pub entry: Result<Entry, DocError>,
}

pub struct QuarantineDir {
    dir: PathBuf,
}

impl QuarantineDir {
    /// `<data_dir>/quarantine`, created (mode 0700) when missing.
    pub fn open(data_dir: &Path) -> Result<QuarantineDir, StoreError> {
        let dir = data_dir.join("quarantine");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StoreError::Io {
                path: dir.clone(),
                source,
            })?;
        Ok(QuarantineDir { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The `*.yaml` files (not hidden ones: temporary files start with a
    /// dot), sorted.
    fn files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let io = |source| StoreError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut files = Vec::new();
        for item in fs::read_dir(&self.dir).map_err(io)? {
            let path = item.map_err(io)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            if !name.starts_with('.') && name.ends_with(".yaml") && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }

    /// Every entry file and what it holds (or why it does not parse).
    pub fn read(&self) -> Result<Vec<StoredEntry>, StoreError> {
        let mut entries = Vec::new();
        for path in self.files()? {
            let entry = match fs::read_to_string(&path) {
                Ok(text) => Entry::parse(&text),
                Err(err) => Err(DocError::Yaml(err.to_string())),
            };
            entries.push(StoredEntry { path, entry });
        }
        Ok(entries)
    }

    /// Names and contents of the entry files, hashed: equal when nothing
    /// changed.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        for path in self.files().unwrap_or_default() {
            path.hash(&mut hasher);
            fs::read(&path).unwrap_or_default().hash(&mut hasher);
        }
        hasher.finish()
    }

    /// Writes `entry` as `<name>.yaml`. Refused when its target is already
    /// quarantined (by this name or another file).
    pub fn create(&self, entry: &Entry) -> Result<PathBuf, StoreError> {
        if let Some(existing) = self
            .read()?
            .into_iter()
            .find(|s| s.entry.as_ref().is_ok_and(|e| e.target == entry.target))
        {
            return Err(StoreError::AlreadyQuarantined {
                target: entry.target.to_string(),
                entry: entry_label(&existing.path),
            });
        }
        let path = self.dir.join(format!("{}.yaml", entry.name));
        let tmp = self.dir.join(format!(
            ".{}.{:016x}.tmp",
            entry.name,
            rand::random::<u64>()
        ));
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let write = || -> std::io::Result<()> {
            // A fresh name (O_EXCL): never someone else's file or symlink.
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(entry.to_yaml().as_bytes())?;
            file.sync_all()?;
            // Unlike a rename, a link never replaces what is there.
            fs::hard_link(&tmp, &path)
        };
        let written = write();
        let _ = fs::remove_file(&tmp);
        match written {
            Ok(()) => Ok(path),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StoreError::AlreadyQuarantined {
                    target: entry.target.to_string(),
                    entry: entry.name.clone(),
                })
            }
            Err(err) => Err(io(err)),
        }
    }

    /// Removes every entry for `target`; returns them.
    pub fn remove(&self, target: &Target) -> Result<Vec<Entry>, StoreError> {
        let mut removed = Vec::new();
        for stored in self.read()? {
            let Ok(entry) = stored.entry else { continue };
            if entry.target != *target {
                continue;
            }
            match fs::remove_file(&stored.path) {
                Ok(()) => removed.push(entry),
                // Lifted meanwhile by someone else: not ours to report.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StoreError::Io {
                        path: stored.path,
                        source,
                    });
                }
            }
        }
        if removed.is_empty() {
            return Err(StoreError::NotQuarantined(target.to_string()));
        }
        Ok(removed)
    }
}

fn entry_label(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn entry(target: &str) -> Entry {
        Entry::new(
            target.parse().unwrap(),
            "why",
            "alice",
            OffsetDateTime::now_utc(),
        )
        .unwrap()
    }

    #[test]
    fn create_read_and_remove() {
        let data = tempfile::tempdir().unwrap();
        let dir = QuarantineDir::open(data.path()).unwrap();
        let web = entry("shop/web");
        let path = dir.create(&web).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let read = dir.read().unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].entry.as_ref().unwrap(), &web);
        // Nothing but the entry is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        let again = dir.create(&entry("shop/web")).unwrap_err();
        assert!(
            matches!(again, StoreError::AlreadyQuarantined { .. }),
            "{again}"
        );

        let before = dir.fingerprint();
        assert_eq!(dir.remove(&web.target).unwrap(), vec![web.clone()]);
        assert_ne!(dir.fingerprint(), before);
        assert!(matches!(
            dir.remove(&web.target),
            Err(StoreError::NotQuarantined(_))
        ));
        assert!(dir.read().unwrap().is_empty());
    }

    #[test]
    fn an_entry_written_by_hand_under_another_name_is_found_and_lifted() {
        let data = tempfile::tempdir().unwrap();
        let dir = QuarantineDir::open(data.path()).unwrap();
        let mut web = entry("shop/web");
        web.name = "incident-42".into();
        fs::write(dir.path().join("incident-42.yaml"), web.to_yaml()).unwrap();
        fs::write(dir.path().join("broken.yaml"), "kind: Nonsense").unwrap();
        fs::write(dir.path().join(".partial.tmp"), "ignored").unwrap();
        assert!(matches!(
            dir.create(&entry("shop/web")),
            Err(StoreError::AlreadyQuarantined { entry, .. }) if entry == "incident-42"
        ));
        let read = dir.read().unwrap();
        assert_eq!(read.len(), 2);
        assert!(read.iter().any(|s| s.entry.is_err()));
        assert_eq!(dir.remove(&web.target).unwrap(), vec![web]);
    }
}
