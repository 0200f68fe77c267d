//! Progress bars on stderr for the long commands, drawn only when stderr is a terminal (in
//! CI logs and pipes a bar is noise). The library crates report progress through small
//! traits and callbacks; this module turns those reports into indicatif bars.

use std::io::IsTerminal;
use std::sync::Mutex;

use berth_oci::{Digest, Reference, RepoName};
use berth_registry::gc::GcProgress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

fn target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

fn styled(bar: ProgressBar, template: &str) -> ProgressBar {
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// One bar over the bytes of a copy (`export`, `import`, `mirror`), labelled with the
/// blob in flight.
pub struct TransferBar {
    bar: ProgressBar,
    /// The total is unknown up front: each blob adds its size as it starts.
    grow: bool,
    /// Printed with each finished image (`exported team-a/app:1.0 (sha256:...)`).
    verb: Option<&'static str>,
}

impl TransferBar {
    /// A bar of `total` bytes, or one that grows with each blob when `None`.
    pub fn new(total: Option<u64>, verb: Option<&'static str>) -> TransferBar {
        let bar = styled(
            ProgressBar::with_draw_target(Some(total.unwrap_or(0)), target()),
            "{msg:20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        );
        TransferBar {
            bar,
            grow: total.is_none(),
            verb,
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl berth_registry::transfer::Progress for TransferBar {
    fn blob_started(&self, digest: &Digest, size: Option<u64>) {
        if self.grow {
            self.bar.inc_length(size.unwrap_or(0));
        }
        self.bar
            .set_message(digest.hex().chars().take(12).collect::<String>());
    }

    fn bytes(&self, n: u64) {
        self.bar.inc(n);
    }

    fn image_done(&self, repo: &RepoName, reference: &Reference, digest: &Digest) {
        if let Some(verb) = self.verb {
            let sep = match reference {
                Reference::Tag(_) => ':',
                Reference::Digest(_) => '@',
            };
            self.bar
                .suspend(|| eprintln!("{verb} {repo}{sep}{reference} ({digest})"));
        }
    }

    fn warning(&self, message: &str) {
        self.bar.suspend(|| eprintln!("warning: {message}"));
    }
}

/// `fsck`'s bars: one per phase, in bytes for blobs and in items elsewhere.
pub struct PhaseBar {
    current: Mutex<Option<ProgressBar>>,
}

impl PhaseBar {
    pub fn new() -> PhaseBar {
        PhaseBar {
            current: Mutex::new(None),
        }
    }

    pub fn finish(&self) {
        if let Ok(mut current) = self.current.lock()
            && let Some(bar) = current.take()
        {
            bar.finish_and_clear();
        }
    }
}

impl berth_registry::fsck::Progress for PhaseBar {
    fn phase(&self, name: &'static str, total: Option<u64>) {
        self.finish();
        let template = match (name, total) {
            ("blobs", Some(_)) => {
                "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
            }
            (_, Some(_)) => "{msg:>10} [{bar:40}] {pos}/{len}",
            (_, None) => "{msg:>10} {spinner} {pos}",
        };
        let bar = styled(ProgressBar::with_draw_target(total, target()), template);
        bar.set_message(name);
        if let Ok(mut current) = self.current.lock() {
            *current = Some(bar);
        }
    }

    fn advance(&self, n: u64) {
        if let Ok(current) = self.current.lock()
            && let Some(bar) = current.as_ref()
        {
            bar.inc(n);
        }
    }
}

/// `gc`'s spinner, told which phase the collection is in.
pub struct GcSpinner {
    bar: ProgressBar,
}

impl GcSpinner {
    pub fn new() -> GcSpinner {
        let bar = ProgressBar::with_draw_target(None, target());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        GcSpinner { bar }
    }

    pub fn report(&self, p: GcProgress) {
        match p {
            GcProgress::Repository { done, total } => {
                self.bar
                    .set_message(format!("marking and sweeping repositories {done}/{total}"));
            }
            GcProgress::Blobs { examined } => {
                self.bar
                    .set_message(format!("sweeping orphaned blobs: {examined} examined"));
            }
        }
        self.bar.tick();
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A bar over a count of items with a known total (`keys rewrap`).
pub struct CountBar {
    bar: ProgressBar,
}

impl CountBar {
    pub fn new(what: &'static str) -> CountBar {
        let bar = styled(
            ProgressBar::with_draw_target(Some(0), target()),
            &format!("{{bar:40}} {{pos}}/{{len}} {what} {{per_sec}} eta {{eta}}"),
        );
        CountBar { bar }
    }

    pub fn set(&self, done: u64, total: u64) {
        self.bar.set_length(total);
        self.bar.set_position(done);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
