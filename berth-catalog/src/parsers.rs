//! The catalogers: one function per file format, bytes in, packages out. Each is
//! panic-free on any input; a file that does not parse is an error string for the layer's
//! issues, never a failed layer.

use crate::{Ecosystem, OsRelease, Package};

/// Which cataloger a path calls for, from its name alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OsRelease,
    DpkgStatus,
    /// distroless `var/lib/dpkg/status.d/<name>`: one package a file, no `Status:` field.
    DpkgStatusD,
    Apk,
    PythonMetadata,
    NpmPackageJson,
    NpmLock,
    CargoLock,
    Jar,
    /// rpm 4.16 and later (RHEL 9, Fedora 33+): `rpmdb.sqlite`.
    RpmSqlite,
    /// Older rpm (RHEL/UBI 8, CentOS 7): the Berkeley DB hash `Packages`.
    RpmBdb,
}

pub fn classify(path: &str) -> Option<Kind> {
    let name = path.rsplit('/').next().unwrap_or(path);
    match path {
        "etc/os-release" | "usr/lib/os-release" => return Some(Kind::OsRelease),
        "var/lib/dpkg/status" => return Some(Kind::DpkgStatus),
        "lib/apk/db/installed" => return Some(Kind::Apk),
        "var/lib/rpm/rpmdb.sqlite" | "usr/lib/sysimage/rpm/rpmdb.sqlite" => {
            return Some(Kind::RpmSqlite);
        }
        "var/lib/rpm/Packages" | "usr/lib/sysimage/rpm/Packages" => return Some(Kind::RpmBdb),
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("var/lib/dpkg/status.d/") {
        // The `.md5sums` files beside each package's entry list files, not packages.
        if !rest.contains('/') && !rest.ends_with(".md5sums") {
            return Some(Kind::DpkgStatusD);
        }
        return None;
    }
    if path.ends_with(".dist-info/METADATA")
        || path.ends_with(".egg-info/PKG-INFO")
        || (name.ends_with(".egg-info") && !path.contains("/node_modules/"))
    {
        return Some(Kind::PythonMetadata);
    }
    if name == "package.json" && is_node_module(path) {
        return Some(Kind::NpmPackageJson);
    }
    if name == "package-lock.json" && !path.contains("node_modules/") {
        return Some(Kind::NpmLock);
    }
    if name == "Cargo.lock" {
        return Some(Kind::CargoLock);
    }
    if name.ends_with(".jar") || name.ends_with(".war") || name.ends_with(".ear") {
        return Some(Kind::Jar);
    }
    None
}

/// `…/node_modules/x/package.json` or `…/node_modules/@scope/x/package.json`.
fn is_node_module(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    let n = parts.len();
    (n >= 3 && parts[n - 3] == "node_modules" && !parts[n - 2].starts_with('@'))
        || (n >= 4 && parts[n - 4] == "node_modules" && parts[n - 3].starts_with('@'))
}

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    let v = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v);
    let v = v
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .unwrap_or(v);
    v.to_string()
}

pub fn os_release(data: &[u8]) -> Result<OsRelease, String> {
    let mut r = OsRelease::default();
    for line in text(data).lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = unquote(v);
        match k.trim() {
            "ID" => r.id = v,
            "VERSION_ID" => r.version_id = v,
            "VERSION_CODENAME" => r.version_codename = v,
            "PRETTY_NAME" => r.pretty_name = v,
            "ID_LIKE" => r.id_like = v,
            _ => {}
        }
    }
    if r.id.is_empty() {
        return Err("no ID".into());
    }
    Ok(r)
}

/// RFC 822-style paragraphs (dpkg status, PKG-INFO headers): `(field, value)` lists,
/// continuation lines folded into the value.
fn paragraphs(s: &str) -> Vec<Vec<(&str, String)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(&str, String)> = Vec::new();
    for line in s.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = cur.last_mut() {
                // Long descriptions are not kept; a folded line of a field read here is rare.
                if last.1.len() < 4096 {
                    last.1.push('\n');
                    last.1.push_str(line.trim());
                }
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim(), v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn field<'a>(p: &'a [(&str, String)], name: &str) -> Option<&'a str> {
    p.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// dpkg `status` (only packages whose status says installed) or a `status.d` file.
