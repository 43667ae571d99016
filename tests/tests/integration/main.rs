//! End-to-end tests of Coalition Sync: real processes, real stores on disk.

mod cli;
mod crash;
mod merge;
mod support;
mod two_devices;
