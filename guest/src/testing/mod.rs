//! Test-only helpers (feature `test-utils`): drivers and devices that misbehave on purpose.

pub mod fake_device;
pub mod raw_driver;
