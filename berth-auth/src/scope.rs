//! Token scopes: Docker's `repository:team-a/app:pull,push` and `registry:catalog:*`, and
//! Berth's own management scope `berth:api:*`.

use crate::Actions;

/// The scope a token needs to be accepted by the management API (`/api/v1`). Its own
/// resource type, so no registry client asks for it by accident: Docker, podman, skopeo
/// and containerd only ever ask for `repository` (or `repository(plugin)`) and
/// `registry` scopes.
pub const MANAGEMENT_SCOPE: &str = "berth:api:*";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScopeKind {
    Repository,
    Registry,
    /// `berth:api:*`: the management API, with the subject's current rights.
    Management,
}

impl ScopeKind {
    /// The `type` of an `access` claim entry.
    pub fn as_str(&self) -> &'static str {
        match self {
            ScopeKind::Repository => "repository",
            ScopeKind::Registry => "registry",
            ScopeKind::Management => "berth",
        }
    }
}

/// One requested scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub kind: ScopeKind,
    pub name: String,
    pub actions: Vec<String>,
}

/// Why a requested scope was refused. A scope Berth cannot read is an error rather than
/// something to skip: a token silently missing what was asked for is how a caller ends up
/// using one that means something else than it believes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error(
        "scope {0:.100?}: unknown resource type; Berth grants repository, registry and {MANAGEMENT_SCOPE} scopes"
    )]
    UnknownType(String),
    #[error("scope {0:.100?} is not type:name:actions")]
    Malformed(String),
    #[error("scope {0:.100?}: the only berth scope is {MANAGEMENT_SCOPE}")]
    UnknownManagement(String),
}

impl Scope {
    /// Parses one scope. The name sits between the first and the last colon, so names with
    /// a port-like colon still parse; `repository(plugin)` is treated as `repository`.
    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        let malformed = || ScopeError::Malformed(s.to_owned());
        let (kind, rest) = s.split_once(':').ok_or_else(malformed)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(malformed)?;
        let kind = match kind.split_once('(').map_or(kind, |(k, _)| k) {
            "repository" => ScopeKind::Repository,
            "registry" => ScopeKind::Registry,
            "berth" => ScopeKind::Management,
            _ => return Err(ScopeError::UnknownType(s.to_owned())),
        };
        if name.is_empty() || name.len() > 512 {
            return Err(malformed());
        }
        if kind == ScopeKind::Management && (name != "api" || actions != "*") {
            return Err(ScopeError::UnknownManagement(s.to_owned()));
        }
        Ok(Scope {
            kind,
            name: name.to_owned(),
            actions: actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }

    /// Every scope in a list of `scope` parameters, each of which may hold several
    /// space-separated scopes; the first that cannot be read is the error.
    pub fn parse_all<'a>(
        params: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<Scope>, ScopeError> {
        params
            .into_iter()
            .flat_map(str::split_whitespace)
            .map(Scope::parse)
            .collect()
    }

    pub fn repository_actions(&self) -> Actions {
        Actions::from_names(self.actions.iter().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_examples() {
        let s = Scope::parse("repository:samalba/my-app:pull,push").expect("scope");
        assert_eq!(s.kind, ScopeKind::Repository);
        assert_eq!(s.name, "samalba/my-app");
        assert_eq!(s.actions, ["pull", "push"]);
        let c = Scope::parse("registry:catalog:*").expect("catalog");
        assert_eq!((c.kind, c.name.as_str()), (ScopeKind::Registry, "catalog"));
        let p = Scope::parse("repository(plugin):a/b:pull").expect("plugin");
        assert_eq!(p.name, "a/b");
        let m = Scope::parse(MANAGEMENT_SCOPE).expect("management");
        assert_eq!((m.kind, m.name.as_str()), (ScopeKind::Management, "api"));
        let all = Scope::parse_all(["repository:a:pull repository:b:push", "registry:catalog:*"])
            .expect("all");
        assert_eq!(all.len(), 3);
        assert_eq!(Scope::parse_all(["", "  "]), Ok(Vec::new()));
    }

    #[test]
    fn what_cannot_be_read_is_refused() {
        assert!(matches!(
            Scope::parse("bogus:x:pull"),
            Err(ScopeError::UnknownType(_))
        ));
        for bad in ["repository", "repository::pull", "repository:a"] {
            assert!(
                matches!(Scope::parse(bad), Err(ScopeError::Malformed(_))),
                "{bad}"
            );
        }
        for bad in ["berth:api:pull", "berth:admin:*", "berth:api:"] {
            assert!(
                matches!(Scope::parse(bad), Err(ScopeError::UnknownManagement(_))),
                "{bad}"
            );
        }
        // One bad scope spoils the request, wherever it is.
        assert!(Scope::parse_all(["repository:a:pull", "repository:b:pull whatever:x:y"]).is_err());
    }
}
