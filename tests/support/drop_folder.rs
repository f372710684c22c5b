//! The drop-folder pipeline, the workload the mount is built for:
//! producers publish files into `incoming/`, a loader checks each file it
//! lists there and `mv`s it to `processed/`, and the result is checked
//! through the mount and directly in S3. The write tests, the fault tests
//! and the soak test run it with their own producers and files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::thread::ScopedJoinHandle;
use std::time::{Duration, Instant};

use super::{eventually, names, TempDir, TestBucket};

/// How the producers put each file into `incoming/`.
#[derive(Clone, Copy, Debug)]
pub enum Publish {
    /// `cp` processes copy local files straight to their names (a loader
    /// listing `incoming/` must never see one half-written).
    Cp,
    /// Shell processes `cp` each local file to a hidden name, then `mv` it
    /// onto its own.
    CpThenMv,
    /// Threads of the test write each file to a hidden name, then rename
    /// it onto its own.
    WriteThenRename,
}

/// Something a program in the pipeline ran into.
#[derive(Debug)]
pub enum Problem {
    /// An operation failed.
    Error(String),
    /// A file or listing that is not what the producers made.
    Wrong(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Error(e) => write!(f, "a program saw an error: {e}"),
            Problem::Wrong(w) => write!(f, "wrong: {w}"),
        }
    }
}

/// The file names one producer publishes, in order.
pub type Names<'a> = Box<dyn Iterator<Item = String> + Send + 'a>;

/// What a run did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Files the producers published.
    pub produced: BTreeSet<String>,
    /// Files the loader moved to `processed/`.
    pub moved: BTreeSet<String>,
    /// Bytes the loader read and found right.
    pub verified_bytes: u64,
}

/// `incoming/` and `processed/` under a mount, and what their files hold.
pub struct DropFolder<'a> {
    root: PathBuf,
    /// What file `name` must hold; `None` for a name no producer makes.
    body: &'a (dyn Fn(&str) -> Option<Vec<u8>> + Sync),
    /// Where problems go: a test that must see none panics (see
    /// [`DropFolder::strict`]); the soak test counts them.
    report: &'a (dyn Fn(Problem) + Sync),
}

