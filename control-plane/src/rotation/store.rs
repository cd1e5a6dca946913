//! A rotation on disk, `<data-dir>/rotation/` (mode 0700), so a restart in
//! the middle resumes it:
//!
//! ```text
//! state.json                    the phase, both CAs' fingerprints, the sidecars that must confirm
//! next.pem, next-key.pem        the CA the rotation moves to (prepare → retire)
//! current.pem, current-key.pem  the CA in force after a rotation, until it is copied into ca/
//!                               (never, when ca/ is a read-only Secret volume)
//! ```
//!
//! Every file is replaced atomically and readable by its owner only.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use ward_identity::ca::CertificateAuthority;

use super::state::RotationState;
use crate::data_dir::replace_private;

/// Which CA file pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaFile {
    Next,
    Current,
}

impl CaFile {
    fn stem(self) -> &'static str {
        match self {
            CaFile::Next => "next",
            CaFile::Current => "current",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a rotation state this control plane understands: {message}", path.display())]
    State { path: PathBuf, message: String },
    #[error(
        "{}: mode {mode:04o} lets others read or write it; a CA key must be 0600 or 0400",
        path.display()
    )]
    InsecureKey { path: PathBuf, mode: u32 },
    #[error("the CA in {}: {message}", path.display())]
    Ca { path: PathBuf, message: String },
}

pub struct RotationDir {
    dir: PathBuf,
}

impl RotationDir {
    /// `<data_dir>/rotation`, created (0700) when missing.
    pub fn open(data_dir: &Path) -> Result<RotationDir, StoreError> {
        let dir = data_dir.join("rotation");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StoreError::Io {
                path: dir.clone(),
                source,
            })?;
        Ok(RotationDir { dir })
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn ca_paths(&self, which: CaFile) -> (PathBuf, PathBuf) {
        let stem = which.stem();
        (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}-key.pem")),
        )
    }

    /// The state; the default (idle, nothing retired) when there is none.
    /// A file that does not parse is an error: guessing could drop a root.
    pub fn load_state(&self) -> Result<RotationState, StoreError> {
        let path = self.state_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::State {
                path,
                message: e.to_string(),
            }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(RotationState::default()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    pub fn save_state(&self, state: &RotationState) -> Result<(), StoreError> {
        let path = self.state_path();
        let mut text = serde_json::to_vec_pretty(state).expect("serializable");
        text.push(b'\n');
        replace_private(&path, &text).map_err(|source| StoreError::Io { path, source })
    }

    /// Writes `ca` (its chain, then its key) as `which`.
    pub fn save_ca(&self, which: CaFile, ca: &CertificateAuthority) -> Result<(), StoreError> {
        let (cert, key) = self.ca_paths(which);
        for (path, text) in [(cert, ca.full_chain_pem()), (key, ca.key_pem())] {
            replace_private(&path, text.as_bytes())
                .map_err(|source| StoreError::Io { path, source })?;
        }
        Ok(())
    }

    /// Loads `which` for `trust_domain`; the key must be private.
    pub fn load_ca(
        &self,
        which: CaFile,
        trust_domain: &str,
    ) -> Result<CertificateAuthority, StoreError> {
        let (cert, key) = self.ca_paths(which);
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        let meta = fs::symlink_metadata(&key).map_err(io_err(&key))?;
        let mode = meta.mode() & 0o7777;
        if !meta.file_type().is_file() || mode & 0o077 != 0 {
            return Err(StoreError::InsecureKey { path: key, mode });
        }
        let cert_pem = fs::read_to_string(&cert).map_err(io_err(&cert))?;
        let key_pem = fs::read_to_string(&key).map_err(io_err(&key))?;
        CertificateAuthority::from_pem_with_trust_domain(&cert_pem, &key_pem, Some(trust_domain))
            .map_err(|e| StoreError::Ca {
                path: cert,
                message: e.to_string(),
            })
    }

    /// Removes `which` (nothing to do when it is not there).
    pub fn remove_ca(&self, which: CaFile) -> Result<(), StoreError> {
        let (cert, key) = self.ca_paths(which);
        // The key first: a certificate without its key is never a CA.
        for path in [key, cert] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Io { path, source }),
            }
        }
        Ok(())
    }
}
