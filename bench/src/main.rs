//! `berth-load`: a raw HTTP load client for registry benchmarks. It measures what the
//! server does, not what a full client (skopeo, containerd) spends on its own work.
//!
//! * `rps`: one URL with N keep-alive connections for D seconds → requests/s, p50, p99.
//! * `push`: a generated blob of S bytes, monolithic or in chunks → seconds.
//! * `get`: one blob, streamed and discarded → seconds.
//! * `pull`: C concurrent pulls of an image (manifest, config, layers), R rounds → seconds.
//! * `push-images`: N small images (config, one layer, manifest by tag), C at a time →
//!   images/s.
//! * `rate`: POSTs a body at a fixed rate (open loop: each request is due at its own time
//!   and its latency counts from then, so a stall delays the requests behind it in the
//!   figures too) → achieved rate, p50, p99, max. HTTPS with `--ca`.
//! * `receive`: a webhook receiver answering 204 to every POST; `GET /count` says how
//!   many it got. Runs until killed.
//!
//! Every command prints one JSON object on stdout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Rps {
        url: String,
        #[arg(long, default_value = "GET")]
        method: String,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Extra header, `Name: value`.
        #[arg(long)]
        header: Vec<String>,
    },
    Push {
        /// Registry base URL, e.g. http://127.0.0.1:5000
        base: String,
        repo: String,
        #[arg(long)]
        size: u64,
        /// Chunk size for a chunked upload; monolithic if absent.
        #[arg(long)]
        chunk: Option<u64>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    Get {
        url: String,
    },
    Pull {
        base: String,
        repo: String,
        reference: String,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    PushImages {
        base: String,
        repo: String,
        #[arg(long, default_value_t = 200)]
        images: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Bytes of each image's one layer.
        #[arg(long, default_value_t = 4096)]
        layer_size: u64,
        /// Makes this run's blobs differ from other runs'.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    Receive {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    Rate {
        url: String,
        /// The request body (JSON), POSTed every time.
        #[arg(long)]
        body: std::path::PathBuf,
        /// Requests per second.
        #[arg(long, default_value_t = 1000.0)]
        rps: f64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Seconds at the same rate before measuring (connections, caches).
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// PEM CA the server's certificate must chain to (the only one trusted).
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
    },
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// Deterministic pseudo-random bytes without a file and without spending the client's CPU:
/// an 8 MiB random pool is made once (xorshift), and each 1 MiB block of the blob is a
/// zero-copy slice of it at an offset that depends on the seed and the block number. The
/// servers see incompressible data; the client mostly hands out references.
struct Gen {
    pool: Bytes,
    seed: u64,
    block: u64,
    left: u64,
}

impl Gen {
    const BLOCK: usize = 1 << 20;
    const POOL: usize = 8 << 20;

    fn new(seed: u64, len: u64) -> Gen {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut pool = Vec::with_capacity(Self::POOL + Self::BLOCK);
        while pool.len() < Self::POOL + Self::BLOCK {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            pool.extend_from_slice(&state.to_le_bytes());
        }
        Gen {
            pool: Bytes::from(pool),
            seed,
            block: 0,
            left: len,
        }
    }

    fn next_block(&mut self, max: u64) -> Option<Bytes> {
        if self.left == 0 || max == 0 {
            return None;
        }
        let n = (Self::BLOCK as u64).min(self.left).min(max) as usize;
        let mix = (self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ self.block.wrapping_mul(0xBF58_476D_1CE4_E5B9))
            >> 7;
        let at = (mix % (Self::POOL as u64)) as usize;
        self.block += 1;
        self.left -= n as u64;
        Some(self.pool.slice(at..at + n))
    }

    fn stream(
        mut self,
        limit: u64,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
        let mut remaining = limit;
        futures_util::stream::iter(std::iter::from_fn(move || {
            let b = self.next_block(remaining)?;
            remaining -= b.len() as u64;
            Some(Ok(b))
        }))
    }
}

fn digest_of_generated(seed: u64, size: u64) -> String {
    let mut g = Gen::new(seed, size);
    let mut h = Sha256::new();
    while let Some(b) = g.next_block(u64::MAX) {
        h.update(&b);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

fn client(connections: usize) -> anyhow::Result<reqwest::Client> {
    // reqwest is built with rustls and no provider (the workspace uses ring only).
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(600))
        .build()?)
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http") {
        location.to_owned()
    } else {
        format!("{}{location}", base.trim_end_matches('/'))
    }
}

async fn rps(
    url: String,
    method: String,
    connections: usize,
    seconds: f64,
    headers: Vec<String>,
) -> anyhow::Result<()> {
    let http = client(connections)?;
    let method: reqwest::Method = method.parse().context("method")?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (http, url, method, stop, headers) = (
            http.clone(),
            url.clone(),
            method.clone(),
            stop.clone(),
            headers.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let mut req = http.request(method.clone(), &url);
                for h in &headers {
                    if let Some((k, v)) = h.split_once(':') {
                        req = req.header(k.trim(), v.trim());
                    }
                }
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{}",
        serde_json::json!({
            "requests": all.len(), "errors": errors, "rps": all.len() as f64 / elapsed,
            "p50_ms": pct(0.50) as f64 / 1000.0, "p99_ms": pct(0.99) as f64 / 1000.0,
        })
    );
    Ok(())
}

async fn rate(
    url: String,
    body: std::path::PathBuf,
    rps: f64,
    seconds: f64,
    warmup: f64,
    ca: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30));
    if let Some(ca) = &ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        builder = builder.tls_certs_only([reqwest::Certificate::from_pem(&pem)?]);
    }
    let http = builder.build()?;
    let body =
        Bytes::from(std::fs::read(&body).with_context(|| format!("reading {}", body.display()))?);
    let interval = Duration::from_secs_f64(1.0 / rps);
    let total = ((warmup + seconds) * rps) as u64;
    let measured_from = (warmup * rps) as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let ok = match r {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            };
            (i, ok, due.elapsed().as_micros() as u64)
        }));
    }
    let sent_for = start.elapsed().as_secs_f64();
    let mut lat = Vec::with_capacity(total as usize);
    let mut errors = 0u64;
    for t in tasks {
        let (i, ok, micros) = t.await?;
        if i < measured_from {
            continue;
        }
        if ok {
            lat.push(micros);
        } else {
            errors += 1;
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "{}",
        serde_json::json!({
            "requests": lat.len(), "errors": errors, "target_rps": rps,
            "achieved_rps": total as f64 / sent_for,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "p999_ms": pct(0.999),
            "max_ms": lat.last().copied().unwrap_or(0) as f64 / 1000.0,
        })
    );
    Ok(())
}

