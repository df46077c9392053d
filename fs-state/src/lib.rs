//! The replicated file state machine of bftnfs: every replica applies the same ordered
//! NFSv3 operations to its own backing directory and must produce byte-identical
//! replies and identical backing trees (DESIGN.md, "The file state machine").

pub mod ops;

pub use ops::*;
