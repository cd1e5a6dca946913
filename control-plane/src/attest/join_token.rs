//! One-time join tokens, stored as files so that the running control plane
//! and the `ward token create` CLI (separate processes) can share them
//! without locks.
//!
//! Layout under the store directory (normally `<data>/join-tokens/`):
//! - `pending/<sha256-hex>`: a token that can still be used;
//! - `used/<sha256-hex>`: a token that was consumed (or expired);
//! - `tmp/`: records being written.
//!
//! The token itself is never stored, only its SHA-256, so reading the
//! directory does not reveal a usable token. Records are written to `tmp/`
//! and renamed into `pending/`, so a reader never sees a partial record.
//! Consuming is `rename(pending/<h>, used/<h>)`: rename is atomic, so when
//! several processes race for one token exactly one rename succeeds and the
//! others see `NotFound`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ward_identity::SpiffeId;

use super::AttestError;

#[cfg(test)]
mod tests;

const PENDING: &str = "pending";
const USED: &str = "used";
const TMP: &str = "tmp";
/// Longest a join token may be valid: it is a bearer secret for a
/// one-time enrolment, not a standing credential.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Random bytes per token: 256 bits, far beyond guessing.
const TOKEN_BYTES: usize = 32;

/// What is stored for one token (under the token's hash, never the token).
#[derive(Debug, Serialize, Deserialize)]
struct TokenRecord {
    spiffe_id: String,
    /// Unix seconds.
    expires_at: u64,
    /// Unix seconds.
    created_at: u64,
}

/// A directory of one-time join tokens; see the module documentation.
#[derive(Debug, Clone)]
pub struct JoinTokenStore {
    root: PathBuf,
}

impl JoinTokenStore {
    /// Opens (creating if needed) the store at `dir`, with owner-only
    /// permissions (0700) on every directory.
    pub fn open(dir: &Path) -> Result<Self, AttestError> {
        for sub in [
            dir.to_path_buf(),
            dir.join(PENDING),
            dir.join(USED),
            dir.join(TMP),
        ] {
            ensure_private_dir(&sub)?;
        }
        Ok(Self {
            root: dir.to_path_buf(),
        })
    }

    /// Creates a token bound to `id`, valid for `ttl`. The token is returned
    /// once and cannot be recovered from the store afterwards.
    pub fn create(&self, id: &SpiffeId, ttl: Duration) -> Result<String, AttestError> {
        if super::is_reserved(id) {
            return Err(AttestError::ReservedIdentity(id.clone()));
        }
        if ttl > MAX_TTL || ttl.is_zero() {
            return Err(AttestError::TokenTtl { max: MAX_TTL });
        }
        let token = new_token();
        let now = unix_secs(SystemTime::now());
        let record = TokenRecord {
            spiffe_id: id.as_str().to_owned(),
            expires_at: now.saturating_add(ttl.as_secs()),
            created_at: now,
        };
        let json = serde_json::to_vec(&record).expect("token record serializes");
        self.write_atomically(&self.pending_path(&token_hash(&token)), &json)?;
        Ok(token)
    }

    /// Consumes `token` for `requested` and returns the ID it was bound to.
    ///
    /// - unknown token: [`AttestError::TokenUnknown`];
    /// - already consumed (or lost a race): [`AttestError::TokenAlreadyUsed`];
    /// - expired: [`AttestError::TokenExpired`], and the token is retired so
    ///   it can never succeed later (e.g. against a lagging clock);
    /// - bound to another ID: [`AttestError::TokenIdMismatch`] and the token
    ///   is **not** consumed. A misconfigured workload may retry with the
    ///   right ID, and nothing is gained by an attacker: the token still
    ///   only ever yields the one ID it was bound to.
    pub fn consume(
        &self,
        token: &str,
        requested: &SpiffeId,
        now: SystemTime,
    ) -> Result<SpiffeId, AttestError> {
        // Files are named by hash, so lookup compares hashes, never tokens.
        let hash = token_hash(token);
        let pending = self.pending_path(&hash);
        let Some(record) = self.read_record(&pending)? else {
            return Err(if self.used_path(&hash).exists() {
                AttestError::TokenAlreadyUsed
            } else {
                AttestError::TokenUnknown
            });
        };
        let bound = parse_bound_id(&pending, &record)?;

        if unix_secs(now) >= record.expires_at {
            // Whoever wins this rename does not matter: either way the
            // token is retired and the answer is "expired".
            self.retire(&hash)?;
            return Err(AttestError::TokenExpired);
        }
        if bound != *requested {
            return Err(AttestError::TokenIdMismatch {
                bound,
                requested: requested.clone(),
            });
        }
        if !self.retire(&hash)? {
            // Another consumer renamed it between our read and our rename.
            return Err(AttestError::TokenAlreadyUsed);
        }
        Ok(bound)
    }

