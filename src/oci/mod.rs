//! OCI image layouts: the documents (config, manifest, index), their
//! canonical JSON, writing a layout atomically, and verifying one.

pub mod digest;
pub mod gc;
pub mod image;
pub mod json;
pub mod layout;
pub mod previous;
pub mod temp;
pub mod verify;

pub use digest::{Digest, DigestWriter};
