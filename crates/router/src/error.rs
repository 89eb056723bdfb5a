//! Every error the router itself answers, mapped once to an HTTP status and the OpenAI error
//! shape `{"error": {"message", "type", "param", "code"}}` that the `openai` SDK reads.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// An error answered by the router without a worker's response.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not what the route takes.
    #[error("{message}")]
    BadRequest {
        /// What is wrong, for the client.
        message: String,
        /// The offending field, when one is.
        param: Option<&'static str>,
    },
    /// The body is larger than `--max-payload-size`.
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request body did not arrive in time, or arrived too slowly.
    #[error("{0}")]
    RequestTimeout(String),
    /// No worker serves the requested model.
    #[error("The model `{model}` does not exist. Models served: {}", served.join(", "))]
    UnknownModel {
        /// The model asked for.
        model: String,
        /// The models the fleet serves.
        served: Vec<String>,
    },
    /// No route at this path.
    #[error("no route for {method} {path}")]
    NotFound {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
    },
    /// The route exists but not with this method.
    #[error("method {method} is not allowed for {path}")]
    MethodNotAllowed {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
    },
    /// Workers serve the model but none can take the request now.
    #[error("no healthy worker available{}", model.as_deref().map(|m| format!(" for model `{m}`")).unwrap_or_default())]
    NoWorker {
        /// The model asked for, if any.
        model: Option<String>,
    },
    /// The worker failed before sending a response.
    #[error("worker {worker} failed: {reason}")]
    BadGateway {
        /// The worker's URL.
        worker: String,
        /// What failed.
        reason: String,
    },
    /// The worker sent no response headers within the request timeout.
    #[error("worker {worker} did not answer within {}s", after.as_secs())]
    GatewayTimeout {
        /// The worker's URL.
        worker: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The router is shutting down and could not finish this response in time.
    #[error("the router is shutting down")]
    ShuttingDown,
    /// Admission control refused the request (over capacity or rate).
    #[error("the router is at capacity: {reason}; retry after {}s", retry_after.as_secs())]
    Overloaded {
        /// Why.
        reason: String,
        /// When trying again makes sense.
        retry_after: Duration,
    },
    /// The request lacks the key a guarded route needs, or gives a wrong one.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The client's key could not be checked: no key validation URL answered. The key is
    /// neither accepted nor refused.
    #[error("the API key cannot be checked now: the key validation service is unavailable; retry after {}s", retry_after.as_secs())]
    KeyCheckUnavailable {
        /// When trying again makes sense.
        retry_after: Duration,
    },
    /// The client may not call this route from where it is.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The request conflicts with the current state (a worker already present).
    #[error("{0}")]
    Conflict(String),
    /// No worker has this id or URL.
    #[error("no worker with id or URL '{0}'")]
    UnknownWorker(String),
    /// A fleet-wide request (LoRA load, cache reset, sleep) did not succeed on every worker.
    #[error("{message}")]
    Fleetwide {
        /// The merged status: 502 when a worker failed or answered 5xx, else the first
        /// worker's error status.
        status: StatusCode,
        /// Each worker's part.
        message: String,
    },
    /// A router defect; logged, answered 500.
    #[error("internal router error: {0}")]
    Internal(String),
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: u16,
}

impl ApiError {
    /// A 400 naming the field at fault.
    pub fn bad_request(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param,
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::UnknownModel { .. } | Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::NoWorker { .. } | Self::ShuttingDown | Self::KeyCheckUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::UnknownWorker(_) => StatusCode::NOT_FOUND,
            Self::Fleetwide { status, .. } => *status,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "BadRequestError",
            Self::PayloadTooLarge { .. } => "RequestEntityTooLargeError",
            Self::RequestTimeout(_) => "RequestTimeoutError",
            Self::UnknownModel { .. } | Self::NotFound { .. } => "NotFoundError",
            Self::MethodNotAllowed { .. } => "MethodNotAllowedError",
            Self::NoWorker { .. } | Self::ShuttingDown | Self::KeyCheckUnavailable { .. } => {
                "ServiceUnavailableError"
            }
            Self::BadGateway { .. } => "BadGatewayError",
            Self::GatewayTimeout { .. } => "GatewayTimeoutError",
            Self::Overloaded { .. } => "RateLimitError",
            Self::Unauthorized(_) => "AuthenticationError",
            Self::Forbidden(_) => "PermissionDeniedError",
            Self::Conflict(_) => "ConflictError",
            Self::UnknownWorker(_) => "NotFoundError",
            Self::Fleetwide { .. } => "FleetwideRequestError",
            Self::Internal(_) => "InternalServerError",
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            Self::BadRequest { param, .. } => *param,
            Self::UnknownModel { .. } => Some("model"),
            _ => None,
        }
    }

    /// The error as the JSON body clients receive.
    pub fn to_json(&self) -> Bytes {
        let envelope = Envelope {
            error: Body {
                message: self.to_string(),
                kind: self.kind(),
                param: self.param(),
                code: self.status().as_u16(),
            },
        };
        serde_json::to_vec(&envelope)
            .map(Bytes::from)
            .unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self, Self::Internal(_)) {
            tracing::error!(error = %self, "internal error");
        }
        let mut response = (self.status(), self.to_json()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self {
            Self::Overloaded { retry_after, .. } | Self::KeyCheckUnavailable { retry_after } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after.as_secs().max(1)),
                );
            }
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of the body is not read: the connection cannot carry another request.
            Self::RequestTimeout(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(e: &ApiError) -> serde_json::Value {
        serde_json::from_slice(&e.to_json()).unwrap()
    }

    #[test]
    fn errors_have_the_openai_shape() {
        let e = ApiError::UnknownModel {
            model: "x".into(),
            served: vec!["a".into(), "b".into()],
        };
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let v = json(&e);
        assert_eq!(
            v["error"]["message"],
            "The model `x` does not exist. Models served: a, b"
        );
        assert_eq!(v["error"]["type"], "NotFoundError");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["code"], 404);

        let v = json(&ApiError::NoWorker { model: None });
        assert_eq!(v["error"]["param"], serde_json::Value::Null);
        assert_eq!(v["error"]["code"], 503);
    }

    #[test]
    fn each_error_has_its_status() {
        let cases = [
            (ApiError::bad_request("x", None), 400),
            (ApiError::PayloadTooLarge { limit: 1 }, 413),
            (
                ApiError::NoWorker {
                    model: Some("m".into()),
                },
                503,
            ),
            (
                ApiError::BadGateway {
                    worker: "w".into(),
                    reason: "reset".into(),
                },
                502,
            ),
            (
                ApiError::GatewayTimeout {
                    worker: "w".into(),
                    after: Duration::from_secs(1),
                },
                504,
            ),
        ];
        for (e, status) in cases {
            assert_eq!(e.status().as_u16(), status, "{e}");
            assert_eq!(json(&e)["error"]["code"], status);
        }
    }
}
