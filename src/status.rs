//! Conditions (built by small helpers, merged with what is on the object) and the status
//! writer: server-side apply of `.status` under one field manager.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub const READY: &str = "Ready";
pub const CONNECTED: &str = "Connected";
/// Field manager of the reconcilers' status fields (observedGeneration, conditions).
pub const RECONCILER_MANAGER: &str = "vehicle-connect";

/// Outcome of one check, as a condition will show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub status: Tri,
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tri {
    True,
    False,
    Unknown,
}

impl Tri {
    fn as_str(self) -> &'static str {
        match self {
            Tri::True => "True",
            Tri::False => "False",
            Tri::Unknown => "Unknown",
        }
    }
}

impl Check {
    pub fn ok(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Check {
            status: Tri::True,
            reason: reason.into(),
            message: message.into(),
        }
    }
    pub fn fail(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Check {
            status: Tri::False,
            reason: reason.into(),
            message: message.into(),
        }
    }
    pub fn unknown(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Check {
            status: Tri::Unknown,
            reason: reason.into(),
            message: message.into(),
        }
    }
    pub fn is_ok(&self) -> bool {
        self.status == Tri::True
    }

    /// The condition of type `type_`, keeping `lastTransitionTime` from `old` when the
    /// status did not change.
    pub fn to_condition(
        &self,
        type_: &str,
        generation: Option<i64>,
        old: &[Condition],
    ) -> Condition {
        let status = self.status.as_str();
        let since = find(old, type_)
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(now);
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: self.reason.clone(),
            message: self.message.clone(),
            observed_generation: generation,
            last_transition_time: since,
        }
    }
}

pub fn now() -> Time {
    Time(Timestamp::now())
}

pub fn find<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// Whether `new` differs from `old` in what a user would be told about (status, reason).
pub fn transitioned(old: &[Condition], new: &Condition) -> bool {
    find(old, &new.type_).is_none_or(|o| o.status != new.status || o.reason != new.reason)
}

/// Whether the condition on the object differs from `new` in anything but its time.
pub fn differs(old: &[Condition], new: &Condition) -> bool {
    find(old, &new.type_).is_none_or(|o| {
        o.status != new.status
            || o.reason != new.reason
            || o.message != new.message
            || o.observed_generation != new.observed_generation
    })
}

/// The reconcilers' part of a status: counters belong to the delivery writer (another
/// field manager), so neither erases the other's fields.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcilerStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub conditions: Vec<Condition>,
}

/// Applies `status` (a fragment owned by `manager`) to the object's status subresource.
pub async fn apply<K, S>(api: &Api<K>, obj: &K, manager: &str, status: &S) -> kube::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_is_kept_while_status_holds() {
        let first = Check::fail("SecretNotFound", "no secret").to_condition(READY, Some(1), &[]);
        let mut old = vec![first.clone()];
        old[0].last_transition_time = Time(Timestamp::UNIX_EPOCH);
        let same = Check::fail("SecretInvalid", "bad key").to_condition(READY, Some(2), &old);
        assert_eq!(same.last_transition_time, Time(Timestamp::UNIX_EPOCH));
        assert_eq!(same.observed_generation, Some(2));
        assert!(transitioned(&old, &same), "reason changed");
        let flipped = Check::ok("Ready", "ok").to_condition(READY, Some(2), &old);
        assert_ne!(flipped.last_transition_time, Time(Timestamp::UNIX_EPOCH));
        assert!(transitioned(&old, &flipped));
        assert!(!transitioned(std::slice::from_ref(&flipped), &flipped));
    }
}
