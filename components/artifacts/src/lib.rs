//! The workspace's components as WebAssembly bytes, built by `build.rs`.

include!(concat!(env!("OUT_DIR"), "/components.rs"));
