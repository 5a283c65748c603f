//! A trap for HTTP clients that follow redirects: a local server that answers every request
//! with `307 Temporary Redirect` to a second local server, which records what reaches it. A
//! `307` (like `308`) asks the client to send the same method and body again, so a client that
//! follows it hands the body (personal data, for the registry and the text gateway) to
//! whoever the first server names.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// The two servers; both stop when this is dropped.
pub struct RedirectTrap {
    /// The redirecting server's base URL (`http://127.0.0.1:<port>`).
    pub url: String,
    /// Every request the redirect's target received, raw.
    reached: Arc<Mutex<Vec<Vec<u8>>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RedirectTrap {
    /// Starts both servers on free ports.
    pub async fn start() -> RedirectTrap {
        let target = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let target_url = format!("http://{}", target.local_addr().unwrap());
        let reached = Arc::new(Mutex::new(Vec::new()));
        let recorded = reached.clone();
        let target_task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = target.accept().await {
                let request = read_request(&mut stream).await;
                recorded.lock().unwrap().push(request);
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        let front = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let url = format!("http://{}", front.local_addr().unwrap());
        let front_task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = front.accept().await {
                let request = read_request(&mut stream).await;
                let path = request_path(&request);
                let answer = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nlocation: {target_url}{path}\r\n\
                     content-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        RedirectTrap {
            url,
            reached,
            tasks: vec![target_task, front_task],
        }
    }

    /// The requests that reached the redirect's target, raw (head and body).
    pub fn reached(&self) -> Vec<Vec<u8>> {
        self.reached.lock().unwrap().clone()
    }
}

impl Drop for RedirectTrap {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Reads one request: its head, then as many body bytes as its `content-length` says.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut request = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        let Ok(n) = stream.read(&mut buffer).await else {
            return request;
        };
        if n == 0 {
            return request;
        }
        request.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&request);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, value)| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if request.len() >= head_end + 4 + length {
                return request;
            }
        }
    }
}

/// The path of a request line (`POST /path HTTP/1.1`).
fn request_path(request: &[u8]) -> String {
    String::from_utf8_lossy(request)
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned()
}
