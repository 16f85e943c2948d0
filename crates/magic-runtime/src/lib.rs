//! The Magic Runtime server library.
