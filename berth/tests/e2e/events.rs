//! Events and replication on the durable job queue, with the real binary: webhook events
//! queued while the receiver is down survive a `kill -9` and arrive after the restart;
//! replication copies queued while the target is down do too; two replicas over one
//! PostgreSQL database deliver each event once.
//!
//! The receiver is a small HTTP/1.1 server of the test's own, on a loopback port.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    Berth, Launch, OCI_MANIFEST, free_port, parse_json, push_new_image, run_stdout, tempdir,
    unique, wait_until,
};

/// One request the receiver got.
#[derive(Clone)]
struct Got {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Listens on `port` (retrying while it is still taken) and answers 200 to everything.
    fn start(port: u16) -> Receiver {
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        listener.set_nonblocking(true).expect("nonblocking");
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (Arc::clone(&got), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let g = Arc::clone(&g);
                        std::thread::spawn(move || answer(stream, &g));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Receiver {
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn events(&self) -> Vec<Value> {
        self.got
            .lock()
            .expect("lock")
            .iter()
            .flat_map(|g| match parse_json(&g.body, "a delivery") {
                Value::Array(list) => list,
                v if v.get("events").is_some() => {
                    v["events"].as_array().cloned().unwrap_or_default()
                }
                v => vec![v],
            })
            .collect()
    }

    fn requests(&self) -> Vec<Got> {
        self.got.lock().expect("lock").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request (head and `Content-Length` body), records it, answers 200, closes.
fn answer(stream: TcpStream, got: &Mutex<Vec<Got>>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(&stream);
    let mut headers = HashMap::new();
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    got.lock().expect("lock").push(Got { headers, body });
    let mut w = &stream;
    let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

/// Fast retries and a short lease, so a test does not wait minutes.
const FAST_JOBS: &str =
    "[jobs]\nretry_base_ms = 100\nretry_max_secs = 1\nlease_secs = 3\npoll_ms = 100\n";

/// `berth events list --json` of a server.
fn queued(berth: &Berth) -> Vec<Value> {
    let out = run_stdout(berth.cli().args(["events", "list", "--json"]));
    out.lines()
        .map(|l| parse_json(l.as_bytes(), "a line of berth events list --json"))
        .collect()
}

#[test]
fn webhook_events_queued_survive_a_kill_9() {
    let port = free_port();
    let config = format!(
        "[[webhook]]\nname = \"ci\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\
         events = [\"push\"]\nformat = \"cloudevents\"\nsecret = \"e2e\"\n{FAST_JOBS}"
    );
    let mut berth = Berth::start_with(&config, &[]);
    let work = tempdir();
    let mut pushed = Vec::new();
    for i in 0..3 {
        let dir = work.path().join(format!("img{i}"));
        let (_, digest) = push_new_image(
            &berth,
            &dir,
            &[("f", unique("killed"))],
            &format!("team-a/app:v{i}"),
        );
        pushed.push(digest);
    }
    // Nobody listens yet: the three events wait in the queue.
    let jobs = queued(&berth);
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    assert!(
        jobs.iter()
            .all(|j| j["queue"] == "webhook:ci" && j["state"] == "pending")
    );

    // kill -9, then a receiver, then the restart.
    berth.restart();
    let rx = Receiver::start(port);
    wait_until(
        Duration::from_secs(30),
        "three events after the restart",
        || rx.events().len() >= 3,
    );
    std::thread::sleep(Duration::from_millis(500));
    let events = rx.events();
    let digests: Vec<&str> = events
        .iter()
        .map(|e| e["data"]["digest"].as_str().expect("digest"))
        .collect();
    assert_eq!(digests, pushed, "each once, in push order");
    assert!(
        events
            .iter()
            .all(|e| e["type"] == "io.berth.manifest.pushed")
    );
    for r in rx.requests() {
        assert!(r.headers["x-berth-signature"].starts_with("sha256="));
    }
    wait_until(Duration::from_secs(10), "an empty queue", || {
        queued(&berth).is_empty()
    });
}

#[test]
fn replication_queued_survives_a_kill_9() {
    let target_port = free_port();
    let config = format!(
        "[[replicate]]\nrepositories = \"team-a/*\"\nurl = \"http://127.0.0.1:{target_port}\"\n{FAST_JOBS}"
    );
    let mut source = Berth::start_with(&config, &[]);
    let work = tempdir();
    let (_, digest) = push_new_image(
        &source,
        work.path(),
        &[("f", unique("replicated after a kill"))],
        "team-a/app:v1",
    );
    let jobs = queued(&source);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["kind"], "replicate");

    source.restart();
    let target = Berth::start_launched(
        "",
        &[],
        Launch {
            port: Some(target_port),
            ..Launch::default()
        },
    );
    wait_until(Duration::from_secs(30), "the image on the target", || {
        target
            .manifest("team-a/app", "v1", OCI_MANIFEST)
            .header("docker-content-digest")
            == Some(digest.as_str())
    });
}

#[test]
fn two_replicas_deliver_each_event_once() {
    let port = free_port();
    let rx = Receiver::start(port);
    let url = crate::replicas::schema_url();
    let shared = tempdir();
    let config = format!(
        "[metadata]\nurl = \"{url}\"\n\
         [[webhook]]\nname = \"ci\"\nurl = \"http://127.0.0.1:{port}/hook\"\n{FAST_JOBS}"
    );
    let launch = || Launch {
        data_dir: Some(shared.path().to_owned()),
        ..Launch::default()
    };
    let a = Berth::start_launched(&config, &[], launch());
    let b = Berth::start_launched(&config, &[], launch());
    let work = tempdir();
    let n = 6;
    let mut pushed = HashSet::new();
    for i in 0..n {
        let server = if i % 2 == 0 { &a } else { &b };
        let (_, digest) = push_new_image(
            server,
            &work.path().join(format!("img{i}")),
            &[("f", unique("replicas"))],
            &format!("team-a/r{}:v1", i % 3),
        );
        pushed.insert(digest);
    }
    wait_until(Duration::from_secs(30), "every event", || {
        rx.events().len() >= n
    });
    // Time for a duplicate to show up, if there were one.
    std::thread::sleep(Duration::from_secs(2));
    let events = rx.events();
    let ids: HashSet<&str> = events
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    assert_eq!(events.len(), n, "each event once: {events:#?}");
    assert_eq!(ids.len(), n);
    let digests: HashSet<String> = events
        .iter()
        .map(|e| e["target"]["digest"].as_str().expect("digest").to_owned())
        .collect();
    assert_eq!(digests, pushed);
}

#[test]
fn dead_events_are_listed_and_redelivered_from_the_command_line() {
    let port = free_port();
    let config = format!(
        "[[webhook]]\nname = \"ci\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\
         [jobs]\nmax_attempts = 1\npoll_ms = 100\n"
    );
    let berth = Berth::start_with(&config, &[]);
    let work = tempdir();
    let (_, digest) = push_new_image(
        &berth,
        work.path(),
        &[("f", unique("dead letter"))],
        "team-a/app:v1",
    );
    wait_until(Duration::from_secs(20), "a dead job", || {
        queued(&berth).iter().any(|j| j["state"] == "dead")
    });
    let table = run_stdout(berth.cli().args(["events", "dead"]));
    let row = table
        .lines()
        .find(|l| l.contains("webhook:ci"))
        .unwrap_or_else(|| panic!("no dead job in:\n{table}"));
    assert!(row.contains("team-a/app") && row.contains("dead"), "{row}");
    let id = row.split_whitespace().next().expect("an id column");

    let rx = Receiver::start(port);
    let out = run_stdout(berth.cli().args(["events", "redeliver", id]));
    assert!(out.contains(&format!("job {id} queued again")), "{out}");
    wait_until(Duration::from_secs(20), "the redelivered event", || {
        !rx.events().is_empty()
    });
    assert_eq!(rx.events()[0]["target"]["digest"], digest.as_str());
    wait_until(Duration::from_secs(10), "an empty queue", || {
        queued(&berth).is_empty()
    });
}
