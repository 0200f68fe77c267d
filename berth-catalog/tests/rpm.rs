//! rpm databases made by the real tools in the test: noarch packages built with
//! `rpmbuild`, installed with `rpm --dbpath … --justdb` into an sqlite rpmdb, and the same
//! header blobs loaded with `db5.3_load` into Berkeley DB hash `Packages` files of both
//! byte orders. What rpm itself reports (`rpm -qa`) is what the catalog must hold.
//! The tools come from `scripts/install-test-tools.sh` (Debian packages `rpm`,
//! `db5.3-util`, `sqlite3`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use berth_catalog::fuzzing::{Item, tar};
use berth_catalog::{LayerCatalog, LayerRef, Limits, catalog_layer, merge};
use proptest::prelude::*;

const FEDORA: &[u8] = b"NAME=\"Fedora Linux\"\nID=fedora\nVERSION_ID=40\n";

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{cmd:?}: {e} (install the tools with scripts/install-test-tools.sh)")
    });
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The packages (name, preamble, description, extra sections): one with an epoch, one
/// building a subpackage (whose source package has another name), one with a header
/// larger than a page (a long description), and enough small ones that the `Packages`
/// table needs interior b-tree pages.
fn specs() -> Vec<(String, String, String, String)> {
    let mut specs = vec![
        (
            "berth-alpha".to_string(),
            "Version: 1.2.3\nRelease: 4.fc40\nEpoch: 2\n".to_string(),
            "alpha".to_string(),
            String::new(),
        ),
        (
            "berth-big".to_string(),
            "Version: 0.9\nRelease: 1\n".to_string(),
            "a long description line to push the header over one page\n".repeat(200),
            String::new(),
        ),
        (
            "berth-libs".to_string(),
            "Version: 3.0\nRelease: 7.fc40\n".to_string(),
            "libs".to_string(),
            "%package -n berth-libs-devel\nSummary: devel\n%description -n berth-libs-devel\ndevel\n%files -n berth-libs-devel\n".to_string(),
        ),
    ];
    for i in 0..24 {
        specs.push((
            format!("berth-filler-{i:02}"),
            format!("Version: {i}.0\nRelease: 1\n"),
            "filler".to_string(),
            String::new(),
        ));
    }
    specs
}

