//! The mount layer's error: a failure before or while mounting.

/// A failure before or while mounting, worded for the person at the
/// terminal: one line naming the problem and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MountError(pub String);
