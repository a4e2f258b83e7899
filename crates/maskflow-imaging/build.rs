//! Compiles the small C shim over the system libjpeg-turbo (`csrc/jpeg_scaled.c`, used for JPEG
//! decoding at a reduced DCT scale) and links libjpeg. Debian: `libjpeg62-turbo-dev`.

fn main() {
    println!("cargo:rerun-if-changed=csrc/jpeg_scaled.c");
    let jpeg = pkg_config::Config::new().probe("libjpeg").unwrap_or_else(|e| {
        panic!("libjpeg (libjpeg-turbo) development files not found ({e}); install libjpeg62-turbo-dev")
    });
    let mut build = cc::Build::new();
    build.file("csrc/jpeg_scaled.c").opt_level(2).warnings(true);
    for dir in &jpeg.include_paths {
        build.include(dir);
    }
    build.compile("maskflow_jpeg_scaled");
}
