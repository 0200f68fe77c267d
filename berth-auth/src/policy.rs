//! Roles, actions and the one function that says what an identity may do to a repository.

use std::collections::{BTreeMap, BTreeSet};

use crate::LIBRARY;

/// A set of repository actions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const PULL: Actions = Actions(1);
    pub const PUSH: Actions = Actions(2);
    pub const DELETE: Actions = Actions(4);
    pub const ALL: Actions = Actions(7);

    pub fn contains(self, other: Actions) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    pub fn intersect(self, other: Actions) -> Actions {
        Actions(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The Docker token names, in the order clients write them.
    pub fn names(self) -> Vec<&'static str> {
        [
            (Actions::PULL, "pull"),
            (Actions::PUSH, "push"),
            (Actions::DELETE, "delete"),
        ]
        .into_iter()
        .filter(|(a, _)| self.contains(*a))
        .map(|(_, n)| n)
        .collect()
    }

    /// Parses action names as they appear in token scopes; `*` means all, unknown names
    /// grant nothing.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Actions {
        names.into_iter().fold(Actions::NONE, |acc, n| {
            acc.union(match n.trim() {
                "pull" => Actions::PULL,
                "push" => Actions::PUSH,
                "delete" => Actions::DELETE,
                "*" => Actions::ALL,
                _ => Actions::NONE,
            })
        })
    }
}

/// A member's role in a tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Pull.
    Reader,
    /// Pull and push.
    Developer,
    /// Pull, push and delete.
    Maintainer,
    /// Everything a maintainer does, plus managing the tenant's members and robots.
    Owner,
}

impl Role {
    pub fn actions(self) -> Actions {
        match self {
            Role::Reader => Actions::PULL,
            Role::Developer => Actions::PULL.union(Actions::PUSH),
            Role::Maintainer | Role::Owner => Actions::ALL,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Developer => "developer",
            Role::Maintainer => "maintainer",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "reader" => Role::Reader,
            "developer" => Role::Developer,
            "maintainer" => Role::Maintainer,
            "owner" => Role::Owner,
            _ => return None,
        })
    }
}

/// Who may pull through a pull-through cache's tenant (the tenant named after the
/// upstream, `docker.io`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CachePull {
    /// Anyone, without credentials: the tenant is public.
    Anonymous,
    /// Any logged-in user or robot.
    #[default]
    Authenticated,
    /// Members of the tenant (any role) and admins, like an ordinary private tenant.
    Members,
}

impl CachePull {
    pub fn as_str(self) -> &'static str {
        match self {
            CachePull::Anonymous => "anonymous",
            CachePull::Authenticated => "authenticated",
            CachePull::Members => "members",
        }
    }
}

/// The tenant that owns a repository: its first path segment, or `library` for a
/// single-segment name.
pub fn tenant_of(repo: &str) -> &str {
    match repo.split_once('/') {
        Some((t, _)) => t,
        None => LIBRARY,
    }
}

/// What a robot account was created for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RobotScope {
    pub tenant: String,
    pub actions: Actions,
    /// Repository patterns relative to the tenant (`app`, `tools/*`); empty means every
    /// repository of the tenant. `*` matches any run of characters, `/` included.
    pub repositories: Vec<String>,
}

impl RobotScope {
    fn covers(&self, repo: &str) -> bool {
        if tenant_of(repo) != self.tenant {
            return false;
        }
        if self.repositories.is_empty() {
            return true;
        }
        let rel = match repo.split_once('/') {
            Some((_, rest)) => rest,
            None => repo,
        };
        self.repositories.iter().any(|p| glob(p, rel))
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Position of the last `*` and where in the text it started matching.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Everything one identity may do, loaded when it logs in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// A global admin: every action on every repository, and all management.
    pub admin: bool,
    /// The identity's role in each tenant it belongs to.
    pub roles: BTreeMap<String, Role>,
    /// Set for a robot account, which has exactly its scope and no roles.
    pub robot: Option<RobotScope>,
    /// Tenants anyone may pull from.
    pub public: BTreeSet<String>,
    /// Tenants every logged-in identity may pull from (pull-through caches with
    /// `pull = "authenticated"`); empty for the anonymous caller.
    pub authenticated_pull: BTreeSet<String>,
    /// Pull-through cache tenants: their content is written by the cache only, so nobody,
    /// admins included, gets more than pull there.
    pub cached: BTreeSet<String>,
}

impl Grants {
    /// What this identity may do to `repo`.
    pub fn on_repository(&self, repo: &str) -> Actions {
        let tenant = tenant_of(repo);
        let a = self.granted(repo, tenant);
        if self.cached.contains(tenant) {
            a.intersect(Actions::PULL)
        } else {
            a
        }
    }

