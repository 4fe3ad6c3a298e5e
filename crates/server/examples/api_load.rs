//! A signed-request load generator for API latency benchmarks (bench/api.py).
//!
//! Each client keeps one HTTP/1.1 keep-alive connection and sends V3-signed calls back to back (a new nonce and
//! signature per call, as the SDKs do), so the figures include the server's signature check, RAM, catalog and
//! rendering. Prints one JSON object: counts by answer code and latency percentiles in milliseconds.
//!
//!   api_load --addr 127.0.0.1:8080 --key ID --secret S --action DescribeBackups \
//!            --param DBInstanceId=dds-bench --param PageSize=30 --clients 64 --seconds 10
//!
//! `{i}` in a parameter value is replaced by the client number (0-based), e.g. `--param DBInstanceId=dds-{i}`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ddsvault_api::{sign_v3, Secret, SignRequest, DDS_API_VERSION};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Clone, Debug)]
struct Opts {
    addr: String,
    key: String,
    secret: String,
    action: String,
    params: Vec<(String, String)>,
    clients: usize,
    seconds: u64,
    max_calls_per_client: u64,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        addr: "127.0.0.1:8080".into(),
        key: String::new(),
        secret: String::new(),
        action: String::new(),
        params: Vec::new(),
        clients: 1,
        seconds: 10,
        max_calls_per_client: u64::MAX,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => o.addr = value()?,
            "--key" => o.key = value()?,
            "--secret" => o.secret = value()?,
            "--action" => o.action = value()?,
            "--param" => {
                let v = value()?;
                let (k, v) = v.split_once('=').ok_or("--param takes K=V")?;
                o.params.push((k.to_string(), v.to_string()));
            }
            "--clients" => o.clients = value()?.parse().map_err(|e| format!("--clients: {e}"))?,
            "--seconds" => o.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--max-calls" => {
                o.max_calls_per_client =
                    value()?.parse().map_err(|e| format!("--max-calls: {e}"))?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if o.key.is_empty() || o.secret.is_empty() || o.action.is_empty() {
        return Err("--key, --secret and --action are required".into());
    }
    Ok(o)
}

/// One answer: the Dds code (`OK` for success) and the latency.
type Sample = (String, Duration);

async fn client(o: Opts, n: usize, deadline: Instant) -> Result<Vec<Sample>, String> {
    let stream = TcpStream::connect(&o.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", o.addr))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut samples = Vec::new();
    while Instant::now() < deadline && (samples.len() as u64) < o.max_calls_per_client {
        let mut req = SignRequest::new(
            "POST",
            &o.addr,
            &o.action,
            DDS_API_VERSION,
            &o.key,
            Secret::new(o.secret.clone()),
        );
        for (k, v) in &o.params {
            req = req.with_query(k, &v.replace("{i}", &n.to_string()));
        }
        let signed = sign_v3(&req);
        let mut head = format!("POST /?{} HTTP/1.1\r\n", signed.query);
        for (k, v) in &signed.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("content-length: {}\r\n\r\n", signed.body.len()));
        let started = Instant::now();
        write
            .write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        write
            .write_all(&signed.body)
            .await
            .map_err(|e| e.to_string())?;
        let (status, body) = read_response(&mut read).await?;
        let elapsed = started.elapsed();
        let code = if status == 200 {
            "OK".to_string()
        } else {
            serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("Code").and_then(|c| c.as_str()).map(str::to_string))
                .unwrap_or_else(|| format!("HTTP{status}"))
        };
        samples.push((code, elapsed));
    }
    Ok(samples)
}

async fn read_response<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<(u16, Vec<u8>), String> {
    let mut line = String::new();
    r.read_line(&mut line).await.map_err(|e| e.to_string())?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("bad status line {line:?}"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line).await.map_err(|e| e.to_string())?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().map_err(|_| format!("bad length {v:?}"))?;
            }
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    Ok((status, body))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

fn summary(samples: &mut [Duration]) -> serde_json::Value {
    samples.sort();
    serde_json::json!({
        "calls": samples.len(),
        "p50_ms": percentile(samples, 50.0),
        "p90_ms": percentile(samples, 90.0),
        "p99_ms": percentile(samples, 99.0),
        "max_ms": samples.last().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0),
    })
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let o = parse_args()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(o.seconds);
    let handles: Vec<_> = (0..o.clients)
        .map(|n| tokio::spawn(client(o.clone(), n, deadline)))
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.map_err(|e| e.to_string())??);
    }
    let wall = started.elapsed().as_secs_f64();
    let mut by_code: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for (code, d) in &all {
        by_code.entry(code.clone()).or_default().push(*d);
    }
    let mut overall: Vec<Duration> = all.iter().map(|(_, d)| *d).collect();
    let codes: serde_json::Map<String, serde_json::Value> = by_code
        .into_iter()
        .map(|(k, mut v)| (k, summary(&mut v)))
        .collect();
    let out = serde_json::json!({
        "action": o.action,
        "clients": o.clients,
        "wall_seconds": wall,
        "calls_per_second": all.len() as f64 / wall,
        "overall": summary(&mut overall),
        "by_code": codes,
    });
    println!("{out}");
    Ok(())
}
