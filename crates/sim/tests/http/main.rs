//! End-to-end tests of the simulated server over real loopback HTTP.

mod support;

mod dp;
mod faults;
mod inference;
mod lifecycle;
mod pd;
mod render;
mod streaming;
