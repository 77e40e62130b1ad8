//! Shared by the dashboard and rule checks.
#![allow(dead_code)]
pub mod catalogue;
pub mod check;
pub mod promql;
