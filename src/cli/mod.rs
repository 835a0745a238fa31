//! The offline commands: `dvo evaluate` and `dvo test`, and manifest loading.

pub mod evaluate;
pub mod load;
pub mod test_runner;
