//! The offline commands: `dvo evaluate`, `dvo test`, `dvo audit verify`, and manifest loading.

pub mod audit;
pub mod evaluate;
pub mod load;
pub mod test_runner;
