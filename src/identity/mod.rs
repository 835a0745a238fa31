//! Who someone is and what they may do: the seed's roles and permissions, the role mapping from
//! Kubernetes users, groups and service accounts to roles, and permission checks.
//!
//! Everything here is pure: identities come from the API server (admission requests) or the
//! command line, never from this module.

mod access;
pub mod entra;
mod mapping;
mod roles;
pub mod stamp;
#[doc(hidden)]
pub mod testkit;

pub use access::{Check, Tier};
pub use mapping::{Identity, RoleMapping, Subject};
pub use roles::{Permission, Role};
