//! The migrations are embedded in the binary (`embed_migrations!`), which
//! tracks the files it read but not the folders: without this, a new
//! migration would not rebuild the crate and the binary would lack it.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