pub fn dpkg(data: &[u8], path: &str, status_d: bool) -> Result<Vec<Package>, String> {
    let s = text(data);
    let mut out = Vec::new();
    for p in paragraphs(&s) {
        let Some(name) = field(&p, "Package") else {
            continue;
        };
        let Some(version) = field(&p, "Version") else {
            continue;
        };
        if !status_d {
            // `Status: want flag state`; only the state `installed` is on disk whole.
            let installed = field(&p, "Status")
                .is_some_and(|st| st.split_whitespace().nth(2) == Some("installed"));
            if !installed {
                continue;
            }
        }
        let (source_name, source_version) = match field(&p, "Source") {
            Some(src) => match src.split_once('(') {
                Some((n, v)) => (
                    Some(n.trim().to_string()),
                    Some(v.trim_end().trim_end_matches(')').trim().to_string()),
                ),
                None => (Some(src.trim().to_string()), Some(version.to_string())),
            },
            // A package built from the source of its own name and version.
            None => (Some(name.to_string()), Some(version.to_string())),
        };
        out.push(Package {
            ecosystem: Ecosystem::Deb,
            name: name.to_string(),
            version: version.to_string(),
            arch: field(&p, "Architecture").map(str::to_string),
            source_name,
            source_version,
            path: path.to_string(),
        });
    }
    if out.is_empty() && !s.trim().is_empty() && !status_d {
        // A status file with content but no installed package is not a dpkg database.
        if !s.contains("Package:") {
            return Err("no package paragraphs".into());
        }
    }
    Ok(out)
}

/// apk `installed`: paragraphs of one-letter keys (`P:` name, `V:` version, `A:` arch,
/// `o:` origin, the source package).
pub fn apk(data: &[u8], path: &str) -> Result<Vec<Package>, String> {
    let s = text(data);
    let mut out = Vec::new();
    for block in s.split("\n\n") {
        let (mut name, mut version, mut arch, mut origin) = (None, None, None, None);
        for line in block.lines() {
            match line.split_once(':') {
                Some(("P", v)) => name = Some(v.trim()),
                Some(("V", v)) => version = Some(v.trim()),
                Some(("A", v)) => arch = Some(v.trim()),
                Some(("o", v)) => origin = Some(v.trim()),
                _ => {}
            }
        }
        if let (Some(n), Some(v)) = (name, version) {
            out.push(Package {
                ecosystem: Ecosystem::Apk,
                name: n.to_string(),
                version: v.to_string(),
                arch: arch.map(str::to_string),
                source_name: origin.map(str::to_string),
                source_version: origin.map(|_| v.to_string()),
                path: path.to_string(),
            });
        }
    }
    Ok(out)
}

/// `METADATA` / `PKG-INFO`: the header block's `Name` and `Version`.
pub fn python(data: &[u8], path: &str) -> Result<Vec<Package>, String> {
    let s = text(data);
    let head = s.split("\n\n").next().unwrap_or("");
    let ps = paragraphs(head);
    let Some(p) = ps.first() else {
        return Err("empty metadata".into());
    };
    let (Some(name), Some(version)) = (field(p, "Name"), field(p, "Version")) else {
        return Err("no Name or Version".into());
    };
    Ok(vec![simple(Ecosystem::Pypi, name, version, path)])
}

fn simple(ecosystem: Ecosystem, name: &str, version: &str, path: &str) -> Package {
    Package {
        ecosystem,
        name: name.to_string(),
        version: version.to_string(),
        arch: None,
        source_name: None,
        source_version: None,
        path: path.to_string(),
    }
}

pub fn npm_package_json(data: &[u8], path: &str) -> Result<Vec<Package>, String> {
    let v: serde_json::Value = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    match (
        v.get("name").and_then(|n| n.as_str()),
        v.get("version").and_then(|n| n.as_str()),
    ) {
        (Some(n), Some(ver)) if !n.is_empty() && !ver.is_empty() => {
            Ok(vec![simple(Ecosystem::Npm, n, ver, path)])
        }
        _ => Err("no name or version".into()),
    }
}

/// `package-lock.json`: v2/v3 `packages` (keys are install paths), else v1 `dependencies`
/// (nested), to a bounded depth.
pub fn npm_lock(data: &[u8], path: &str) -> Result<Vec<Package>, String> {
    let v: serde_json::Value = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if let Some(pkgs) = v.get("packages").and_then(|p| p.as_object()) {
        for (key, p) in pkgs {
            let Some(idx) = key.rfind("node_modules/") else {
                continue;
            };
            if p.get("link").and_then(|l| l.as_bool()) == Some(true) {
                continue;
            }
            let name = p
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or(&key[idx + "node_modules/".len()..]);
            if let Some(ver) = p.get("version").and_then(|x| x.as_str()) {
                out.push(simple(Ecosystem::Npm, name, ver, path));
            }
        }
    } else if let Some(deps) = v.get("dependencies").and_then(|d| d.as_object()) {
        fn walk(
            deps: &serde_json::Map<String, serde_json::Value>,
            path: &str,
            depth: u32,
            out: &mut Vec<Package>,
        ) {
            if depth > 64 {
                return;
            }
            for (name, d) in deps {
                if let Some(ver) = d.get("version").and_then(|x| x.as_str()) {
                    out.push(simple(Ecosystem::Npm, name, ver, path));
                }
                if let Some(sub) = d.get("dependencies").and_then(|x| x.as_object()) {
                    walk(sub, path, depth + 1, out);
                }
            }
        }
        walk(deps, path, 0, &mut out);
    } else {
        return Err("neither packages nor dependencies".into());
    }
    out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    out.dedup_by(|a, b| a.name == b.name && a.version == b.version);
    Ok(out)
}

