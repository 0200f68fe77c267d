//! Tag rules: which tags are immutable, which may not be pushed at all.
//!
//! A rule applies to the repositories its `repositories` glob matches (over the full name,
//! so `team-a/*` is a tenant and `*` is everything). Tag patterns are globs too, or the
//! keyword `semver`. Rules look at names only, so they are decided here, in memory; the
//! metadata store applies the decision inside the transaction that changes the tag (see
//! `berth_meta::TagGuard`), which is what makes immutability hold under concurrent pushes.

use berth_oci::semver::Version;
use serde::{Deserialize, Serialize};

/// One `[[tag_rule]]` as configured (or managed through the API).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TagRuleSpec {
    /// Glob over the full repository name.
    pub repositories: String,
    /// Tags that, once pushed, point at their digest for good.
    #[serde(default)]
    pub immutable: Vec<String>,
    /// Tags that may not be pushed at all.
    #[serde(default)]
    pub refuse: Vec<String>,
    /// Refuse every tag that no immutable pattern (of any rule for the repository) matches.
    #[serde(default)]
    pub refuse_mutable: bool,
}

impl TagRuleSpec {
    /// The suggested default: semantic-version tags are immutable everywhere.
    pub fn semver_everywhere() -> TagRuleSpec {
        TagRuleSpec {
            repositories: "*".into(),
            immutable: vec!["semver".into()],
            refuse: Vec::new(),
            refuse_mutable: false,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("tag rule for {repositories:?}: pattern {pattern:?}: {why}")]
pub struct RuleError {
    pub repositories: String,
    pub pattern: String,
    pub why: &'static str,
}

#[derive(Debug, Clone)]
enum Pattern {
    Semver,
    Glob(Glob),
}

impl Pattern {
    fn matches(&self, tag: &str) -> bool {
        match self {
            Pattern::Semver => Version::parse(tag).is_some(),
            Pattern::Glob(g) => g.matches(tag),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    spec: TagRuleSpec,
    repositories: Glob,
    immutable: Vec<(String, Pattern)>,
    refuse: Vec<(String, Pattern)>,
}

/// The configured rules, checked and compiled.
#[derive(Debug, Clone, Default)]
pub struct TagRules {
    rules: Vec<Rule>,
}

fn compile(repositories: &str, p: &str) -> Result<Pattern, RuleError> {
    if p == "semver" {
        return Ok(Pattern::Semver);
    }
    Glob::new(p).map(Pattern::Glob).map_err(|why| RuleError {
        repositories: repositories.to_owned(),
        pattern: p.to_owned(),
        why,
    })
}

impl TagRules {
    pub fn new(specs: Vec<TagRuleSpec>) -> Result<TagRules, RuleError> {
        let rules = specs
            .into_iter()
            .map(|spec| {
                let repositories = Glob::new(&spec.repositories).map_err(|why| RuleError {
                    repositories: spec.repositories.clone(),
                    pattern: spec.repositories.clone(),
                    why,
                })?;
                let list = |ps: &[String]| {
                    ps.iter()
                        .map(|p| Ok((p.clone(), compile(&spec.repositories, p)?)))
                        .collect::<Result<Vec<_>, RuleError>>()
                };
                Ok(Rule {
                    repositories,
                    immutable: list(&spec.immutable)?,
                    refuse: list(&spec.refuse)?,
                    spec,
                })
            })
            .collect::<Result<_, RuleError>>()?;
        Ok(TagRules { rules })
    }

    /// The rules as configured.
    pub fn specs(&self) -> impl Iterator<Item = &TagRuleSpec> {
        self.rules.iter().map(|r| &r.spec)
    }

    fn for_repo<'a>(&'a self, repo: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules
            .iter()
            .filter(move |r| r.repositories.matches(repo))
    }

    /// The rule that makes `tag` immutable in `repo`, as `"<repositories> <pattern>"`.
    pub fn immutable(&self, repo: &str, tag: &str) -> Option<String> {
        self.for_repo(repo).find_map(|r| {
            r.immutable
                .iter()
                .find(|(_, p)| p.matches(tag))
                .map(|(text, _)| format!("{} {text}", r.spec.repositories))
        })
    }

    /// Why `tag` may not be pushed to `repo` at all, naming the rule; `None` if it may.
    pub fn refusal(&self, repo: &str, tag: &str) -> Option<String> {
        for r in self.for_repo(repo) {
            if let Some((text, _)) = r.refuse.iter().find(|(_, p)| p.matches(tag)) {
                return Some(format!(
                    "tag {tag} may not be pushed (rule: {} refuse {text})",
                    r.spec.repositories
                ));
            }
        }
        if let Some(r) = self.for_repo(repo).find(|r| r.spec.refuse_mutable)
            && self.immutable(repo, tag).is_none()
        {
            return Some(format!(
                "tag {tag} would be mutable and mutable tags are refused (rule: {} refuse_mutable)",
                r.spec.repositories
            ));
        }
        None
    }
}

/// A glob: `*` any run of characters (`/` included), `?` one character, `[a-z0-9]` one of
/// a set (`[!...]` or `[^...]` none of it); anything else matches itself.
#[derive(Debug, Clone)]
pub(crate) struct Glob(Vec<Token>);

#[derive(Debug, Clone)]
enum Token {
    Star,
    Any,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Char(char),
}

impl Token {
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
            Token::Char(x) => *x == c,
        }
    }
}

impl Glob {
    pub(crate) fn new(p: &str) -> Result<Glob, &'static str> {
        if p.is_empty() {
            return Err("empty pattern");
        }
        let mut tokens = Vec::new();
        let mut chars = p.chars().peekable();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '*' => Token::Star,
                '?' => Token::Any,
                '[' => {
                    let negated = chars.next_if(|&c| c == '!' || c == '^').is_some();
                    let mut ranges = Vec::new();
                    loop {
                        let Some(lo) = chars.next() else {
                            return Err("unclosed [");
                        };
                        if lo == ']' && !ranges.is_empty() {
                            break;
                        }
                        if chars.next_if_eq(&'-').is_some() {
                            match chars.next() {
                                Some(']') | None => return Err("range without an end"),
                                Some(hi) if hi < lo => return Err("range out of order"),
                                Some(hi) => ranges.push((lo, hi)),
                            }
                        } else {
                            ranges.push((lo, lo));
                        }
                    }
                    Token::Class { negated, ranges }
                }
                c => Token::Char(c),
            });
        }
        Ok(Glob(tokens))
    }

    pub(crate) fn matches(&self, text: &str) -> bool {
        let (p, t): (&[Token], Vec<char>) = (&self.0, text.chars().collect());
        let (mut pi, mut ti) = (0, 0);
        // The last `*` and where in the text it started matching, to backtrack to.
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some(Token::Star) => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                Some(tok) if tok.matches(t[ti]) => {
                    pi += 1;
                    ti += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        pi = sp + 1;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|t| matches!(t, Token::Star))
    }
}

