//! `ward quarantine --kubernetes`: `Quarantine` objects created and
//! deleted through the API server with the operator's credentials (the
//! control plane only reads them). The same rules as the data directory
//! ([`crate::quarantine::QuarantineDir`]): a target is quarantined once,
//! whatever the object is named (an object's name is its target's entry
//! name, so two concurrent requests meet at the API server's
//! `AlreadyExists`), and lifting what is not quarantined is refused.

use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams, Preconditions};

use super::source::quarantine_resource;
use crate::quarantine::document::DocError;
use crate::quarantine::objects::entry_of;
use crate::quarantine::{Entry, Target};

/// Longest one API call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum QuarantineApiError {
    #[error(
        "{target} is already quarantined (Quarantine {entry}); lift it first to quarantine it again"
    )]
    AlreadyQuarantined { target: String, entry: String },
    #[error("{0} is not quarantined (no Quarantine object names it)")]
    NotQuarantined(String),
    #[error("{what}: {message}")]
    Api { what: String, message: String },
    #[error("{what}: no answer from the Kubernetes API server within {CALL_TIMEOUT:?}")]
    Timeout { what: String },
}

/// One Quarantine object: its name, UID and entry (or why it is refused).
pub struct StoredObject {
    pub name: String,
    pub uid: Option<String>,
    pub entry: Result<Entry, DocError>,
}

pub struct QuarantineApi {
    api: Api<DynamicObject>,
}

impl QuarantineApi {
    pub fn new(client: kube::Client) -> Self {
        QuarantineApi {
            api: Api::all_with(client, &quarantine_resource()),
        }
    }

    /// Every Quarantine object.
    pub async fn list(&self) -> Result<Vec<StoredObject>, QuarantineApiError> {
        let list = call(
            "listing the Quarantine objects",
            self.api.list(&ListParams::default()),
        )
        .await?;
        let resource = quarantine_resource();
        Ok(list
            .items
            .into_iter()
            .map(|object| {
                let name = object.metadata.name.clone().unwrap_or_default();
                let uid = object.metadata.uid.clone();
                let mut value = serde_json::to_value(object).unwrap_or_default();
                // List items come without apiVersion and kind.
                value["apiVersion"] = resource.api_version.clone().into();
                value["kind"] = resource.kind.clone().into();
                StoredObject {
                    name,
                    uid,
                    entry: entry_of(&value),
                }
            })
            .collect())
    }

    /// Creates the object of `entry`. Refused when its target is already
    /// quarantined, by this name or another.
    pub async fn create(&self, entry: &Entry) -> Result<(), QuarantineApiError> {
        let already = |name: String| QuarantineApiError::AlreadyQuarantined {
            target: entry.target.to_string(),
            entry: name,
        };
        if let Some(existing) = self.find(&entry.target).await?.into_iter().next() {
            return Err(already(existing.name));
        }
        let object: DynamicObject =
            serde_json::from_value(entry.to_value()).expect("a Quarantine document is an object");
        let what = format!("creating Quarantine {}", entry.name);
        let params = PostParams::default();
        let create = self.api.create(&params, &object);
        match tokio::time::timeout(CALL_TIMEOUT, create).await {
            Ok(Ok(_)) => Ok(()),
            // Created meanwhile by someone else, for the same target.
            Ok(Err(kube::Error::Api(status))) if status.is_already_exists() => {
                Err(already(entry.name.clone()))
            }
            Ok(Err(err)) => Err(api_error(what, err)),
            Err(_) => Err(QuarantineApiError::Timeout { what }),
        }
    }

    /// Deletes every valid object quarantining `target`; returns their
    /// entries. An object replaced meanwhile (another UID) is not deleted.
    pub async fn remove(&self, target: &Target) -> Result<Vec<Entry>, QuarantineApiError> {
        let mut removed = Vec::new();
        for object in self.find(target).await? {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: object.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            let what = format!("deleting Quarantine {}", object.name);
            match tokio::time::timeout(CALL_TIMEOUT, self.api.delete(&object.name, &params)).await {
                Ok(Ok(_)) => removed.extend(object.entry.ok()),
                // Lifted meanwhile by someone else: not ours to report.
                Ok(Err(kube::Error::Api(status))) if status.is_not_found() => {}
                Ok(Err(err)) => return Err(api_error(what, err)),
                Err(_) => return Err(QuarantineApiError::Timeout { what }),
            }
        }
        if removed.is_empty() {
            return Err(QuarantineApiError::NotQuarantined(target.to_string()));
        }
        Ok(removed)
    }

    /// The valid objects quarantining `target`.
    async fn find(&self, target: &Target) -> Result<Vec<StoredObject>, QuarantineApiError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|o| o.entry.as_ref().is_ok_and(|e| e.target == *target))
            .collect())
    }
}

/// `request` within [`CALL_TIMEOUT`], its failure named by `what`.
async fn call<T>(
    what: &str,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, QuarantineApiError> {
    match tokio::time::timeout(CALL_TIMEOUT, request).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(err)) => Err(api_error(what.to_owned(), err)),
        Err(_) => Err(QuarantineApiError::Timeout {
            what: what.to_owned(),
        }),
    }
}

/// The API server's own message, with what to do about the usual causes.
fn api_error(what: String, err: kube::Error) -> QuarantineApiError {
    let message = match &err {
        kube::Error::Api(status) if status.is_not_found() => format!(
            "{} (is the Quarantine CRD installed? kubectl apply -f deploy/base/crds/quarantines.yaml)",
            status.message
        ),
        kube::Error::Api(status) if status.is_forbidden() => format!(
            "{} (quarantining needs list, create and delete on quarantines.ward.io)",
            status.message
        ),
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    };
    QuarantineApiError::Api { what, message }
}
