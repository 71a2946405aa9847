//! Compiles the XDP program (src/bpf/pd_xdp.c) with clang for the BPF target; the
//! object is embedded in the crate. `cargo xtask setup` installs clang and libbpf-dev;
//! `CLANG=/path/to/clang` picks another compiler.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "src/bpf/pd_xdp.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-changed=src/bpf/pd_xdp.h");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("pd_xdp.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let target = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = match target.as_str() {
        "aarch64" => "/usr/include/aarch64-linux-gnu",
        _ => "/usr/include/x86_64-linux-gnu",
    };
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I{multiarch}"))
        .args(["-c", src, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} could not compile {src} ({s}); see its messages above"),
        Err(e) => panic!(
            "cannot run {clang} ({e}): the XDP program is built with clang and libbpf's \
             headers; `cargo xtask setup` (as root) installs them \
             (apt-get install clang libbpf-dev)"
        ),
    }
}