/// The setting that holds the rules managed through the API.
const MANAGED: &str = "tag_rules";

impl crate::Registry {
    /// The rules in force: the configuration's, then the managed ones.
    pub fn tag_rules(&self) -> std::sync::Arc<TagRules> {
        match self.rules.read() {
            Ok(r) => std::sync::Arc::clone(&r),
            Err(poisoned) => std::sync::Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The rules managed through the API (in force after the configuration's).
    pub async fn managed_tag_rules(&self) -> crate::Result<Vec<TagRuleSpec>> {
        match self.meta.setting(MANAGED).await? {
            None => Ok(Vec::new()),
            Some(json) => serde_json::from_str(&json).map_err(|e| {
                crate::RegistryError::Internal(format!("stored tag rules are unreadable: {e}"))
            }),
        }
    }

    /// Re-reads the managed rules (another replica may have changed them).
    pub async fn reload_tag_rules(&self) -> crate::Result<()> {
        let managed = self.managed_tag_rules().await?;
        self.install_rules(managed)
    }

    fn install_rules(&self, managed: Vec<TagRuleSpec>) -> crate::Result<()> {
        let specs: Vec<TagRuleSpec> = self
            .config
            .tag_rules
            .specs()
            .cloned()
            .chain(managed)
            .collect();
        let rules =
            TagRules::new(specs).map_err(|e| crate::RegistryError::Invalid(e.to_string()))?;
        match self.rules.write() {
            Ok(mut r) => *r = std::sync::Arc::new(rules),
            Err(poisoned) => *poisoned.into_inner() = std::sync::Arc::new(rules),
        }
        Ok(())
    }

    /// Replaces the managed rules (checked first; a bad pattern changes nothing). The
    /// caller has checked that `actor` is an admin.
    pub async fn set_managed_tag_rules(
        &self,
        specs: Vec<TagRuleSpec>,
        actor: &berth_meta::Actor,
    ) -> crate::Result<()> {
        TagRules::new(specs.clone()).map_err(|e| crate::RegistryError::Invalid(e.to_string()))?;
        let json = serde_json::to_string(&specs)
            .map_err(|e| crate::RegistryError::Internal(e.to_string()))?;
        self.meta
            .set_setting(MANAGED, &json, actor, "tagrules.set")
            .await?;
        self.install_rules(specs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(specs: Vec<TagRuleSpec>) -> TagRules {
        TagRules::new(specs).expect("valid rules")
    }

    fn spec(repos: &str, immutable: &[&str], refuse: &[&str]) -> TagRuleSpec {
        TagRuleSpec {
            repositories: repos.into(),
            immutable: immutable.iter().map(|s| s.to_string()).collect(),
            refuse: refuse.iter().map(|s| s.to_string()).collect(),
            refuse_mutable: false,
        }
    }

    #[test]
    fn globs() {
        let g = |p: &str, t: &str| Glob::new(p).expect("glob").matches(t);
        assert!(g("*", "team-a/app/x"));
        assert!(g("team-a/*", "team-a/app"));
        assert!(g("team-a/*", "team-a/tools/x"));
        assert!(!g("team-a/*", "team-ab/app"));
        assert!(g("v*.*.*", "v1.2.3"));
        assert!(!g("v*.*.*", "v1.2"));
        assert!(g("[0-9]*.[0-9]*.[0-9]*", "10.2.3"));
        assert!(!g("[0-9]*.[0-9]*.[0-9]*", "x10.2.3"));
        assert!(g("rel-??", "rel-01"));
        assert!(!g("rel-??", "rel-1"));
        assert!(g("[!a-z]*", "1abc"));
        assert!(!g("[^a-z]*", "abc"));
        assert!(g("[]]", "]"));
        assert!(g("latest", "latest"));
        assert!(!g("latest", "latest2"));
        for bad in ["", "[a-", "[abc", "[z-a]"] {
            assert!(Glob::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_name_themselves() {
        let r = rules(vec![
            spec("team-a/*", &["semver", "release-*"], &["latest"]),
            spec("*", &["v*.*.*"], &[]),
        ]);
        assert_eq!(
            r.immutable("team-a/app", "1.4.2").as_deref(),
            Some("team-a/* semver")
        );
        assert_eq!(
            r.immutable("team-a/app", "release-7").as_deref(),
            Some("team-a/* release-*")
        );
        assert_eq!(r.immutable("team-b/app", "1.4.2"), None);
        assert_eq!(
            r.immutable("team-b/app", "v1.4.x").as_deref(),
            Some("* v*.*.*")
        );
        assert_eq!(r.immutable("team-a/app", "main"), None);
        assert_eq!(
            r.refusal("team-a/app", "latest").as_deref(),
            Some("tag latest may not be pushed (rule: team-a/* refuse latest)")
        );
        assert_eq!(r.refusal("team-b/app", "latest"), None);
        assert!(TagRules::default().immutable("a", "1.0.0").is_none());
    }

    #[test]
    fn refuse_mutable_allows_only_immutable_tags() {
        let r = rules(vec![
            TagRuleSpec {
                refuse_mutable: true,
                ..spec("strict/*", &[], &[])
            },
            spec("*", &["semver"], &[]),
        ]);
        assert!(r.refusal("strict/app", "1.0.0").is_none());
        assert!(
            r.refusal("strict/app", "main")
                .is_some_and(|m| m.contains("(rule: strict/* refuse_mutable)"))
        );
        assert!(r.refusal("other", "main").is_none());
    }

    #[test]
    fn bad_patterns_are_named() {
        let e = TagRules::new(vec![spec("team-a/*", &["[0-9"], &[])]).expect_err("bad");
        assert_eq!(e.pattern, "[0-9");
        assert!(e.to_string().contains("team-a/*"));
    }
}