async fn push(
    base: String,
    repo: String,
    size: u64,
    chunk: Option<u64>,
    seed: u64,
) -> anyhow::Result<()> {
    let digest = digest_of_generated(seed, size);
    let http = client(1)?;
    let started = Instant::now();
    match chunk {
        None => {
            let r = http
                .post(format!("{base}/v2/{repo}/blobs/uploads/"))
                .send()
                .await?;
            let loc = absolute(
                &base,
                r.headers()
                    .get("location")
                    .context("no Location")?
                    .to_str()?,
            );
            let sep = if loc.contains('?') { '&' } else { '?' };
            let r = http
                .put(format!("{loc}{sep}digest={digest}"))
                .header("content-type", "application/octet-stream")
                .header("content-length", size)
                .body(reqwest::Body::wrap_stream(
                    Gen::new(seed, size).stream(size),
                ))
                .send()
                .await?;
            if r.status() != reqwest::StatusCode::CREATED {
                bail!("monolithic push: {}", r.status());
            }
        }
        Some(chunk) => {
            let r = http
                .post(format!("{base}/v2/{repo}/blobs/uploads/"))
                .send()
                .await?;
            let mut loc = absolute(
                &base,
                r.headers()
                    .get("location")
                    .context("no Location")?
                    .to_str()?,
            );
            let mut gen_state = Gen::new(seed, size);
            let mut offset = 0u64;
            while offset < size {
                let n = chunk.min(size - offset);
                // Carve this chunk out of the generator without buffering it.
                let mut blocks = Vec::new();
                let mut got = 0;
                while got < n {
                    let b = gen_state.next_block(n - got).context("generator ended")?;
                    got += b.len() as u64;
                    blocks.push(Ok::<_, std::io::Error>(b));
                }
                let r = http
                    .patch(&loc)
                    .header("content-type", "application/octet-stream")
                    .header("content-range", format!("{offset}-{}", offset + n - 1))
                    .header("content-length", n)
                    .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                        blocks,
                    )))
                    .send()
                    .await?;
                if r.status() != reqwest::StatusCode::ACCEPTED {
                    bail!("chunk at {offset}: {}", r.status());
                }
                loc = absolute(
                    &base,
                    r.headers()
                        .get("location")
                        .context("no Location")?
                        .to_str()?,
                );
                offset += n;
            }
            let sep = if loc.contains('?') { '&' } else { '?' };
            let r = http
                .put(format!("{loc}{sep}digest={digest}"))
                .header("content-length", 0)
                .send()
                .await?;
            if r.status() != reqwest::StatusCode::CREATED {
                bail!("chunked finish: {}", r.status());
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"digest": digest, "bytes": size, "seconds": secs})
    );
    Ok(())
}

