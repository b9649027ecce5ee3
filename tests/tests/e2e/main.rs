//! End-to-end tests: each starts the real `puppet-server` binary on a free loopback port.

mod accounts;
mod blob_crash;
mod bot;
mod compat;
mod contract;
mod discovery_node;
mod durability;
mod durability_mock;
mod events;
mod files;
mod foundation;
mod hostile;
mod http;
mod ilink;
mod mock;
mod mqtt;
mod official_account;
mod onebot;
mod ops;
mod outbound;
mod polyglot;
mod puppetctl;
mod python_auth;
mod upstream;
mod web;
