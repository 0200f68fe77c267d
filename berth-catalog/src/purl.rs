//! Package URLs (purl spec): `pkg:type/namespace/name@version?qualifiers`, each part
//! percent-encoded, qualifiers sorted by key.

use crate::{Ecosystem, OsRelease, Package};

/// Percent-encodes all but the unreserved characters and `:`, which the purl spec leaves
/// as it is (so a Debian epoch reads `1:2.3`, as syft and OSV write it).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn segments(path: &str) -> String {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(encode)
        .collect::<Vec<_>>()
        .join("/")
}

/// Python names compare normalized (PEP 503): lowercase, runs of `-_.` as one `-`.
pub fn pep503(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
            continue;
        }
        if sep && !out.is_empty() {
            out.push('-');
        }
        sep = false;
        out.extend(c.to_lowercase());
    }
    out
}

pub fn purl(p: &Package, os: Option<&OsRelease>) -> String {
    let version = encode(&p.version);
    let mut quals: Vec<(&str, String)> = Vec::new();
    let distro = |default: &str| {
        os.map(|o| (o.id.clone(), format!("{}-{}", o.id, o.version_id)))
            .unwrap_or_else(|| (default.to_string(), String::new()))
    };
    let path = match p.ecosystem {
        Ecosystem::Deb | Ecosystem::Apk | Ecosystem::Rpm => {
            let default = match p.ecosystem {
                Ecosystem::Deb => "debian",
                Ecosystem::Apk => "alpine",
                _ => "redhat",
            };
            let (ns, d) = distro(default);
            if let Some(a) = &p.arch {
                quals.push(("arch", a.clone()));
            }
            if !d.is_empty() && !d.ends_with('-') {
                quals.push(("distro", d));
            }
            if let Some(src) = &p.source_name
                && (*src != p.name || p.source_version.as_deref().is_some_and(|v| v != p.version))
            {
                let up = match &p.source_version {
                    Some(v) if *v != p.version => format!("{src}@{v}"),
                    _ => src.clone(),
                };
                quals.push(("upstream", up));
            }
            format!("{}/{}", encode(&ns), encode(&p.name))
        }
        Ecosystem::Pypi => encode(&pep503(&p.name)),
        Ecosystem::Npm => segments(&p.name),
        Ecosystem::Golang => segments(&p.name),
        Ecosystem::Cargo => encode(&p.name),
        Ecosystem::Maven => match p.name.split_once(':') {
            Some((g, a)) => format!("{}/{}", encode(g), encode(a)),
            None => encode(&p.name),
        },
    };
    quals.sort();
    let mut s = format!("pkg:{}/{path}@{version}", p.ecosystem.as_str());
    for (i, (k, v)) in quals.iter().enumerate() {
        s.push(if i == 0 { '?' } else { '&' });
        s.push_str(k);
        s.push('=');
        s.push_str(&encode(v));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(e: Ecosystem, name: &str, version: &str) -> Package {
        Package {
            ecosystem: e,
            name: name.into(),
            version: version.into(),
            arch: None,
            source_name: None,
            source_version: None,
            path: String::new(),
        }
    }

    #[test]
    fn purls() {
        let os = OsRelease {
            id: "debian".into(),
            version_id: "12".into(),
            ..Default::default()
        };
        let mut libc = pkg(Ecosystem::Deb, "libc6", "2.36-9+deb12u4");
        libc.arch = Some("amd64".into());
        libc.source_name = Some("glibc".into());
        libc.source_version = Some("2.36-9+deb12u4".into());
        assert_eq!(
            purl(&libc, Some(&os)),
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12&upstream=glibc"
        );
        assert_eq!(
            purl(&pkg(Ecosystem::Npm, "@babel/core", "7.0.0"), None),
            "pkg:npm/%40babel/core@7.0.0"
        );
        assert_eq!(
            purl(&pkg(Ecosystem::Pypi, "Flask_SQLAlchemy", "3.1"), None),
            "pkg:pypi/flask-sqlalchemy@3.1"
        );
        assert_eq!(
            purl(&pkg(Ecosystem::Golang, "github.com/a/b", "v1.0.0"), None),
            "pkg:golang/github.com/a/b@v1.0.0"
        );
        assert_eq!(
            purl(&pkg(Ecosystem::Maven, "org.slf4j:slf4j-api", "2.0.9"), None),
            "pkg:maven/org.slf4j/slf4j-api@2.0.9"
        );
    }
}
