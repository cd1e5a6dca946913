//! The audit trail, `<data-dir>/audit.jsonl`: one JSON object per line,
//! only ever appended to. `ward quarantine` appends what an operator asked
//! (quarantine, lift: who, when, why, what); the control plane appends when
//! it puts an entry in force or takes it out (with what it resolved the
//! target to). `ward ca rotate` steps are recorded here too, by the control
//! plane that performs them (`ca-*` actions). `ward audit` lists it.

use std::fs;
use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use ward_api::discovery::QuarantineBody;

/// Who the control plane's own records name.
pub const CONTROL_PLANE: &str = "ward-control-plane";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// An operator quarantined a target.
    Quarantine,
    /// An operator lifted a quarantine.
    Lift,
    /// The control plane put an entry in force (sidecars are being told).
    Enforced,
    /// The control plane took an entry out of force.
    Lifted,
    /// CA rotation (`ward ca rotate`): a new CA's root joined the bundles.
    CaPrepare,
    /// CA rotation: the new CA signs.
    CaActivate,
    /// CA rotation: the old root left the bundles.
    CaRetire,
    /// CA rotation: a step was rolled back.
    CaAbort,
    /// CA rotation: every sidecar confirmed the retire step; the new CA
    /// is the CA (recorded by the control plane).
    CaRotated,
    /// An action this build does not know (written by a newer one).
    #[serde(other)]
    Other,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Quarantine => "quarantine",
            Action::Lift => "lift",
            Action::Enforced => "enforced",
            Action::Lifted => "lifted",
            Action::CaPrepare => "ca-prepare",
            Action::CaActivate => "ca-activate",
            Action::CaRetire => "ca-retire",
            Action::CaAbort => "ca-abort",
            Action::CaRotated => "ca-rotated",
            Action::Other => "other",
        }
    }
}

/// One line of the trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339, UTC.
    pub time: String,
    pub action: Action,
    /// The target as written (`spiffe://…`, `namespace/pod`, `serial:HEX`).
    pub target: String,
    /// The quarantine entry's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// Who asked (an operator), or [`CONTROL_PLANE`].
    pub by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// What the control plane resolved the target to (`enforced` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revokes: Option<QuarantineBody>,
    /// A CA rotation step: the phases, the CAs and how many sidecars had
    /// confirmed (`ca-*` actions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<serde_json::Value>,
}

impl Record {
    pub fn now(action: Action, target: &str, by: &str) -> Record {
        Record {
            time: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
            action,
            target: target.to_owned(),
            entry: None,
            by: by.to_owned(),
            reason: String::new(),
            revokes: None,
            rotation: None,
        }
    }
}

/// One line of the trail as read: a record, or (line number, why not).
pub type Line = Result<Record, (usize, String)>;

pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    /// The trail of the data directory `data_dir`.
    pub fn new(data_dir: &Path) -> AuditLog {
        AuditLog {
            path: data_dir.join("audit.jsonl"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record as one line, written with one `write` on an
    /// `O_APPEND` file (so concurrent writers never interleave within a
    /// line) and synced. A symlink in its place is refused.
    pub fn append(&self, record: &Record) -> std::io::Result<()> {
        if fs::symlink_metadata(&self.path).is_ok_and(|m| !m.file_type().is_file()) {
            return Err(std::io::Error::other(format!(
                "{} is not a regular file",
                self.path.display()
            )));
        }
        let mut line = serde_json::to_vec(record).expect("serializable");
        line.push(b'\n');
        let mut file = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        file.write_all(&line)?;
        file.sync_data()
    }

    /// Every record, in order; a line that does not parse is returned as
    /// its 1-based line number and the error.
    pub fn read(&self) -> std::io::Result<Vec<Line>> {
        let file = match fs::File::open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        let mut records = Vec::new();
        for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            records.push(serde_json::from_str(&line).map_err(|e| (index + 1, e.to_string())));
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_appended_one_per_line_and_read_back() {
        let data = tempfile::tempdir().unwrap();
        let log = AuditLog::new(data.path());
        assert!(log.read().unwrap().is_empty());
        let mut first = Record::now(Action::Quarantine, "shop/web", "alice");
        first.reason = "compromised".into();
        first.entry = Some("pod-0123456789abcdef".into());
        let mut second = Record::now(Action::Enforced, "shop/web", CONTROL_PLANE);
        second.revokes = Some(QuarantineBody {
            target: "shop/web".into(),
            serials: vec!["1abc".into()],
            addresses: vec!["198.18.0.9".into()],
            ..Default::default()
        });
        log.append(&first).unwrap();
        log.append(&second).unwrap();
        let text = fs::read_to_string(log.path()).unwrap();
        assert_eq!(text.lines().count(), 2);
        let read: Vec<Record> = log
            .read()
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(read, vec![first, second]);

        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(log.path()).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_damaged_line_is_reported_with_its_number_and_the_rest_kept() {
        let data = tempfile::tempdir().unwrap();
        let log = AuditLog::new(data.path());
        log.append(&Record::now(Action::Lift, "shop/web", "bob"))
            .unwrap();
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(log.path())
            .unwrap();
        file.write_all(b"{not json\n").unwrap();
        log.append(&Record::now(Action::Lifted, "shop/web", CONTROL_PLANE))
            .unwrap();
        let read = log.read().unwrap();
        assert_eq!(read.len(), 3);
        assert!(matches!(read[1], Err((2, _))));
        assert!(read[0].is_ok() && read[2].is_ok());
    }

    #[test]
    fn a_symlink_in_place_of_the_trail_is_refused() {
        let data = tempfile::tempdir().unwrap();
        let elsewhere = data.path().join("elsewhere");
        fs::write(&elsewhere, "").unwrap();
        std::os::unix::fs::symlink(&elsewhere, data.path().join("audit.jsonl")).unwrap();
        let log = AuditLog::new(data.path());
        assert!(
            log.append(&Record::now(Action::Lift, "shop/web", "bob"))
                .is_err()
        );
        assert_eq!(fs::read_to_string(&elsewhere).unwrap(), "");
    }
}