pub fn cargo_lock(data: &[u8], path: &str) -> Result<Vec<Package>, String> {
    #[derive(serde::Deserialize)]
    struct Lock {
        #[serde(default)]
        package: Vec<Pkg>,
    }
    #[derive(serde::Deserialize)]
    struct Pkg {
        name: String,
        version: String,
    }
    let s = std::str::from_utf8(data).map_err(|e| e.to_string())?;
    let lock: Lock = toml::from_str(s).map_err(|e| e.message().to_string())?;
    Ok(lock
        .package
        .iter()
        .map(|p| simple(Ecosystem::Cargo, &p.name, &p.version, path))
        .collect())
}

/// `pom.properties`: `groupId`, `artifactId`, `version`.
pub fn pom_properties(data: &[u8], path: &str) -> Option<Package> {
    let s = text(data);
    let (mut g, mut a, mut v) = (None, None, None);
    for line in s.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((k, val)) = line.split_once('=') else {
            continue;
        };
        match k.trim() {
            "groupId" => g = Some(val.trim().to_string()),
            "artifactId" => a = Some(val.trim().to_string()),
            "version" => v = Some(val.trim().to_string()),
            _ => {}
        }
    }
    let (g, a, v) = (g?, a?, v?);
    if g.is_empty() || a.is_empty() || v.is_empty() {
        return None;
    }
    Some(simple(Ecosystem::Maven, &format!("{g}:{a}"), &v, path))
}

/// A jar (or war/ear): every `META-INF/maven/**/pom.properties`, and those of the jars
/// nested in it, one level deep. The path of a nested find is `outer.jar!inner.jar`.
pub fn jar(data: &[u8], path: &str, max_nested: u64) -> Result<Vec<Package>, String> {
    let entries = crate::zip::entries(data)?;
    let mut out = Vec::new();
    for e in &entries {
        if e.name.starts_with("META-INF/maven/") && e.name.ends_with("/pom.properties") {
            if let Ok(Some(bytes)) = crate::zip::read(data, e, 1 << 20) {
                out.extend(pom_properties(&bytes, path));
            }
        } else if e.name.ends_with(".jar") {
            let Ok(Some(inner)) = crate::zip::read(data, e, max_nested) else {
                continue;
            };
            let inner_path = format!("{path}!{}", e.name);
            let Ok(inner_entries) = crate::zip::entries(&inner) else {
                continue;
            };
            for ie in &inner_entries {
                if ie.name.starts_with("META-INF/maven/")
                    && ie.name.ends_with("/pom.properties")
                    && let Ok(Some(bytes)) = crate::zip::read(&inner, ie, 1 << 20)
                {
                    out.extend(pom_properties(&bytes, &inner_path));
                }
            }
        }
    }
    out.sort_by(|a, b| (&a.name, &a.version, &a.path).cmp(&(&b.name, &b.version, &b.path)));
    out.dedup_by(|a, b| a.name == b.name && a.version == b.version && a.path == b.path);
    Ok(out)
}

/// An rpm database's packages, and what could not be read in it when some of it could:
/// a corrupt row or page loses what it holds, not the whole database.
pub type RpmFound = (Vec<Package>, Option<String>);

/// `rpmdb.sqlite`: every row of table `Packages(hnum, blob)`, each blob an rpm header.
/// Stops after `max` packages (the layer's package cap says so).
pub fn rpmdb_sqlite(data: &[u8], path: &str, max: usize) -> Result<RpmFound, String> {
    let db = crate::sqlite::Db::open(data, crate::rpm::MAX_HEADER_BYTES)?;
    let root = db
        .table_root("Packages")?
        .ok_or("no table Packages in the rpm database")?;
    let mut found = crate::rpm::Collector::new(path, max);
    let walked = db.scan(root, |_, payload| {
        let row = payload.and_then(|p| match crate::sqlite::record(p)?.get(1) {
            Some(crate::sqlite::Value::Blob(b)) => Ok(found.add(b)),
            _ => Err("a row without a header blob".to_string()),
        });
        Ok(row.unwrap_or_else(|e| found.fail(e)))
    });
    finish_rpm(found, walked)
}

