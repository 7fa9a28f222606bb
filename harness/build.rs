//! The binary embeds `scenarios/` (see `src/layout.rs`): rebuild when it changes.
fn main() {
    println!("cargo:rerun-if-changed=../scenarios");
}
