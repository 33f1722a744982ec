//! What the binary's tests share: free ports and a plain HTTP GET for the admin port (from the
//! test kit), and a command's output as text for assertion messages.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;

pub use carehub_testkit::grpc::{free_port, http_get_raw as http_get};

/// stdout followed by stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
