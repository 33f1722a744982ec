//! Records' rules, free of I/O: who reaches a chart and what they may do there (`access`),
//! what a chart entry may hold (`content`), and who sees labelled entries (`sensitivity`).

pub mod access;
pub mod aggregate;
pub mod amendment;
pub mod content;
pub mod sensitivity;
