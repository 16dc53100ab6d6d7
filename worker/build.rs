//! Bakes libtorch's directory into the worker binary and its tests as an rpath, so nothing needs LD_LIBRARY_PATH.
//! With the `cuda` feature, forces libtorch (and so libtorch_cuda) to be linked even though no symbol of it is
//! referenced directly (rustc links with --as-needed).
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
