//! `namm-serve` as a client sees it: real server processes on loopback with the real model,
//! the official `openai` Python client and raw HTTP/1.0 over a socket.

use namm_tests::{bin, free_port, model_path, Proc};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const POLICY: &str = "snapkv:budget=0.25";

/// A prompt long enough (~1100 tokens) for the policy to evict at T = 512 and 1024.
fn long_prompt(key: u32) -> String {
    let filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. ";
    format!(
        "There is a pass key hidden in this text. Remember it.\n{}The pass key is {key}. \
         Remember it. {key} is the pass key.\n{}What is the pass key?",
        filler.repeat(33),
        filler.repeat(27)
    )
}

struct Server {
    proc: Proc,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut args: Vec<String> = vec![
            "--model".into(),
            model_path().display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--policy".into(),
            POLICY.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::spawn("namm-serve", &bin("namm-serve"), &args, dir.path());
        let server = Server {
            proc,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok((200, _)) = server.try_request("GET", "/health", &[], "") {
                return server;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("namm-serve did not answer /health: {}", server.proc.log());
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(300)))?;
        let mut req = format!("{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())?;
        s.write_all(body.as_bytes())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((status, body.to_string()))
    }

    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.try_request(method, path, &[], body)
            .expect("the request failed")
    }

    fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.request("POST", path, &body.to_string());
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
        (status, value)
    }

    /// Polls a metric until `ok` holds (the engine thread updates it right after the event a
    /// client sees).
    fn wait_metric(&self, name: &str, ok: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ok(self.metric(name)) {
            assert!(
                Instant::now() < deadline,
                "{name} = {}: {}",
                self.metric(name),
                self.proc.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.request("GET", "/metrics", "");
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
    }
}

/// A streamed completion that goes on for `max_tokens` (a count the model keeps continuing,
/// with no chat turn to end it), for tests that need a request still running.
fn counting(max_tokens: u32) -> String {
    let numbers: Vec<String> = (1..=40).map(|i| i.to_string()).collect();
    json!({"prompt": format!("{},", numbers.join(", ")), "temperature": 0,
           "max_tokens": max_tokens, "stream": true})
    .to_string()
}

/// The `data:` payloads of a server-sent-event body.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

fn streamed_text(body: &str, chat: bool) -> String {
    sse_data(body)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|v| {
            let choice = v["choices"].get(0)?.clone();
            let piece = if chat {
                &choice["delta"]["content"]
            } else {
                &choice["text"]
            };
            piece.as_str().map(str::to_string)
        })
        .collect()
}

fn generate(prompt: &str, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompt.txt");
    std::fs::write(&file, prompt).unwrap();
    let out = Command::new(bin("namm"))
        .args(["generate", "--json", "--temperature", "0", "--model"])
        .arg(model_path())
        .arg("--prompt-file")
        .arg(&file)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "namm generate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_openai_client_raw_http_and_namm_generate_agree() {
    let server = Server::start(&[]);
    let prompt = long_prompt(48213);
    let alone = generate(&prompt, &["--policy", POLICY, "--max-tokens", "24"]);
    let answer = alone["text"].as_str().unwrap().to_string();
    assert!(alone["kept_fraction"].as_f64().unwrap() < 0.6, "{alone}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompt.txt");
    std::fs::write(&file, &prompt).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/openai_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(server.base_url())
        .arg(&file)
        .arg("24")
        .arg(POLICY)
        .output()
        .expect("python3 is needed (with the `openai` package: pip install openai)");
    assert!(
        out.status.success(),
        "openai client: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.proc.log()
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["text"], answer, "{got}");
    assert_eq!(got["stream_text"], answer, "{got}");
    let usage = &got["usage"];
    assert_eq!(usage["prompt_tokens"], alone["prompt_tokens"], "{got}");
    assert_eq!(usage["kept_fraction"], alone["kept_fraction"], "{got}");
    assert!(
        usage["peak_kv_bytes"].as_u64().unwrap() < usage["full_kv_bytes"].as_u64().unwrap(),
        "{got}"
    );
    assert_eq!(
        got["stream_usage"]["completion_tokens"], usage["completion_tokens"],
        "{got}"
    );
    let completion = generate(
        "The capital of France is",
        &["--no-chat", "--max-tokens", "8"],
    );
    assert_eq!(got["completion"], completion["text"], "{got}");

    let ask = json!({"messages": [{"role": "user", "content": prompt}], "temperature": 0,
                     "max_tokens": 24, "memory_policy": POLICY});
    let (status, whole) = server.post_json("/v1/chat/completions", &ask);
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["choices"][0]["message"]["content"], answer);
    let mut streaming = ask.clone();
    streaming["stream"] = json!(true);
    let (status, body) = server.request("POST", "/v1/chat/completions", &streaming.to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!(streamed_text(&body, true), answer);
    assert_eq!(sse_data(&body).last().map(String::as_str), Some("[DONE]"));
}