    fn granted(&self, repo: &str, tenant: &str) -> Actions {
        if self.admin {
            return Actions::ALL;
        }
        let mut a = Actions::NONE;
        if self.public.contains(tenant) || self.authenticated_pull.contains(tenant) {
            a = a.union(Actions::PULL);
        }
        if let Some(role) = self.roles.get(tenant) {
            a = a.union(role.actions());
        }
        if let Some(robot) = &self.robot
            && robot.covers(repo)
        {
            a = a.union(robot.actions);
        }
        a
    }

    /// May this identity manage the tenant's members and robots?
    pub fn manages(&self, tenant: &str) -> bool {
        self.admin || self.roles.get(tenant) == Some(&Role::Owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants() {
        assert_eq!(tenant_of("alpine"), "library");
        assert_eq!(tenant_of("team-a/app"), "team-a");
        assert_eq!(tenant_of("team-a/x/y"), "team-a");
    }

    #[test]
    fn globs() {
        assert!(glob("*", "anything/at/all"));
        assert!(glob("tools/*", "tools/x"));
        assert!(!glob("tools/*", "tool/x"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("app", "app"));
        assert!(!glob("app", "app2"));
        assert!(glob("", ""));
    }

    #[test]
    fn robot_scope_stays_in_its_tenant() {
        let g = Grants {
            robot: Some(RobotScope {
                tenant: "team-a".into(),
                actions: Actions::PULL,
                repositories: vec!["app".into()],
            }),
            ..Grants::default()
        };
        assert_eq!(g.on_repository("team-a/app"), Actions::PULL);
        assert_eq!(g.on_repository("team-a/other"), Actions::NONE);
        assert_eq!(g.on_repository("team-b/app"), Actions::NONE);
        assert_eq!(g.on_repository("app"), Actions::NONE);
    }

    #[test]
    fn cache_tenants_are_pull_only_and_may_be_open_to_every_login() {
        let cached: BTreeSet<String> = ["docker.io".to_owned()].into();
        let admin = Grants {
            admin: true,
            cached: cached.clone(),
            ..Grants::default()
        };
        assert_eq!(
            admin.on_repository("docker.io/library/nginx"),
            Actions::PULL
        );
        assert_eq!(admin.on_repository("team/app"), Actions::ALL);
        let login = Grants {
            authenticated_pull: cached.clone(),
            cached: cached.clone(),
            ..Grants::default()
        };
        assert_eq!(
            login.on_repository("docker.io/library/nginx"),
            Actions::PULL
        );
        assert_eq!(login.on_repository("ghcr.io/x/y"), Actions::NONE);
        let owner = Grants {
            roles: [("docker.io".to_owned(), Role::Owner)].into(),
            cached,
            ..Grants::default()
        };
        assert_eq!(
            owner.on_repository("docker.io/library/nginx"),
            Actions::PULL
        );
        assert_eq!(
            Grants::default().on_repository("docker.io/x"),
            Actions::NONE
        );
    }

    #[test]
    fn action_names() {
        assert_eq!(
            Actions::from_names(["pull", "push"]).names(),
            ["pull", "push"]
        );
        assert_eq!(Actions::from_names(["*"]), Actions::ALL);
        assert_eq!(Actions::from_names(["bogus"]), Actions::NONE);
    }
}
