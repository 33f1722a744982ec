//! Records' rules, free of I/O: who reaches a chart and what they may do there (`access`),
//! and what a chart entry may hold (`content`).

pub mod access;
pub mod content;
