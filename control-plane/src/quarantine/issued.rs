//! The certificates the CA issued that have not expired yet: serial → who
//! got it (SPIFFE ID, and the pod when the request named one). A
//! `namespace/pod` quarantine revokes exactly the certificates that pod
//! got. Kept in `<data-dir>/issued.jsonl` so a restart keeps it: one line
//! appended per issuance; at start, and whenever stale lines outnumber the
//! live ones, the file is rewritten with the unexpired records only. At
//! most [`MAX_RECORDS`] are kept (the ones expiring first go).

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::warn;

/// Records kept at most: about 9 MiB of file (twice that before a
/// compaction), well inside the 64 MiB data volume of `deploy/`.
pub const MAX_RECORDS: usize = 50_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// [`ward_identity::svid::serial_of`]'s form.
    pub serial: String,
    pub spiffe_id: String,
    /// `namespace/pod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Unix seconds.
    pub not_after: i64,
    /// SHA-256 fingerprint of the CA certificate that signed it: which
    /// sidecars a CA rotation still waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The address the request came from (who holds it, outside
    /// Kubernetes, where there is no pod name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

impl Issued {
    /// Who holds it, as [`holder_key`] names sidecars.
    pub fn holder(&self) -> String {
        holder_key(
            &self.spiffe_id,
            self.pod.as_deref(),
            self.address.as_deref(),
        )
    }
}

/// One sidecar's name across streams and renewals: its pod
/// (`namespace/pod`) when it names one, else its identity at its address.
pub fn holder_key(spiffe_id: &str, pod: Option<&str>, address: Option<&str>) -> String {
    match (pod, address) {
        (Some(pod), _) => pod.to_owned(),
        (None, Some(address)) => format!("{spiffe_id}@{address}"),
        (None, None) => spiffe_id.to_owned(),
    }
}

