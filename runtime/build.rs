//! Links OpenBLAS, the cpu backend's library for f32 matrix products (scripts/setup.sh
//! installs it: Debian's `libopenblas-dev`).

fn main() {
    if let Err(e) = pkg_config::Config::new()
        .atleast_version("0.3")
        .probe("openblas")
    {
        panic!(
            "zambac-runtime needs OpenBLAS ≥ 0.3 for its matrix products, and pkg-config \
             did not find it: {e}\nRun ./scripts/setup.sh, or `apt install libopenblas-dev`."
        );
    }
}
