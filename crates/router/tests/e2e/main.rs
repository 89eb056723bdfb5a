//! End-to-end tests: the router and simulated vLLM workers on loopback ports, real HTTP.

#![allow(clippy::unwrap_used)]

mod support;

mod admin;
mod auth;
mod catchall;
mod dashboard;
mod errors;
mod hardening;
mod https;
mod info;
mod kube;
mod leaks;
mod live;
mod logs;
mod models;
mod nginx;
mod observability;
mod pd;
mod policies;
mod processes;
mod proxy;
mod reload;
mod resilience;
mod smg;
mod streaming;
mod toml_router;
mod traces;
mod uploads;
mod vllm_router_readme;