#[test]
fn eight_concurrent_streams_each_get_their_own_answer() {
    let server = Server::start(&["--max-concurrent", "8"]);
    // Six short prompts and two that prefill over a policy invocation while the others decode.
    let words = ["apple", "river", "candle", "orbit", "violet", "granite"];
    let mut prompts: Vec<String> = words
        .iter()
        .map(|w| format!("Write the word \"{w}\" three times, separated by commas."))
        .collect();
    prompts.extend([long_prompt(31337), long_prompt(90210)]);
    let ask = |prompt: &str, stream: bool| {
        json!({"messages": [{"role": "user", "content": prompt}], "temperature": 0,
               "max_tokens": 16, "stream": stream})
        .to_string()
    };
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| {
            let (status, body) = server.request("POST", "/v1/chat/completions", &ask(p, false));
            assert_eq!(status, 200, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for (w, answer) in words.iter().zip(&alone) {
        assert!(answer.to_lowercase().contains(w), "{w}: {answer}");
    }
    let port = server.port;
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let body = ask(p, true);
                let server = &server;
                s.spawn(move || {
                    let (status, text) = server.request("POST", "/v1/chat/completions", &body);
                    assert_eq!(status, 200, "port {port}: {text}");
                    streamed_text(&text, true)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);
    server.wait_metric("namm_serve_requests_in_flight", |v| v == 0.0);
}

#[test]
fn a_client_that_goes_away_mid_stream_frees_its_row() {
    let server = Server::start(&[]);
    let body = counting(2000);
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut chunks = 0;
    let mut line = String::new();
    while chunks < 3 {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the stream ended early"
        );
        chunks += line.starts_with("data: ") as usize;
    }
    drop(reader);
    s.shutdown(std::net::Shutdown::Both).unwrap();
    drop(s);
    server.wait_metric("namm_serve_disconnects_total", |v| v >= 1.0);
    server.wait_metric("namm_serve_requests_in_flight", |v| v == 0.0);
    assert!(
        server.proc.log().contains("the client went away"),
        "{}",
        server.proc.log()
    );
    // The server goes on answering.
    let (status, v) = server.post_json(
        "/v1/completions",
        &json!({"prompt": "The capital of France is", "temperature": 0, "max_tokens": 4}),
    );
    assert_eq!(status, 200, "{v}");
}

#[test]
fn bad_requests_get_4xx_naming_what_is_wrong() {
    let server = Server::start(&["--max-body-bytes", "2000000"]);
    let chat = "/v1/chat/completions";
    let hi = json!([{"role": "user", "content": "hi"}]);
    let param = |body: &Value| {
        let (status, v) = server.post_json(chat, body);
        (
            status,
            v["error"]["param"].as_str().unwrap_or("").to_string(),
        )
    };
    assert_eq!(
        param(&json!({"messages": hi, "temperature": "hot"})),
        (400, "temperature".into())
    );
    assert_eq!(param(&json!({"messages": []})), (400, "messages".into()));
    assert_eq!(
        param(&json!({"messages": hi, "memory_policy": "snapkv:budget=2x"})),
        (400, "memory_policy".into())
    );
    assert_eq!(
        param(&json!({"messages": hi, "model": "gpt-4"})),
        (404, "model".into())
    );
    assert_eq!(
        param(&json!({"messages": [{"role": "user", "content": 5}]})),
        (400, "messages[0].content".into())
    );
    let huge = "lorem ipsum ".repeat(90_000);
    assert_eq!(
        param(&json!({"messages": [{"role": "user", "content": huge}]})),
        (400, "messages".into())
    );

    let (status, body) = server.request("POST", chat, "{\"messages\": [");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not valid JSON"), "{body}");
    let (status, _) = server.request("POST", chat, &"x".repeat(3_000_000));
    assert_eq!(status, 413);
    let (status, _) = server.request("GET", "/v1/nothing", "");
    assert_eq!(status, 404);
    let (status, v) = server.post_json(
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 2}),
    );
    assert_eq!(status, 200, "{v}");
}