/// A directory of its own for one use of the tools, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "berth-rpm-{what}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Fixture {
    /// `rpmdb.sqlite` as rpm wrote it.
    sqlite: Vec<u8>,
    /// `(hnum, header blob)` of every row, read back by the `sqlite3` shell.
    blobs: Vec<(u32, Vec<u8>)>,
    /// The `Packages` table's root page, as the `sqlite3` shell finds it.
    packages_root: usize,
    /// `name|version|arch|source rpm` lines, as `rpm -qa` prints them, sorted.
    expected: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let scratch = Scratch::new("fixture");
        let dir = &scratch.0;
        std::fs::create_dir_all(dir.join("db")).expect("test");
        let top = dir.join("top");
        for (name, head, description, extra) in specs() {
            let spec = format!(
                "Name: {name}\n{head}Summary: test\nLicense: MIT\nBuildArch: noarch\n%description\n{description}\n%files\n{extra}"
            );
            let path = dir.join(format!("{name}.spec"));
            std::fs::write(&path, spec).expect("test");
            run(Command::new("rpmbuild")
                .arg("--define")
                .arg(format!("_topdir {}", top.display()))
                .args(["--quiet", "-bb"])
                .arg(&path));
        }
        let rpms: Vec<PathBuf> = std::fs::read_dir(top.join("RPMS/noarch"))
            .expect("test")
            .map(|e| e.expect("test").path())
            .collect();
        assert_eq!(rpms.len(), 28);
        let db = dir.join("db");
        run(Command::new("rpm")
            .arg("--dbpath")
            .arg(&db)
            .args(["-i", "--justdb", "--nodeps", "--noverify", "--nosignature"])
            .args(&rpms));
        let q = run(Command::new("rpm").arg("--dbpath").arg(&db).args([
            "-qa",
            "--qf",
            "%{NAME};%|EPOCH?{%{EPOCH}:}:{}|;%{VERSION}-%{RELEASE};%{ARCH};%{SOURCERPM}\\n",
        ]));
        let mut expected: Vec<String> = String::from_utf8(q)
            .expect("test")
            .lines()
            .map(|l| {
                // name;epoch:;version-release;arch;srpm -> name|epoch:version-release|arch|srpm
                let f: Vec<&str> = l.split(';').collect();
                format!("{}|{}{}|{}|{}", f[0], f[1], f[2], f[3], f[4])
            })
            .collect();
        expected.sort();
        let rows = run(Command::new("sqlite3")
            .arg(db.join("rpmdb.sqlite"))
            .arg("SELECT hnum, hex(blob) FROM Packages ORDER BY hnum"));
        let blobs = String::from_utf8(rows)
            .expect("test")
            .lines()
            .map(|l| {
                let (n, hex) = l.split_once('|').expect("test");
                (n.parse().expect("test"), unhex(hex))
            })
            .collect();
        let root = run(Command::new("sqlite3")
            .arg(db.join("rpmdb.sqlite"))
            .arg("SELECT rootpage FROM sqlite_schema WHERE name = 'Packages'"));
        Fixture {
            packages_root: String::from_utf8(root)
                .expect("test")
                .trim()
                .parse()
                .expect("test"),
            sqlite: std::fs::read(db.join("rpmdb.sqlite")).expect("test"),
            blobs,
            expected,
        }
    })
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("test"))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A hash `Packages` of the fixture's blobs, as rpm's BDB backend keys them (instance
/// numbers in the database's byte order, and rpm's counter under key 0).
fn bdb(page_size: u32, big_endian: bool) -> Vec<u8> {
    let f = fixture();
    let key = |n: u32| {
        if big_endian {
            n.to_be_bytes()
        } else {
            n.to_le_bytes()
        }
    };
    let mut dump =
        format!("VERSION=3\nformat=bytevalue\ntype=hash\ndb_pagesize={page_size}\nHEADER=END\n");
    dump.push_str(&format!(" {}\n {}\n", hex(&key(0)), hex(&key(1000))));
    for (n, blob) in &f.blobs {
        dump.push_str(&format!(" {}\n {}\n", hex(&key(*n)), hex(blob)));
    }
    dump.push_str("DATA=END\n");
    let scratch = Scratch::new("bdb");
    let file = scratch.0.join("Packages");
    let input = scratch.0.join("Packages.dump");
    std::fs::write(&input, dump).expect("test");
    let lorder = if big_endian { "4321" } else { "1234" };
    run(Command::new("db5.3_load")
        .args(["-t", "hash", "-c", &format!("db_lorder={lorder}"), "-f"])
        .arg(&input)
        .arg(&file));
    std::fs::read(&file).expect("test")
}

fn layer(path: &str, db: &[u8]) -> LayerCatalog {
    let t = tar(&[Item::File("etc/os-release", FEDORA), Item::File(path, db)]);
    catalog_layer(&t[..], &Limits::default())
}

fn listed(c: &LayerCatalog) -> Vec<String> {
    let mut v: Vec<String> = c
        .packages
        .iter()
        .map(|p| {
            let src = match (&p.source_name, &p.source_version) {
                // The source rpm's file name, from what was recorded of it.
                (Some(n), Some(v)) => {
                    let v = v.split_once(':').map_or(v.as_str(), |(_, v)| v);
                    format!("{n}-{v}.src.rpm")
                }
                _ => "(none)".into(),
            };
            format!(
                "{}|{}|{}|{src}",
                p.name,
                p.version,
                p.arch.as_deref().unwrap_or("")
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn sqlite_rpmdb_lists_what_rpm_lists() {
    let f = fixture();
    assert_eq!(f.expected.len(), 28);
    // The fixture holds what the reader must handle: an interior page over the table's
    // leaves, and a header spilling onto overflow pages.
    let page_size = usize::from(u16::from_be_bytes([f.sqlite[16], f.sqlite[17]]));
    assert_eq!(f.sqlite[(f.packages_root - 1) * page_size], 5);
    assert!(f.blobs.iter().any(|(_, b)| b.len() > page_size));
    for path in [
        "var/lib/rpm/rpmdb.sqlite",
        "usr/lib/sysimage/rpm/rpmdb.sqlite",
    ] {
        let c = layer(path, &f.sqlite);
        assert_eq!(c.partial, None);
        assert_eq!(c.issues, vec![]);
        assert_eq!(listed(&c), f.expected, "{path}");
    }
    let c = layer("var/lib/rpm/rpmdb.sqlite", &f.sqlite);
    let alpha = c
        .packages
        .iter()
        .find(|p| p.name == "berth-alpha")
        .expect("test");
    assert_eq!(alpha.version, "2:1.2.3-4.fc40");
    assert_eq!(alpha.source_version.as_deref(), Some("2:1.2.3-4.fc40"));
    let devel = c
        .packages
        .iter()
        .find(|p| p.name == "berth-libs-devel")
        .expect("test");
    assert_eq!(devel.source_name.as_deref(), Some("berth-libs"));
    assert_eq!(devel.source_version.as_deref(), Some("3.0-7.fc40"));
    let image = merge(&[LayerRef {
        digest: "sha256:1",
        catalog: &c,
    }]);
    let purls: Vec<&str> = image.packages.iter().map(|p| p.purl.as_str()).collect();
    assert!(
        purls.contains(&"pkg:rpm/fedora/berth-alpha@2:1.2.3-4.fc40?arch=noarch&distro=fedora-40"),
        "{purls:?}"
    );
    assert!(
        purls.contains(
            &"pkg:rpm/fedora/berth-libs-devel@3.0-7.fc40?arch=noarch&distro=fedora-40&upstream=berth-libs"
        ),
        "{purls:?}"
    );
}

#[test]
fn bdb_packages_of_both_byte_orders_and_page_sizes() {
    let f = fixture();
    for (page_size, be) in [(4096, false), (4096, true), (512, false), (512, true)] {
        let db = bdb(page_size, be);
        let c = layer("var/lib/rpm/Packages", &db);
        assert_eq!(c.partial, None);
        assert_eq!(c.issues, vec![], "page size {page_size}, big-endian {be}");
        assert_eq!(
            listed(&c),
            f.expected,
            "page size {page_size}, big-endian {be}"
        );
    }
}

/// Pages of a file with `page_size` pages whose type byte (at `type_at`) is `ty`.
fn pages_of_type(db: &[u8], page_size: usize, type_at: usize, ty: u8) -> Vec<usize> {
    (0..db.len() / page_size)
        .filter(|n| db.get(n * page_size + type_at) == Some(&ty))
        .collect()
}

#[test]
fn a_sqlite_page_loop_is_a_recorded_error() {
    let f = fixture();
    let mut db = f.sqlite.clone();
    let page_size = usize::from(u16::from_be_bytes([db[16], db[17]]));
    // Every interior table page's right-most child pointed back at page 1, the schema's
    // root: whichever b-tree is walked meets a page it has seen.
    let interior = pages_of_type(&db, page_size, 0, 5);
    assert!(!interior.is_empty());
    for n in interior {
        db[n * page_size + 8..n * page_size + 12].copy_from_slice(&(n as u32 + 1).to_be_bytes());
    }
    let c = layer("var/lib/rpm/rpmdb.sqlite", &db);
    assert_eq!(c.partial, None);
    assert_eq!(c.issues.len(), 1, "{:?}", c.issues);
    assert!(
        c.issues[0].reason.contains("linked twice"),
        "{:?}",
        c.issues
    );
}

#[test]
fn a_bdb_overflow_loop_is_a_recorded_error() {
    let mut db = bdb(512, false);
    let overflow = pages_of_type(&db, 512, 25, 7);
    assert!(overflow.len() > 2);
    // An overflow page whose next page is itself.
    let n = overflow[1];
    db[n * 512 + 16..n * 512 + 20].copy_from_slice(&(n as u32).to_le_bytes());
    let c = layer("var/lib/rpm/Packages", &db);
    assert_eq!(c.issues.len(), 1, "{:?}", c.issues);
    assert!(c.issues[0].reason.contains("reused"), "{:?}", c.issues);
    // One header is lost, the walk goes on past it.
    assert_eq!(c.packages.len(), fixture().expected.len() - 1);
}

#[test]
fn a_sqlite_overflow_loop_loses_one_row() {
    let f = fixture();
    let mut db = f.sqlite.clone();
    let page_size = usize::from(u16::from_be_bytes([db[16], db[17]]));
    // The big header's bytes past its first page are on an overflow page: found by its
    // content, that page's next-page link is pointed at itself.
    let big = f
        .blobs
        .iter()
        .map(|(_, b)| b)
        .find(|b| b.len() > 2 * page_size)
        .expect("test");
    let probe = &big[page_size + 100..page_size + 164];
    let at = db
        .windows(probe.len())
        .position(|w| w == probe)
        .expect("test");
    let n = at / page_size;
    db[n * page_size..n * page_size + 4].copy_from_slice(&(n as u32 + 1).to_be_bytes());
    let c = layer("var/lib/rpm/rpmdb.sqlite", &db);
    assert_eq!(c.issues.len(), 1, "{:?}", c.issues);
    assert!(
        c.issues[0].reason.contains("linked twice"),
        "{:?}",
        c.issues
    );
    assert_eq!(c.packages.len(), f.expected.len() - 1);
    assert!(c.packages.iter().all(|p| p.name != "berth-big"));
}

#[test]
fn huge_counts_are_recorded_errors() {
    let f = fixture();
    // Every leaf's cell count at its maximum.
    let mut db = f.sqlite.clone();
    let page_size = usize::from(u16::from_be_bytes([db[16], db[17]]));
    for n in pages_of_type(&db, page_size, 0, 13) {
        db[n * page_size + 3..n * page_size + 5].copy_from_slice(&[0xff, 0xff]);
    }
    let c = layer("var/lib/rpm/rpmdb.sqlite", &db);
    assert!(c.packages.len() < f.expected.len());
    assert_eq!(c.issues.len(), 1, "{:?}", c.issues);
    // The same for every hash page's entry count.
    let mut db = bdb(4096, true);
    for n in pages_of_type(&db, 4096, 25, 13) {
        db[n * 4096 + 20..n * 4096 + 22].copy_from_slice(&[0xff, 0xff]);
    }
    let c = layer("var/lib/rpm/Packages", &db);
    assert_eq!(c.issues.len(), 1, "{:?}", c.issues);
    // A header claiming 65535 tags in a blob far smaller: the row is unreadable, the others
    // are listed.
    let mut db = bdb(4096, false);
    // Its first bytes are contiguous whether it is stored inline or on overflow pages.
    let first = &f.blobs[0].1[..24];
    let at = db
        .windows(first.len())
        .position(|w| w == first)
        .expect("the first header is in the file");
    db[at..at + 4].copy_from_slice(&0xffffu32.to_be_bytes());
    let c = layer("var/lib/rpm/Packages", &db);
    assert_eq!(c.packages.len(), f.expected.len() - 1);
    assert_eq!(c.issues.len(), 1, "{:?}", c.issues);
    assert!(
        c.issues[0].reason.contains("1 unreadable rpm headers"),
        "{:?}",
        c.issues
    );
}

#[test]
fn truncated_databases_never_panic() {
    let f = fixture();
    let be = bdb(512, true);
    for (path, db) in [
        ("var/lib/rpm/rpmdb.sqlite", &f.sqlite),
        ("var/lib/rpm/Packages", &be),
    ] {
        let step = (db.len() / 97).max(1);
        for cut in (0..db.len()).step_by(step) {
            let c = layer(path, &db[..cut]);
            assert!(c.packages.len() <= f.expected.len());
            // A cut file either still holds every page that was read or says why not.
            if c.packages.len() < f.expected.len() {
                assert!(!c.issues.is_empty(), "{path} cut at {cut}: silent loss");
            }
        }
    }
}

#[test]
fn the_package_cap_holds_inside_a_database() {
    let f = fixture();
    let limits = Limits {
        max_packages: 5,
        ..Limits::default()
    };
    for (path, db) in [
        ("var/lib/rpm/rpmdb.sqlite", f.sqlite.clone()),
        ("var/lib/rpm/Packages", bdb(4096, false)),
    ] {
        let t = tar(&[Item::File(path, &db)]);
        let c = catalog_layer(&t[..], &limits);
        assert_eq!(c.packages.len(), 5);
        assert_eq!(c.partial.as_deref(), Some("more than 5 packages"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The real databases with bytes overwritten anywhere: never a panic, never more
    /// packages than were installed, and the layer itself is still read to its end.
    #[test]
    fn corrupted_databases_are_read_or_reported(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        bdb_file in any::<bool>(),
    ) {
        let f = fixture();
        let (path, mut db) = if bdb_file {
            ("var/lib/rpm/Packages", small_bdb().clone())
        } else {
            ("var/lib/rpm/rpmdb.sqlite", f.sqlite.clone())
        };
        for (at, byte) in &edits {
            let i = at.index(db.len());
            db[i] = *byte;
        }
        let c = layer(path, &db);
        prop_assert!(c.packages.len() <= f.expected.len());
        prop_assert_eq!(c.partial, None);
    }
}

/// One BDB `Packages` (512-byte pages, big-endian: the most pages and overflow chains) for
/// the property test, loaded once.
fn small_bdb() -> &'static Vec<u8> {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| bdb(512, true))
}
