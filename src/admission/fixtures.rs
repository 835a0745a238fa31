//! Shared inputs of the admission tests: the example role mapping and the test identities.

use crate::identity::{Identity, RoleMapping};

pub const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
pub const OPERATOR: &str = "system:serviceaccount:dvo-system:dvo-operator";

pub fn mapping() -> RoleMapping {
    crate::yaml::from_str(include_str!("../../examples/role-mapping.yaml")).unwrap()
}

pub fn who(name: &str) -> Identity {
    let (user, group) = match name {
        "dana" => ("dev-dana", "a7c4e2b9-1d3f-4a6b-8e5c-9f0a1b2c3d4e"),
        "rosa" => ("rosa-release", "3f2a8c1e-5b7d-4e9a-a1c2-0d4e6f8b9a10"),
        "raj" => ("raj-release", "3f2a8c1e-5b7d-4e9a-a1c2-0d4e6f8b9a10"),
        "alice" => ("alice-admin", "dvo-admins"),
        "vera" => ("vera-viewer", "dvo-viewers"),
        "ci" => (
            "system:serviceaccount:ci:deployer",
            "system:serviceaccounts",
        ),
        "operator" => (OPERATOR, "system:serviceaccounts"),
        other => panic!("{other}"),
    };
    Identity {
        username: user.into(),
        uid: Some(format!("uid-{name}")),
        groups: vec![group.into()],
    }
}