async fn get(url: String) -> anyhow::Result<()> {
    let http = client(1)?;
    let started = Instant::now();
    let r = http.get(&url).send().await?;
    if !r.status().is_success() {
        bail!("GET {url}: {}", r.status());
    }
    let mut n = 0u64;
    let mut s = r.bytes_stream();
    while let Some(b) = s.next().await {
        n += b?.len() as u64;
    }
    println!(
        "{}",
        serde_json::json!({"bytes": n, "seconds": started.elapsed().as_secs_f64()})
    );
    Ok(())
}

async fn pull_once(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
) -> anyhow::Result<u64> {
    let m = http
        .get(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("accept", ACCEPT)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&m)?;
    let mut digests: Vec<String> = Vec::new();
    if let Some(c) = v["config"]["digest"].as_str() {
        digests.push(c.to_owned());
    }
    for l in v["layers"].as_array().into_iter().flatten() {
        if let Some(d) = l["digest"].as_str() {
            digests.push(d.to_owned());
        }
    }
    let mut bytes = m.len() as u64;
    for d in digests {
        let mut s = http
            .get(format!("{base}/v2/{repo}/blobs/{d}"))
            .send()
            .await?
            .error_for_status()?
            .bytes_stream();
        while let Some(b) = s.next().await {
            bytes += b?.len() as u64;
        }
    }
    Ok(bytes)
}

async fn pull(
    base: String,
    repo: String,
    reference: String,
    concurrency: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    let http = client(concurrency)?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, base, repo, reference) =
            (http.clone(), base.clone(), repo.clone(), reference.clone());
        tasks.push(tokio::spawn(async move {
            let mut total = 0;
            for _ in 0..rounds {
                total += pull_once(&http, &base, &repo, &reference).await?;
            }
            Ok::<u64, anyhow::Error>(total)
        }));
    }
    let mut bytes = 0;
    for t in tasks {
        bytes += t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"pulls": concurrency * rounds, "bytes": bytes, "seconds": secs})
    );
    Ok(())
}

/// Pushes one blob in one request (`POST ?digest=`).
async fn push_bytes(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    data: Bytes,
) -> anyhow::Result<String> {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    let r = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(data)
        .send()
        .await?;
    if r.status() != reqwest::StatusCode::CREATED {
        bail!("blob push: {}", r.status());
    }
    Ok(digest)
}