#[test]
fn a_token_guards_every_route_but_health() {
    let server = Server::start(&["--token", "s3cret"]);
    let (status, body) = server.request("GET", "/v1/models", "");
    assert_eq!(status, 401, "{body}");
    let (status, _) = server
        .try_request("GET", "/v1/models", &["Authorization: Bearer wrong"], "")
        .unwrap();
    assert_eq!(status, 401);
    let (status, body) = server
        .try_request("GET", "/v1/models", &["Authorization: Bearer s3cret"], "")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.request("GET", "/health", "").0, 200);

    let out = Command::new(bin("namm-serve"))
        .args(["--listen", "0.0.0.0:0", "--model"])
        .arg(model_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sigterm_cancels_what_outlasts_the_grace_period_and_exits_cleanly() {
    let mut server = Server::start(&["--shutdown-grace", "1"]);
    let port = server.port;
    let long = std::thread::spawn(move || {
        let body = counting(4000);
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "POST /v1/completions HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    });
    server.wait_metric("namm_serve_requests_in_flight", |v| v >= 1.0);
    server.proc.terminate();
    let status = server
        .proc
        .wait_exit(Duration::from_secs(60))
        .expect("namm-serve did not exit");
    assert!(status.success(), "{}", server.proc.log());
    let text = long.join().unwrap();
    assert!(
        text.contains("cancelled: the server is shutting down"),
        "{text}"
    );
    let log = server.proc.log();
    assert!(
        log.contains("shutting down") && log.contains("cancelled"),
        "{log}"
    );
}

#[test]
fn a_stop_sequence_cuts_the_answer_where_it_starts_streamed_or_not() {
    let server = Server::start(&[]);
    let ask = |stop: Option<&str>, stream: bool| {
        let mut body = json!({"prompt": "Count with me: 1, 2, 3,", "temperature": 0,
                              "max_tokens": 12, "stream": stream});
        if let Some(s) = stop {
            body["stop"] = json!([s]);
        }
        body
    };
    let (status, whole) = server.post_json("/v1/completions", &ask(None, false));
    assert_eq!(status, 200, "{whole}");
    let text = whole["choices"][0]["text"].as_str().unwrap().to_string();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 6, "{text:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = &text[..text.find(&stop).unwrap()];
    let (status, stopped) = server.post_json("/v1/completions", &ask(Some(&stop), false));
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(
        stopped["choices"][0]["text"], cut,
        "stop {stop:?} in {text:?}"
    );
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    let (_, body) = server.request(
        "POST",
        "/v1/completions",
        &ask(Some(&stop), true).to_string(),
    );
    assert_eq!(
        streamed_text(&body, false),
        cut,
        "stop {stop:?} in {text:?}"
    );
}
