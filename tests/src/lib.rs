//! End-to-end tests of Coalition Sync live in `tests/integration`.
