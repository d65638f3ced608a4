//! Compiles namm.proto with protox (pure Rust), so a build needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=namm.proto");
    let fds = protox::compile(["namm.proto"], ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
