//! The `carehub` binary over the one list of services (src/services.rs).

fn main() -> std::process::ExitCode {
    carehub::main(carehub::services::SERVICES)
}
