//! A real S3-protocol server for tests: moto's server, installed by `.ci/s3-server` (once, into
//! a virtualenv) and run on a loopback port for the life of an [`S3Server`].

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_port;

/// A running S3 server with one bucket.
pub struct S3Server {
    child: Child,
    port: u16,
    bucket: String,
}

fn request(port: u16, method: &str, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

impl S3Server {
    /// Installs (if needed) and starts the server, and creates bucket `bucket`.
    pub fn start(bucket: &str) -> S3Server {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.ci/s3-server");
        let installed = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            installed.status.success(),
            "{} failed: cannot install the S3 test server",
            script.display()
        );
        let program = String::from_utf8_lossy(&installed.stdout)
            .trim()
            .to_string();
        let port = free_port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        let server = S3Server {
            child,
            port,
            bucket: bucket.to_string(),
        };
        let started = Instant::now();
        while request(port, "GET", "/").is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the S3 test server did not answer within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // moto accepts an unsigned bucket creation.
        let answer = request(port, "PUT", &format!("/{bucket}")).expect("creating the bucket");
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "bucket creation: {answer}"
        );
        server
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A destination URL under `prefix` in the bucket, with the endpoint in the query.
    pub fn url(&self, prefix: &str) -> String {
        format!(
            "s3://{}/{prefix}?endpoint={}&allow_http=true&region=us-east-1",
            self.bucket,
            self.endpoint()
        )
    }

    /// Sets the AWS credential variables moto accepts (any non-empty values) for this process.
    pub fn set_credentials() {
        // SAFETY: test processes set these before starting any thread that reads them.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
