//! Records' integration tests: one test binary, one module per area. Each test runs a real
//! identity and a real records (real Postgres, real mTLS on one dev CA), started by the test
//! kit through [`common`]; records verifies identity's tokens and looks users up there.

mod common;

mod access_log;
mod aggregates;
mod amendments;
mod authz;
mod care_team;
mod chart;
mod documents;
mod erasure;
mod fhir;
mod intake;
mod notes;
mod sensitivity;
