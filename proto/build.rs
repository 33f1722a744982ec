use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc, so that a fresh machine needs no system package.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let well_known = protoc_bin_vendored::include_path()?;

    let protos = [
        "carehub/common/v1/types.proto",
        "carehub/common/v1/errors.proto",
        "carehub/identity/v1/identity.proto",
        "carehub/scheduling/v1/scheduling.proto",
        "carehub/common/v1/events.proto",
        "carehub/audit/v1/audit.proto",
        "carehub/records/v1/records.proto",
        "carehub/messaging/v1/messaging.proto",
        "carehub/billing/v1/billing.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Maps as BTreeMap: a HashMap encodes its entries in a random order, so one request
        // would encode differently twice, and the idempotency fingerprint of a retry (a hash
        // of the encoded request) would not match the first call's.
        .btree_map(".")
        .file_descriptor_set_path(out.join("carehub_descriptor.bin"))
        .compile_protos(
            &protos.map(PathBuf::from),
            &[PathBuf::from("."), well_known],
        )?;
    Ok(())
}
