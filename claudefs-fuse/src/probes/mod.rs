//! The probe loader and what it reads out of the kernel.

pub mod hist;
pub mod mountinfo;
pub mod opcodes;
pub mod snapshot;
