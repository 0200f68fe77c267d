//! Docker token scopes: `repository:team-a/app:pull,push`, `registry:catalog:*`.

use crate::Actions;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScopeKind {
    Repository,
    Registry,
}

/// One requested scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub kind: ScopeKind,
    pub name: String,
    pub actions: Vec<String>,
}

impl Scope {
    /// Parses one scope. The name sits between the first and the last colon, so names with
    /// a port-like colon still parse; `repository(plugin)` is treated as `repository`.
    /// Unknown resource types give `None`: they are ignored, never an error, as the spec
    /// asks.
    pub fn parse(s: &str) -> Option<Scope> {
        let (kind, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        let kind = match kind.split_once('(').map_or(kind, |(k, _)| k) {
            "repository" => ScopeKind::Repository,
            "registry" => ScopeKind::Registry,
            _ => return None,
        };
        if name.is_empty() || name.len() > 512 {
            return None;
        }
        Some(Scope {
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
    /// space-separated scopes.
    pub fn parse_all<'a>(params: impl IntoIterator<Item = &'a str>) -> Vec<Scope> {
        params
            .into_iter()
            .flat_map(str::split_whitespace)
            .filter_map(Scope::parse)
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
        assert_eq!(Scope::parse("bogus:x:pull"), None);
        assert_eq!(Scope::parse("repository"), None);
        assert_eq!(Scope::parse("repository::pull"), None);
        let all = Scope::parse_all(["repository:a:pull repository:b:push", "registry:catalog:*"]);
        assert_eq!(all.len(), 3);
    }
}
