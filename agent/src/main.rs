fn main() {
    println!("sockmesh {} ({} byte BPF object)", env!("CARGO_PKG_VERSION"), sockmesh::EBPF_OBJECT.len());
}
