//! Spans recorded for export. A span starts when it is made and ends when it is dropped, so it
//! ends with whatever holds it: a failed attempt at its failure, an answer's attempt and the
//! request's span with the response body. A span that records nothing (export off, or a trace
//! the client did not sample) is an empty `Option`: no allocation, every call a no-op.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use super::otlp::Exporter;
use super::trace::{SpanId, TraceContext, TraceId};

use crate::sync::Mutex;

/// The role of a span in its exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The router serving a client's request.
    Server,
    /// The router calling a worker.
    Client,
}

/// An attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Text.
    Str(Cow<'static, str>),
    /// A whole number.
    Int(i64),
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Self::Str(Cow::Borrowed(s))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::Str(Cow::Owned(s))
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}

/// A span as exported.
#[derive(Clone, Debug)]
pub struct SpanData {
    /// The trace.
    pub trace_id: TraceId,
    /// This span.
    pub span_id: SpanId,
    /// The span this one is a child of.
    pub parent: Option<SpanId>,
    /// The parent is the client's (another process's) span.
    pub remote_parent: bool,
    /// What the span is, e.g. `POST /v1/chat/completions`.
    pub name: String,
    /// Server or client.
    pub kind: Kind,
    /// When it started, on the monotonic clock (turned into wall-clock time for export).
    pub start: Instant,
    /// When it ended.
    pub end: Instant,
    /// Attributes, in the order set; a key set twice keeps its last value.
    pub attributes: Vec<(&'static str, Value)>,
    /// Set when the operation failed: what went wrong.
    pub error: Option<String>,
}

struct Open {
    data: SpanData,
    exporter: Exporter,
}

/// A span that ends (and is queued for export) when dropped.
pub struct Span(Option<Box<Open>>);

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(open) => write!(f, "Span({})", open.data.span_id),
            None => f.write_str("Span(off)"),
        }
    }
}

impl Span {
    fn start(
        exporter: Exporter,
        (trace_id, span_id): (TraceId, SpanId),
        parent: Option<SpanId>,
        remote_parent: bool,
        kind: Kind,
        name: String,
    ) -> Self {
        let now = Instant::now();
        Self(Some(Box::new(Open {
            data: SpanData {
                trace_id,
                span_id,
                parent,
                remote_parent,
                name,
                kind,
                start: now,
                end: now,
                attributes: Vec::with_capacity(8),
                error: None,
            },
            exporter,
        })))
    }

    /// A span that records nothing.
    pub fn off() -> Self {
        Self(None)
    }

    /// Whether anything is recorded (worth building attribute values for).
    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    /// The span's id, when it records.
    pub fn span_id(&self) -> Option<SpanId> {
        self.0.as_ref().map(|open| open.data.span_id)
    }

    /// Set an attribute.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(open) = &mut self.0 {
            let attributes = &mut open.data.attributes;
            let value = value.into();
            match attributes.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => attributes.push((key, value)),
            }
        }
    }

    /// Mark the operation failed, with what went wrong (the first failure is kept).
    pub fn fail(&mut self, message: impl Into<String>) {
        if let Some(open) = &mut self.0
            && open.data.error.is_none()
        {
            open.data.error = Some(message.into());
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(open) = self.0.take() {
            let Open { mut data, exporter } = *open;
            data.end = Instant::now();
            exporter.submit(data);
        }
    }
}

struct Shared {
    exporter: Exporter,
    span: Mutex<Span>,
}

/// The request's server span, held by the handler and by the response body: it ends when the
/// last holder lets go, so a streamed answer's span lasts to the end of the stream. It knows
/// its trace context whether or not it records.
#[derive(Clone)]
pub struct RequestSpan {
    trace: TraceContext,
    recording: Option<Arc<Shared>>,
}

impl std::fmt::Debug for RequestSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.is_recording() { "" } else { ", off" };
        write!(
            f,
            "RequestSpan({}-{}{state})",
            self.trace.trace_id(),
            self.trace.span_id()
        )
    }
}

impl RequestSpan {
    /// The server span of a request in `trace`, recorded when `exporter` is given and the
    /// trace is sampled; its id is the context's own span id.
    pub fn start(
        exporter: Option<&Exporter>,
        trace: TraceContext,
        name: impl FnOnce() -> String,
    ) -> Self {
        let Some(exporter) = exporter.filter(|_| trace.is_sampled()) else {
            return Self {
                trace,
                recording: None,
            };
        };
        let span = Span::start(
            exporter.clone(),
            (trace.trace_id(), trace.span_id()),
            trace.remote_parent(),
            trace.is_continued(),
            Kind::Server,
            name(),
        );
        Self {
            trace,
            recording: Some(Arc::new(Shared {
                exporter: exporter.clone(),
                span: Mutex::new(span),
            })),
        }
    }

    /// The request's trace context.
    pub fn trace(&self) -> &TraceContext {
        &self.trace
    }

    /// Whether anything is recorded.
    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    /// Set an attribute.
    pub fn set(&self, key: &'static str, value: impl Into<Value>) {
        if let Some(shared) = &self.recording {
            shared.span.lock().set(key, value);
        }
    }

    /// Mark the request failed, with what went wrong (the first failure is kept).
    pub fn fail(&self, message: impl Into<String>) {
        if let Some(shared) = &self.recording {
            shared.span.lock().fail(message);
        }
    }

    /// A child client span, or an empty one when this span records nothing.
    pub fn child(&self, name: impl FnOnce() -> String) -> Span {
        match &self.recording {
            Some(shared) => Span::start(
                shared.exporter.clone(),
                (self.trace.trace_id(), SpanId::random()),
                Some(self.trace.span_id()),
                false,
                Kind::Client,
                name(),
            ),
            None => Span::off(),
        }
    }
}
