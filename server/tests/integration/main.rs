//! Integration tests of the relay: the router through `tower::ServiceExt::oneshot`, and real
//! sockets on 127.0.0.1 with in-process sync clients.

mod api;
mod common;
mod sync;
