//! OCI image layouts: the documents (config, manifest, index), their
//! canonical JSON, writing a layout atomically, and verifying one.

pub mod digest;
pub mod image;
pub mod json;
pub mod layout;
pub mod previous;
pub mod verify;

pub use digest::{Digest, DigestWriter};