pub struct IssuedCertificates {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_serial: HashMap<String, Issued>,
    /// Holder ([`holder_key`]) → serial of the certificate issued to it
    /// that expires last (its current one).
    latest: HashMap<String, String>,
    /// Lines in the file, live or not.
    lines: usize,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl IssuedCertificates {
    /// Loads `<data_dir>/issued.jsonl` (dropping what expired) and
    /// rewrites it compacted.
    pub fn open(data_dir: &Path) -> std::io::Result<IssuedCertificates> {
        let path = data_dir.join("issued.jsonl");
        let mut inner = Inner::default();
        match fs::File::open(&path) {
            Ok(file) => {
                let now = now();
                for line in std::io::BufReader::new(file).lines() {
                    let Ok(issued) = serde_json::from_str::<Issued>(&line?) else {
                        continue;
                    };
                    if issued.not_after > now {
                        inner.insert(issued);
                    }
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        let store = IssuedCertificates {
            path,
            inner: Mutex::new(inner),
        };
        {
            let mut inner = store.inner.lock().expect("not poisoned");
            inner.bound();
            store.rewrite(&mut inner)?;
        }
        Ok(store)
    }

    /// Records one issued certificate. A failed write is logged: the
    /// record stays in memory (it only narrows what a restart remembers).
    pub fn record(&self, issued: Issued) {
        let mut inner = self.inner.lock().expect("not poisoned");
        let line = serde_json::to_vec(&issued).expect("serializable");
        inner.insert(issued);
        inner.bound();
        let written = if inner.lines > 2 * inner.by_serial.len() + 1024 {
            self.rewrite(&mut inner)
        } else {
            inner.lines += 1;
            self.append(&line)
        };
        if let Err(err) = written {
            warn!(file = %self.path.display(), error = %err, "recording an issued certificate failed");
        }
    }

    /// The unexpired serials issued to pod `namespace/pod`.
    pub fn serials_of_pod(&self, pod: &str) -> Vec<String> {
        let now = now();
        let inner = self.inner.lock().expect("not poisoned");
        let mut serials: Vec<String> = inner
            .by_serial
            .values()
            .filter(|i| i.pod.as_deref() == Some(pod) && i.not_after > now)
            .map(|i| i.serial.clone())
            .collect();
        serials.sort();
        serials
    }

    /// The unexpired certificate issued last to `holder` ([`holder_key`]).
    pub fn latest_for(&self, holder: &str) -> Option<Issued> {
        let inner = self.inner.lock().expect("not poisoned");
        let serial = inner.latest.get(holder)?;
        inner
            .by_serial
            .get(serial)
            .filter(|i| i.not_after > now())
            .cloned()
    }

    pub fn get(&self, serial: &str) -> Option<Issued> {
        let inner = self.inner.lock().expect("not poisoned");
        inner.by_serial.get(serial).cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("not poisoned").by_serial.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        let mut line = line.to_vec();
        line.push(b'\n');
        file.write_all(&line)
    }

    /// Replaces the file with the live records (temporary file, rename).
    fn rewrite(&self, inner: &mut Inner) -> std::io::Result<()> {
        let mut text = Vec::new();
        for issued in inner.by_serial.values() {
            serde_json::to_writer(&mut text, issued).expect("serializable");
            text.push(b'\n');
        }
        let result = crate::data_dir::replace_private(&self.path, &text);
        if result.is_ok() {
            inner.lines = inner.by_serial.len();
        }
        result
    }
}

impl Inner {
    fn insert(&mut self, issued: Issued) {
        let holder = issued.holder();
        let newer = match self.latest.get(&holder).and_then(|s| self.by_serial.get(s)) {
            Some(current) => issued.not_after >= current.not_after,
            None => true,
        };
        if newer {
            self.latest.insert(holder, issued.serial.clone());
        }
        self.by_serial.insert(issued.serial.clone(), issued);
    }

    /// Drops what expired and, over [`MAX_RECORDS`], what expires first
    /// (a tenth at a time, so this is rare).
    fn bound(&mut self) {
        if self.by_serial.len() <= MAX_RECORDS {
            return;
        }
        let now = now();
        self.by_serial.retain(|_, i| i.not_after > now);
        if self.by_serial.len() <= MAX_RECORDS {
            return;
        }
        let mut expiries: Vec<i64> = self.by_serial.values().map(|i| i.not_after).collect();
        expiries.sort_unstable();
        let cut = expiries[self.by_serial.len() - MAX_RECORDS * 9 / 10];
        self.by_serial.retain(|_, i| i.not_after > cut);
        let by_serial = &self.by_serial;
        self.latest
            .retain(|_, serial| by_serial.contains_key(serial));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(serial: &str, pod: Option<&str>, not_after: i64) -> Issued {
        Issued {
            serial: serial.into(),
            spiffe_id: "spiffe://cluster.local/ns/shop/sa/web".into(),
            pod: pod.map(str::to_owned),
            not_after,
            ..Default::default()
        }
    }

    #[test]
    fn the_latest_certificate_of_each_holder_is_known_after_a_restart() {
        let data = tempfile::tempdir().unwrap();
        let later = now() + 3600;
        let store = IssuedCertificates::open(data.path()).unwrap();
        store.record(issued("a1", Some("shop/web-1"), later));
        store.record(issued("a2", Some("shop/web-1"), later + 60));
        // An older certificate recorded late does not replace the newer.
        store.record(issued("a0", Some("shop/web-1"), later - 60));
        let mut elsewhere = issued("b1", None, later);
        elsewhere.address = Some("198.18.0.7".into());
        elsewhere.issuer = Some("AB:CD".into());
        store.record(elsewhere);
        assert_eq!(store.latest_for("shop/web-1").unwrap().serial, "a2");
        drop(store);
        let reopened = IssuedCertificates::open(data.path()).unwrap();
        assert_eq!(reopened.latest_for("shop/web-1").unwrap().serial, "a2");
        let holder = holder_key(
            "spiffe://cluster.local/ns/shop/sa/web",
            None,
            Some("198.18.0.7"),
        );
        let b1 = reopened.latest_for(&holder).unwrap();
        assert_eq!(b1.issuer.as_deref(), Some("AB:CD"));
        assert!(reopened.latest_for("shop/web-9").is_none());
    }

    #[test]
    fn records_survive_a_restart_and_expired_ones_are_dropped() {
        let data = tempfile::tempdir().unwrap();
        let later = now() + 3600;
        let store = IssuedCertificates::open(data.path()).unwrap();
        store.record(issued("a1", Some("shop/web-1"), later));
        store.record(issued("b2", Some("shop/web-2"), later));
        store.record(issued("c3", Some("shop/web-1"), later));
        store.record(issued("d4", Some("shop/web-1"), now() - 1));
        assert_eq!(store.serials_of_pod("shop/web-1"), vec!["a1", "c3"]);
        drop(store);

        let reopened = IssuedCertificates::open(data.path()).unwrap();
        assert_eq!(reopened.serials_of_pod("shop/web-1"), vec!["a1", "c3"]);
        assert_eq!(reopened.len(), 3, "the expired record was dropped");
        assert_eq!(
            reopened.get("b2").unwrap().pod.as_deref(),
            Some("shop/web-2")
        );
        let lines = fs::read_to_string(data.path().join("issued.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 3, "compacted at start");
    }

    #[test]
    fn the_record_is_bounded_and_keeps_what_expires_last() {
        let mut inner = Inner::default();
        let base = now() + 3600;
        for n in 0..(MAX_RECORDS + 10) {
            let serial = format!("{n:x}");
            inner
                .by_serial
                .insert(serial.clone(), issued(&serial, None, base + n as i64));
        }
        inner.bound();
        assert!(inner.by_serial.len() <= MAX_RECORDS);
        let last = format!("{:x}", MAX_RECORDS + 9);
        assert!(inner.by_serial.contains_key(&last));
        assert!(!inner.by_serial.contains_key("0"));
    }
}
