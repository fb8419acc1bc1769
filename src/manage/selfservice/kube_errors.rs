//! The Kubernetes API server's refusals as management API errors: its validation (OpenAPI
//! schema and CEL rules of the CRDs) comes back naming the field.

use axum::http::StatusCode;

use crate::manage::ApiError;

/// `what` names the object for a 404 or 409 (`webhooks/crm`).
pub fn from_kube(e: kube::Error, what: &str) -> ApiError {
    let kube::Error::Api(status) = e else {
        return ApiError::unavailable(format!("the Kubernetes API server: {e}"));
    };
    match status.code {
        404 => ApiError::not_found(format!("{what} not found")),
        409 if status.reason == "AlreadyExists" => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("{what} exists already"),
        ),
        409 => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("{what} was changed meanwhile (resourceVersion); read it again and retry"),
        ),
        // 422 Invalid: the CRD's schema or a CEL rule; 400: e.g. an unknown field, refused
        // by strict field validation.
        422 | 400 => {
            let causes = status
                .details
                .as_ref()
                .map(|d| d.causes.as_slice())
                .unwrap_or_default();
            let field = causes
                .iter()
                .map(|c| c.field.clone())
                .find(|f| !f.is_empty())
                .or_else(|| unknown_field(&status.message));
            let message = if causes.is_empty() {
                status.message.clone()
            } else {
                causes
                    .iter()
                    .map(|c| {
                        if c.field.is_empty() {
                            c.message.clone()
                        } else {
                            format!("{}: {}", c.field, c.message)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            ApiError {
                field,
                ..ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_resource",
                    message,
                )
            }
        }
        403 => ApiError::unavailable(format!(
            "the operator may not write {what}: its RBAC lacks self-service (chart selfService.enabled); {}",
            status.message
        )),
        _ => ApiError::unavailable(format!(
            "the Kubernetes API server answered {}: {}",
            status.code, status.message
        )),
    }
}

/// `spec.foo` of strict decoding's `unknown field "spec.foo"`.
fn unknown_field(message: &str) -> Option<String> {
    let rest = &message[message.find("unknown field \"")? + 15..];
    Some(rest[..rest.find('"')?].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;
    use kube::core::response::{StatusCause, StatusDetails};

    #[test]
    fn invalid_names_the_field() {
        let status = Status {
            code: 422,
            reason: "Invalid".into(),
            message: "WebhookSubscription.connect.vehicles.io \"x\" is invalid".into(),
            details: Some(StatusDetails {
                causes: vec![StatusCause {
                    reason: "FieldValueInvalid".into(),
                    message: "Invalid value: 500: must be at most 120".into(),
                    field: "spec.timeoutSeconds".into(),
                }],
                name: "x".into(),
                group: "connect.vehicles.io".into(),
                kind: "webhooksubscriptions".into(),
                uid: String::new(),
                retry_after_seconds: 0,
            }),
            ..Default::default()
        };
        let e = from_kube(kube::Error::Api(status.boxed()), "webhooks/x");
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.field.as_deref(), Some("spec.timeoutSeconds"));
        assert!(e.message.contains("at most 120"));
        assert_eq!(
            unknown_field(r#"strict decoding error: unknown field "spec.colour""#).as_deref(),
            Some("spec.colour")
        );
    }
}