impl<'a> DropFolder<'a> {
    /// Makes `incoming/` and `processed/` under `root`.
    pub fn new(
        root: &Path,
        body: &'a (dyn Fn(&str) -> Option<Vec<u8>> + Sync),
        report: &'a (dyn Fn(Problem) + Sync),
    ) -> DropFolder<'a> {
        for dir in ["incoming", "processed"] {
            std::fs::create_dir(root.join(dir))
                .unwrap_or_else(|e| panic!("mkdir {dir}/ through the mount: {e}"));
        }
        DropFolder {
            root: root.to_owned(),
            body,
            report,
        }
    }

    /// A report that fails the test on the first problem.
    pub fn strict(problem: Problem) {
        panic!("{problem}");
    }

    fn incoming(&self) -> PathBuf {
        self.root.join("incoming")
    }

    fn processed(&self) -> PathBuf {
        self.root.join("processed")
    }

    fn body_of(&self, name: &str) -> Vec<u8> {
        (self.body)(name).unwrap_or_else(|| panic!("no producer makes {name}"))
    }

    /// Runs the producers (one per entry of `producers`) and the loader
    /// until every producer is done and the loader finds `incoming/` empty;
    /// fails the test if that takes longer than `within`.
    pub fn run(&self, publish: Publish, producers: Vec<Names<'_>>, within: Duration) -> Outcome {
        let started = Instant::now();
        let outcome = match publish {
            Publish::Cp | Publish::CpThenMv => self.run_processes(publish, producers, within),
            Publish::WriteThenRename => self.run_threads(producers, within),
        };
        eprintln!(
            "pipeline: {} files produced, {} moved in {:.1}s",
            outcome.produced.len(),
            outcome.moved.len(),
            started.elapsed().as_secs_f64()
        );
        outcome
    }

    /// Producers as processes, copying files made locally first.
    fn run_processes(
        &self,
        publish: Publish,
        producers: Vec<Names<'_>>,
        within: Duration,
    ) -> Outcome {
        let src = TempDir::new("drop-folder-src");
        let mut planned = BTreeSet::new();
        for (p, names) in producers.into_iter().enumerate() {
            let dir = src.path().join(format!("p{p}"));
            std::fs::create_dir(&dir).unwrap();
            for name in names {
                std::fs::write(dir.join(&name), self.body_of(&name)).unwrap();
                planned.insert(name);
            }
        }
        let inc = self.incoming();
        let mut children: Vec<Option<Child>> = Vec::new();
        for entry in std::fs::read_dir(src.path()).unwrap() {
            let dir = entry.unwrap().path();
            let script = match publish {
                Publish::Cp => format!(
                    "for f in '{}'/*; do cp \"$f\" '{}/' || exit 1; done",
                    dir.display(),
                    inc.display()
                ),
                _ => format!(
                    "set -e; cd '{}'; for f in *; do cp \"$f\" '{inc}/'.\"$f\".tmp; mv '{inc}/'.\"$f\".tmp '{inc}/'\"$f\"; done",
                    dir.display(),
                    inc = inc.display()
                ),
            };
            let child = Command::new("bash")
                .arg("-c")
                .arg(script)
                .spawn()
                .expect("start a producer");
            children.push(Some(child));
        }
        let mut done = || {
            for slot in children.iter_mut() {
                let Some(child) = slot else { continue };
                if let Some(status) = child.try_wait().unwrap() {
                    if !status.success() {
                        (self.report)(Problem::Error(format!("a producer failed ({status})")));
                    }
                    *slot = None;
                }
            }
            children.iter().all(Option::is_none)
        };
        let mut outcome = Outcome::default();
        self.load(&mut done, within, &mut outcome);
        outcome.produced = planned;
        outcome
    }

    /// Producers as threads of the test, writing each file from memory.
    fn run_threads(&self, producers: Vec<Names<'_>>, within: Duration) -> Outcome {
        let produced = Mutex::new(BTreeSet::new());
        let mut outcome = Outcome::default();
        std::thread::scope(|scope| {
            let threads: Vec<ScopedJoinHandle<()>> = producers
                .into_iter()
                .map(|names| scope.spawn(|| self.produce(names, &produced)))
                .collect();
            let mut done = || threads.iter().all(|t| t.is_finished());
            self.load(&mut done, within, &mut outcome);
            for t in threads {
                t.join().expect("a producer panicked");
            }
        });
        outcome.produced = produced.into_inner().unwrap();
        outcome
    }

    /// One producer thread: each file to a hidden name, then onto its own.
    fn produce(&self, names: Names<'_>, produced: &Mutex<BTreeSet<String>>) {
        let inc = self.incoming();
        for name in names {
            let tmp = inc.join(format!(".{name}.tmp"));
            if let Err(e) = std::fs::write(&tmp, self.body_of(&name)) {
                (self.report)(Problem::Error(format!("write {}: {e}", tmp.display())));
                let _ = std::fs::remove_file(&tmp);
                continue;
            }
            if let Err(e) = std::fs::rename(&tmp, inc.join(&name)) {
                (self.report)(Problem::Error(format!("rename {name} into place: {e}")));
                let _ = std::fs::remove_file(&tmp);
                continue;
            }
            produced.lock().unwrap().insert(name);
        }
    }

    /// The loader: lists `incoming/` (hidden names are files still being
    /// published), reads each file and checks its bytes, and `mv`s it to
    /// `processed/`; until the producers are `done` and it finds nothing.
    fn load(&self, done: &mut dyn FnMut() -> bool, within: Duration, outcome: &mut Outcome) {
        let (inc, processed) = (self.incoming(), self.processed());
        eventually(
            "the loader to empty incoming/ once the producers are done",
            within,
            || {
                // Asked before listing: a file published after the listing
                // was made is seen by the next one.
                let finished = done();
                let listed: Vec<String> = match std::fs::read_dir(&inc) {
                    Ok(dir) => dir
                        .filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .filter(|n| !n.starts_with('.'))
                        .collect(),
                    Err(e) => {
                        (self.report)(Problem::Error(format!("listing incoming/: {e}")));
                        return false;
                    }
                };
                if listed.is_empty() {
                    return finished;
                }
                for name in listed {
                    let path = inc.join(&name);
                    let Some(want) = (self.body)(&name) else {
                        (self.report)(Problem::Wrong(format!(
                            "unexpected file {name} in incoming/"
                        )));
                        continue;
                    };
                    match std::fs::read(&path) {
                        Ok(data) if data == want => outcome.verified_bytes += data.len() as u64,
                        Ok(data) => (self.report)(Problem::Wrong(format!(
                            "{name}: the loader read {} bytes other than the {} the producer wrote",
                            data.len(),
                            want.len()
                        ))),
                        Err(e) => {
                            (self.report)(Problem::Error(format!("reading incoming/{name}: {e}")));
                            continue;
                        }
                    }
                    let out = Command::new("mv")
                        .arg(&path)
                        .arg(processed.join(&name))
                        .output()
                        .unwrap();
                    if !out.status.success() {
                        (self.report)(Problem::Error(format!(
                            "mv {name}: {}",
                            String::from_utf8_lossy(&out.stderr)
                        )));
                    } else if !outcome.moved.insert(name.clone()) {
                        (self.report)(Problem::Wrong(format!("{name} moved twice")));
                    }
                }
                false
            },
        );
    }

    /// Checks that every file produced was moved exactly once, and that
    /// `processed/` holds exactly them, byte for byte, with nothing left in
    /// `incoming/` or half-uploaded: through the mount and in S3.
    pub fn check(&self, b: &TestBucket, outcome: &Outcome) {
        assert_eq!(
            outcome.moved, outcome.produced,
            "every file produced is loaded exactly once"
        );
        assert!(
            names(&self.incoming()).is_empty(),
            "incoming/ is empty through the mount: {:?}",
            names(&self.incoming())
        );
        assert_eq!(
            names(&self.processed())
                .into_iter()
                .collect::<BTreeSet<_>>(),
            outcome.produced,
            "processed/ through the mount"
        );
        // (mkdir stored the directory markers `incoming/` and `processed/`.)
        assert_eq!(
            b.names_under("processed"),
            outcome.produced,
            "objects under processed/ in S3"
        );
        let left = b.names_under("incoming");
        assert!(
            left.is_empty(),
            "objects left under incoming/ in S3: {left:?}"
        );
        for name in &outcome.produced {
            let got = b.get(&format!("processed/{name}"));
            let want = self.body_of(name);
            assert!(
                got == want,
                "processed/{name} differs in S3 ({} bytes, expected {})",
                got.len(),
                want.len()
            );
        }
        assert!(
            b.open_multipart_uploads().is_empty(),
            "multipart uploads left open: {:?}",
            b.open_multipart_uploads()
        );
    }
}
