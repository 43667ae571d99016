//! End-to-end tests of Coalition Sync: real processes, real stores on disk.

mod backpressure;
mod bad_input;
mod bad_links;
mod cli;
mod crash;
mod dashboard;
mod fuzz_corpus;
mod js_interop;
mod merge;
mod refusals;
mod relay_auth;
mod relay_crash;
mod relay_fanout;
mod relay_offline;
mod support;
mod two_devices;