async fn push_image(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    seed: u64,
    i: usize,
    layer_size: u64,
) -> anyhow::Result<()> {
    let config = Bytes::from(format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"run\":{seed},\"image\":{i}}}"
    ));
    let config_len = config.len();
    let mut layer = Vec::with_capacity(layer_size as usize);
    let mut g = Gen::new(
        seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
        layer_size,
    );
    while let Some(b) = g.next_block(u64::MAX) {
        layer.extend_from_slice(&b);
    }
    let c = push_bytes(http, base, repo, config).await?;
    let l = push_bytes(http, base, repo, Bytes::from(layer)).await?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c, "size": config_len},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l, "size": layer_size}],
    });
    let r = http
        .put(format!("{base}/v2/{repo}/manifests/s{seed}-{i}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&manifest)?)
        .send()
        .await?;
    if r.status() != reqwest::StatusCode::CREATED {
        bail!("manifest push: {}", r.status());
    }
    Ok(())
}

async fn push_images(
    base: String,
    repo: String,
    images: usize,
    concurrency: usize,
    layer_size: u64,
    seed: u64,
) -> anyhow::Result<()> {
    let http = client(concurrency)?;
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..images)
        .map(|i| {
            let (http, base, repo) = (&http, &base, &repo);
            async move { push_image(http, base, repo, seed, i, layer_size).await }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let errors = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        eprintln!("first error: {e:#}");
    }
    println!(
        "{}",
        serde_json::json!({
            "images": images, "errors": errors, "seconds": secs,
            "images_per_s": images as f64 / secs,
        })
    );
    Ok(())
}

/// A webhook receiver that costs as little as possible: reads each body, answers 204.
async fn receive(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    use std::sync::atomic::AtomicU64;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "{}",
        serde_json::json!({"listening": listener.local_addr()?.to_string()})
    );
    let count = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let (count, bytes) = (count.clone(), bytes.clone());
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let (count, bytes) = (count.clone(), bytes.clone());
            async move {
                use http_body_util::BodyExt as _;
                let body = if req.method() == hyper::Method::GET {
                    Bytes::from(
                        serde_json::json!({
                            "requests": count.load(Ordering::Relaxed),
                            "bytes": bytes.load(Ordering::Relaxed),
                        })
                        .to_string(),
                    )
                } else {
                    let got = req.into_body().collect().await.map(|c| c.to_bytes());
                    count.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(got.map(|b| b.len() as u64).unwrap_or(0), Ordering::Relaxed);
                    Bytes::new()
                };
                let status = if body.is_empty() { 204 } else { 200 };
                let mut resp = hyper::Response::new(http_body_util::Full::new(body));
                *resp.status_mut() = hyper::StatusCode::from_u16(status)?;
                Ok::<_, anyhow::Error>(resp)
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.cmd {
            Cmd::Rps {
                url,
                method,
                connections,
                seconds,
                header,
            } => rps(url, method, connections, seconds, header).await,
            Cmd::Push {
                base,
                repo,
                size,
                chunk,
                seed,
            } => push(base, repo, size, chunk, seed).await,
            Cmd::Get { url } => get(url).await,
            Cmd::Pull {
                base,
                repo,
                reference,
                concurrency,
                rounds,
            } => pull(base, repo, reference, concurrency, rounds).await,
            Cmd::PushImages {
                base,
                repo,
                images,
                concurrency,
                layer_size,
                seed,
            } => push_images(base, repo, images, concurrency, layer_size, seed).await,
            Cmd::Receive { listen } => receive(listen).await,
            Cmd::Rate {
                url,
                body,
                rps,
                seconds,
                warmup,
                ca,
            } => rate(url, body, rps, seconds, warmup, ca).await,
        }
    })
}
