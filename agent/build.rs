//! Embeds the BPF object built by `cargo xtask build-ebpf`. Without it the build stops with a
//! message that says what to run, instead of a cryptic `include_bytes!` error.
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let target_dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| manifest.join("..").join("target"));
    let obj = target_dir
        .join("bpfel-unknown-none")
        .join("bpf")
        .join("sockmesh-ebpf");
    println!("cargo:rerun-if-changed={}", obj.display());
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    if !obj.exists() {
        eprintln!();
        eprintln!("error: the BPF object {} is missing.", obj.display());
        eprintln!("       Run `cargo xtask build-ebpf` first (or `cargo xtask test` / `cargo xtask run`,");
        eprintln!("       which build it for you).");
        eprintln!();
        std::process::exit(1);
    }
    println!("cargo:rustc-env=SOCKMESH_EBPF_OBJECT={}", obj.display());
}