/// The Berkeley DB `Packages`: every value an rpm header, keyed by its instance number
/// (the value under key 0 is rpm's own counter, not a header).
pub fn rpmdb_bdb(data: &[u8], path: &str, max: usize) -> Result<RpmFound, String> {
    let db = crate::bdb::Db::open(data, crate::rpm::MAX_HEADER_BYTES)?;
    let mut found = crate::rpm::Collector::new(path, max);
    let walked = db.scan(|kv| {
        Ok(match kv {
            Ok((key, _)) if key.iter().all(|&b| b == 0) => true,
            Ok((_, value)) => found.add(value),
            Err(e) => found.fail(e),
        })
    });
    finish_rpm(found, walked)
}

/// A database that breaks part-way keeps what was read before, with the reason.
fn finish_rpm(
    found: crate::rpm::Collector<'_>,
    walked: Result<(), String>,
) -> Result<RpmFound, String> {
    let (packages, bad) = found.finish();
    match (walked, bad) {
        (Ok(()), bad) => Ok((packages, bad)),
        (Err(e), _) if packages.is_empty() => Err(e),
        (Err(e), None) => Ok((packages, Some(e))),
        (Err(e), Some(b)) => Ok((packages, Some(format!("{e}; {b}")))),
    }
}

const GO_MAGIC: &[u8] = b"\xff Go buildinf:";

/// Go's embedded build info (Go 1.18 and later: the strings inline after the 32-byte
/// header): the main module, its dependencies (replacements applied), and the toolchain
/// as `stdlib`.
pub fn go_buildinfo(data: &[u8], path: &str) -> Vec<Package> {
    let mut from = 0;
    while let Some(off) = find(&data[from..], GO_MAGIC) {
        let at = from + off;
        if let Some(p) = go_at(&data[at..], path) {
            return p;
        }
        from = at + 1;
    }
    Vec::new()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        let j = hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        if hay[i + j..].starts_with(needle) {
            return Some(i + j);
        }
        i += j + 1;
    }
    None
}

fn uvarint(d: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, &b) in d.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn go_at(d: &[u8], path: &str) -> Option<Vec<Package>> {
    let flags = *d.get(15)?;
    if flags & 2 == 0 {
        return None;
    }
    let mut rest = d.get(32..)?;
    let mut strings = Vec::new();
    for _ in 0..2 {
        let (n, k) = uvarint(rest)?;
        let n = usize::try_from(n).ok()?;
        let s = rest.get(k..k.checked_add(n)?)?;
        strings.push(String::from_utf8_lossy(s).into_owned());
        rest = &rest[k + n..];
    }
    let version = &strings[0];
    if !version.starts_with("go") {
        return None;
    }
    let mut modinfo = strings[1].as_str();
    // The module info is framed by 16-byte sentinels.
    if modinfo.len() >= 33 {
        modinfo = modinfo.get(16..modinfo.len() - 16).unwrap_or(modinfo);
    }
    let mut out = vec![simple(Ecosystem::Golang, "stdlib", version, path)];
    for line in modinfo.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["mod", m, v, ..] | ["dep", m, v, ..] => {
                out.push(simple(Ecosystem::Golang, m, v, path));
            }
            ["=>", m, v, ..] => {
                if let Some(last) = out.last_mut()
                    && last.name != "stdlib"
                {
                    *last = simple(Ecosystem::Golang, m, v, path);
                }
            }
            _ => {}
        }
    }
    Some(out)
}

