//! OCI image layouts: the documents (config, manifest, index), their
//! canonical JSON, writing a layout atomically, and verifying one.

pub mod digest;

pub use digest::{Digest, DigestWriter};
