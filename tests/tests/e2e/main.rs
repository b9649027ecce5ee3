//! End-to-end tests: each starts the real `puppet-server` binary on a free loopback port.

mod contract;
mod foundation;
mod python_auth;