    /// Removes records of tokens that expired before `now`, pending or used,
    /// and returns how many were removed. After pruning, an old token is
    /// refused as unknown rather than expired or reused.
    pub fn prune_expired(&self, now: SystemTime) -> Result<usize, AttestError> {
        let now = unix_secs(now);
        let mut pruned = 0;
        for dir in [PENDING, USED] {
            for hash in self.list(dir)? {
                let path = self.root.join(dir).join(&hash);
                // A record that cannot be read is left for an operator.
                let Ok(Some(record)) = self.read_record(&path) else {
                    continue;
                };
                if now < record.expires_at {
                    continue;
                }
                // Retire pending first so a concurrent consumer can't win it.
                if dir == PENDING && !self.retire(&hash)? {
                    continue;
                }
                match fs::remove_file(self.used_path(&hash)) {
                    Ok(()) => pruned += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove expired token record", e)),
                }
            }
        }
        Ok(pruned)
    }

    fn pending_path(&self, hash: &str) -> PathBuf {
        self.root.join(PENDING).join(hash)
    }

    fn used_path(&self, hash: &str) -> PathBuf {
        self.root.join(USED).join(hash)
    }

    /// Atomically moves `pending/<hash>` to `used/<hash>`. Returns false when
    /// the pending record is gone (someone else retired it first).
    fn retire(&self, hash: &str) -> Result<bool, AttestError> {
        match fs::rename(self.pending_path(hash), self.used_path(hash)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("move token record to used/", e)),
        }
    }

    /// `None` when the record does not exist.
    fn read_record(&self, path: &Path) -> Result<Option<TokenRecord>, AttestError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read token record", e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AttestError::TokenRecordCorrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    }

    /// Writes `tmp/<random>` (0600, synced), then renames it to `dest`, so
    /// readers see either no record or a complete one.
    fn write_atomically(&self, dest: &Path, contents: &[u8]) -> Result<(), AttestError> {
        let tmp = self.root.join(TMP).join(hex::encode(random_bytes::<16>()));
        let result = write_private_file(&tmp, contents)
            .and_then(|()| fs::rename(&tmp, dest))
            .and_then(|()| sync_dir(dest.parent().unwrap_or(&self.root)));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|e| io_err("write token record", e))
    }

    /// Hash-named entries of a subdirectory (anything else is ignored).
    fn list(&self, dir: &str) -> Result<Vec<String>, AttestError> {
        let entries = fs::read_dir(self.root.join(dir)).map_err(|e| io_err("list tokens", e))?;
        let mut hashes = Vec::new();
        for entry in entries {
            let name = entry.map_err(|e| io_err("list tokens", e))?.file_name();
            if let Some(name) = name.to_str().filter(|n| is_hash_name(n)) {
                hashes.push(name.to_owned());
            }
        }
        Ok(hashes)
    }
}

/// A fresh token: `wjt_` then 32 bytes from the OS-seeded CSPRNG,
/// base64url unpadded. The prefix keeps a token from starting with `-`
/// (which a command line would take for a flag) and lets secret scanners
/// recognise leaked tokens.
fn new_token() -> String {
    format!(
        "wjt_{}",
        URL_SAFE_NO_PAD.encode(random_bytes::<TOKEN_BYTES>())
    )
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// The name a token is stored under: lowercase hex SHA-256.
fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn is_hash_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

fn parse_bound_id(path: &Path, record: &TokenRecord) -> Result<SpiffeId, AttestError> {
    SpiffeId::parse(&record.spiffe_id).map_err(|e| AttestError::TokenRecordCorrupt {
        path: path.to_path_buf(),
        reason: format!("spiffe_id: {e}"),
    })
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn io_err(context: &str, source: io::Error) -> AttestError {
    AttestError::Io {
        context: context.to_owned(),
        source,
    }
}

fn write_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Makes the rename durable; best effort where directories can't be opened.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Creates `dir` with mode 0700, or tightens an existing one that is wider.
fn ensure_private_dir(dir: &Path) -> Result<(), AttestError> {
    let context = || format!("create directory {}", dir.display());
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| io_err(&context(), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(dir).map_err(|e| io_err(&context(), e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| io_err(&format!("restrict {} to 0700", dir.display()), e))?;
        }
    }
    Ok(())
}
