//! Generates bindings to libnuma's `numa.h` and links libnuma statically, so that the binaries
//! carried to a GPU host do not depend on a libnuma being installed there.

use std::env;
use std::path::PathBuf;

const HEADER: &str = "numa.h";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBNUMA_INCLUDE_DIR");
    let mut builder = bindgen::Builder::default()
        .header_contents("wrapper.h", &format!("#include <{HEADER}>\n"))
        .allowlist_function("numa_(available|max_node|num_configured_nodes|node_size64|alloc_onnode|free|tonode_memory|node_of_cpu|num_configured_cpus)")
        .layout_tests(false);
    if let Ok(dir) = env::var("LIBNUMA_INCLUDE_DIR") {
        builder = builder.clang_arg(format!("-I{dir}"));
    }
    let bindings = builder.generate().unwrap_or_else(|e| {
        panic!(
            "platform: bindgen could not read <{HEADER}> ({e}). libnuma-dev and libclang are \
             needed to build tandem: run `sudo bash ci/setup.sh` (or set LIBNUMA_INCLUDE_DIR)."
        )
    });
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("numa_sys.rs");
    bindings.write_to_file(&out).expect("write numa bindings");

    // Static first: the GPU host may have no libnuma.so.1.
    let static_lib = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
    ]
    .iter()
    .find(|d| PathBuf::from(d).join("libnuma.a").exists());
    match static_lib {
        Some(dir) => {
            println!("cargo:rustc-link-search=native={dir}");
            println!("cargo:rustc-link-lib=static=numa");
        }
        None => println!("cargo:rustc-link-lib=dylib=numa"),
    }
}
