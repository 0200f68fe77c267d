//! An image's catalog from its layers' catalogs, bottom layer first: what a higher layer
//! deletes (whiteouts), hides (opaque directories) or replaces (a file at the same path)
//! is not in the image.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::{FileIssue, LayerCatalog, OsRelease, Package, purl};

pub struct LayerRef<'a> {
    pub digest: &'a str,
    pub catalog: &'a LayerCatalog,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePackage {
    #[serde(flatten)]
    pub package: Package,
    pub purl: String,
    /// Digest of the layer that brought it.
    pub layer: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageCatalog {
    pub os: Option<OsRelease>,
    pub packages: Vec<ImagePackage>,
    /// `(layer digest, reason)` of each layer not read to its end.
    pub partial: Vec<(String, String)>,
    pub issues: Vec<(String, FileIssue)>,
}

struct Shadow<'a> {
    seen: HashSet<&'a str>,
    whiteouts: &'a [String],
    opaque: &'a [String],
}

impl Shadow<'_> {
    /// Whether this layer hides `path` of a lower layer.
    fn hides(&self, path: &str) -> bool {
        // A nested jar's finds live in the outer jar's file.
        let path = path.split('!').next().unwrap_or(path);
        self.seen.contains(path)
            || self.whiteouts.iter().any(|w| under_or_at(path, w))
            || self.opaque.iter().any(|o| {
                o.is_empty()
                    || path
                        .strip_prefix(o.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            })
    }
}

fn under_or_at(path: &str, dir: &str) -> bool {
    path == dir || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

pub fn merge(layers: &[LayerRef<'_>]) -> ImageCatalog {
    let shadows: Vec<Shadow<'_>> = layers
        .iter()
        .map(|l| Shadow {
            seen: l.catalog.seen.iter().map(String::as_str).collect(),
            whiteouts: &l.catalog.whiteouts,
            opaque: &l.catalog.opaque,
        })
        .collect();
    let visible = |i: usize, path: &str| !shadows[i + 1..].iter().any(|s| s.hides(path));
    let os = os_release(layers, &visible, "etc/os-release", 0)
        .or_else(|| os_release(layers, &visible, "usr/lib/os-release", 0));
    let mut out = ImageCatalog {
        os,
        ..Default::default()
    };
    let mut purls = HashSet::new();
    for (i, l) in layers.iter().enumerate() {
        if let Some(r) = &l.catalog.partial {
            out.partial.push((l.digest.to_string(), r.clone()));
        }
        for issue in &l.catalog.issues {
            if visible(i, &issue.path) {
                out.issues.push((l.digest.to_string(), issue.clone()));
            }
        }
        for p in &l.catalog.packages {
            if !visible(i, &p.path) {
                continue;
            }
            let purl = purl::purl(p, out.os.as_ref());
            // The same package found twice (a lock file and the installed module, two
            // copies of a jar) is one package, credited to the lowest layer holding it.
            if purls.insert(purl.clone()) {
                out.packages.push(ImagePackage {
                    package: p.clone(),
                    purl,
                    layer: l.digest.to_string(),
                });
            }
        }
    }
    out.packages.sort_by(|a, b| {
        (a.package.ecosystem, &a.package.name, &a.package.version).cmp(&(
            b.package.ecosystem,
            &b.package.name,
            &b.package.version,
        ))
    });
    out
}

fn os_release(
    layers: &[LayerRef<'_>],
    visible: &dyn Fn(usize, &str) -> bool,
    path: &str,
    depth: u32,
) -> Option<OsRelease> {
    for (i, l) in layers.iter().enumerate().rev() {
        if let Some((_, r)) = l.catalog.os_release.iter().find(|(p, _)| p == path) {
            return visible(i, path).then(|| r.clone());
        }
        if let Some((_, target)) = l.catalog.symlinks.iter().find(|(p, _)| p == path) {
            if !visible(i, path) || depth > 4 {
                return None;
            }
            return os_release(layers, visible, target, depth + 1);
        }
    }
    None
}
