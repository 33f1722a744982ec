//! Tests that need a process of their own: they install process-wide state (the global tracer
//! provider, a global tracing subscriber) or read process-wide counters and memory use.
//!
//! Nextest runs every test in its own process; plain `cargo test` runs all the tests of a test
//! binary — now one per crate — as threads of one process. [`in_own_process`] makes the second
//! case behave like the first for the tests that need it: the test runs itself again as the only
//! test of a child process and passes or fails with it.

/// Set in the child that [`in_own_process`] starts.
const CHILD: &str = "CAREHUB_TEST_OWN_PROCESS";

/// Whether this test has the process to itself (nextest, or the child of [`in_own_process`]).
pub fn has_own_process() -> bool {
    std::env::var("NEXTEST_EXECUTION_MODE").as_deref() == Ok("process-per-test")
        || std::env::var_os(CHILD).is_some()
}

/// `true`: go on, this test has its own process. `false`: the test `test_path` (its full name
/// in the binary, `module::test_fn`) has just run — and passed — in a child process; return.
///
/// ```ignore
/// #[tokio::test]
/// async fn spans_reach_the_collector() {
///     if !carehub_testkit::process::in_own_process("trace_propagation::spans_reach_the_collector") {
///         return;
///     }
///     // ... telemetry::init(...) ...
/// }
/// ```
pub fn in_own_process(test_path: &str) -> bool {
    if has_own_process() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .args([test_path, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("starting the test binary again");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{test_path}, run in a process of its own, failed:\n{text}"
    );
    // The filter must have matched exactly this test (a renamed test would match nothing).
    assert!(
        text.contains("1 passed"),
        "{test_path} did not run in the child process:\n{text}"
    );
    false
}
