//! The one place that turns failures into HTTP statuses and vLLM's error JSON:
//! `{"error": {"message", "type", "param", "code"}}`.

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{StatusCode, header};
use serde::Serialize;

/// An error answer in vLLM's shape.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: Cow<'static, str>,
    param: Option<&'static str>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'static str>,
    code: u16,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn invalid_json(err: &serde_json::Error) -> Self {
        Self::bad_request(format!("Invalid request body: {err}"))
    }

    pub(crate) fn model_not_found(model: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist.").into(),
            param: Some("model"),
        }
    }

    /// A prompt of `tokens` tokens over the model's context length, in vLLM's words.
    pub(crate) fn context_too_long(max_model_len: u32, tokens: usize) -> Self {
        Self::bad_request(format!(
            "This model's maximum context length is {max_model_len} tokens. However, your request has {tokens} input tokens."
        ))
    }

    /// An error asked for by `X-Return-Error` or drawn by `error_rate`.
    pub(crate) fn injected(status: StatusCode) -> Self {
        Self::new(status, "Injected error from the simulated vLLM server.")
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 422 => "BadRequestError",
            401 => "AuthenticationError",
            403 => "PermissionDeniedError",
            404 => "NotFoundError",
            405 => "MethodNotAllowedError",
            409 => "ConflictError",
            429 => "RateLimitError",
            503 => "ServiceUnavailableError",
            500..=599 => "InternalServerError",
            _ => "Error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let envelope = Envelope {
            error: Body {
                message: &self.message,
                kind: self.kind(),
                param: self.param,
                code: self.status.as_u16(),
            },
        };
        let body = serde_json::to_vec(&envelope).unwrap_or_default();
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            Bytes::from(body),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn not_found_shape() {
        let resp = ApiError::model_not_found("x").into_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"message": "The model `x` does not exist.",
                "type": "NotFoundError", "param": "model", "code": 404}})
        );
    }
}
