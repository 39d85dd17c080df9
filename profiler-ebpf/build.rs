use which::which;

// Rebuild when bpf-linker changes: it is the linker of the BPF target.
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