/// cargo-auditable's `.dep-v0` ELF section: zlib-compressed JSON listing every crate.
pub fn cargo_auditable(data: &[u8], path: &str) -> Option<Result<Vec<Package>, String>> {
    use std::io::Read;
    let section = crate::elf::section(data, ".dep-v0")?;
    let mut json = Vec::new();
    let r = flate2::read::ZlibDecoder::new(section)
        .take(8 << 20)
        .read_to_end(&mut json);
    if let Err(e) = r {
        return Some(Err(format!("cargo-auditable section: {e}")));
    }
    #[derive(serde::Deserialize)]
    struct Deps {
        packages: Vec<Dep>,
    }
    #[derive(serde::Deserialize)]
    struct Dep {
        name: String,
        version: String,
    }
    Some(match serde_json::from_slice::<Deps>(&json) {
        Ok(d) => Ok(d
            .packages
            .iter()
            .map(|p| simple(Ecosystem::Cargo, &p.name, &p.version, path))
            .collect()),
        Err(e) => Err(format!("cargo-auditable section: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(classify("var/lib/dpkg/status"), Some(Kind::DpkgStatus));
        assert_eq!(
            classify("var/lib/dpkg/status.d/base"),
            Some(Kind::DpkgStatusD)
        );
        assert_eq!(classify("var/lib/dpkg/status.d/base.md5sums"), None);
        assert_eq!(
            classify("usr/lib/python3/dist-packages/six-1.16.0.dist-info/METADATA"),
            Some(Kind::PythonMetadata)
        );
        assert_eq!(
            classify("app/node_modules/left-pad/package.json"),
            Some(Kind::NpmPackageJson)
        );
        assert_eq!(
            classify("app/node_modules/@babel/core/package.json"),
            Some(Kind::NpmPackageJson)
        );
        assert_eq!(classify("app/node_modules/x/lib/package.json"), None);
        assert_eq!(classify("app/package.json"), None);
        assert_eq!(classify("app/package-lock.json"), Some(Kind::NpmLock));
        assert_eq!(classify("src/Cargo.lock"), Some(Kind::CargoLock));
        assert_eq!(classify("opt/app/lib/guava.jar"), Some(Kind::Jar));
    }

    #[test]
    fn dpkg_status() {
        let s = b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc (2.36-9+deb12u4)\nVersion: 2.36-9+deb12u4\nDescription: GNU C\n folded\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: bash\nStatus: install ok installed\nVersion: 5.2.15-2+b2\nSource: bash\n";
        let p = dpkg(s, "var/lib/dpkg/status", false).expect("test");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "libc6");
        assert_eq!(p[0].source_name.as_deref(), Some("glibc"));
        assert_eq!(p[0].source_version.as_deref(), Some("2.36-9+deb12u4"));
        assert_eq!(p[0].arch.as_deref(), Some("amd64"));
        assert_eq!(p[1].name, "bash");
        assert_eq!(p[1].source_version.as_deref(), Some("5.2.15-2+b2"));
    }

    #[test]
    fn apk_installed() {
        let s = b"C:Q1abc=\nP:musl\nV:1.2.4-r2\nA:x86_64\no:musl\n\nP:busybox\nV:1.36.1-r15\nA:x86_64\no:busybox\n";
        let p = apk(s, "lib/apk/db/installed").expect("test");
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[1].name.as_str(), p[1].version.as_str()),
            ("busybox", "1.36.1-r15")
        );
    }

    #[test]
    fn lockfiles() {
        let lock = br#"{"lockfileVersion":3,"packages":{"":{"name":"app"},"node_modules/a":{"version":"1.0.0"},"node_modules/a/node_modules/@s/b":{"version":"2.0.0"},"node_modules/l":{"link":true}}}"#;
        let p = npm_lock(lock, "app/package-lock.json").expect("test");
        let names: Vec<_> = p
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        assert_eq!(names, vec![("@s/b", "2.0.0"), ("a", "1.0.0")]);
        let cargo = b"version = 3\n[[package]]\nname = \"serde\"\nversion = \"1.0.200\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n";
        let p = cargo_lock(cargo, "Cargo.lock").expect("test");
        assert_eq!(
            (p[0].name.as_str(), p[0].version.as_str()),
            ("serde", "1.0.200")
        );
        assert!(cargo_lock(b"[[package]]\nname=1", "x").is_err());
    }

    #[test]
    fn go_info() {
        let modinfo = "0123456789abcdefpath\texample.com/app\nmod\texample.com/app\t(devel)\t\ndep\tgolang.org/x/net\tv0.1.0\th1:x\ndep\tgithub.com/a/b\tv1.0.0\th1:y\n=>\tgithub.com/c/b\tv1.2.0\th1:z\n0123456789abcdef";
        let mut blob = b"junk \xff Go buildinf: junk".to_vec();
        blob.extend_from_slice(GO_MAGIC);
        blob.extend_from_slice(&[8, 2]);
        blob.extend_from_slice(&[0u8; 16]);
        blob.push(8);
        blob.extend_from_slice(b"go1.22.1");
        blob.extend_from_slice(&[modinfo.len() as u8 | 0x80, (modinfo.len() >> 7) as u8]);
        blob.extend_from_slice(modinfo.as_bytes());
        let p = go_buildinfo(&blob, "app");
        let got: Vec<_> = p
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("stdlib", "go1.22.1"),
                ("example.com/app", "(devel)"),
                ("golang.org/x/net", "v0.1.0"),
                ("github.com/c/b", "v1.2.0"),
            ]
        );
    }
}
