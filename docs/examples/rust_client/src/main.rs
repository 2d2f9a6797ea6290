//! Call the orders service with the token tokend keeps.
//!
//!     TOKEN_FILE=/run/tokend/orders ORDERS_URL=http://127.0.0.1:8080/orders cargo run
//!
//! Prints the answer; exits 1 if the call fails. To build offline this example
//! speaks plain HTTP/1.0 over the standard library; a real service would send
//! the same header with its HTTP client (reqwest, ureq, hyper) over HTTPS.

use std::env;
use std::error::Error;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Returns the current token. Read the file on every call, never keep the
/// token: tokend replaces the file well before the token expires.
fn read_token(path: &str) -> Result<String> {
    Ok(fs::read_to_string(path)?.trim().to_owned())
}

/// Sends `GET url` with the token; returns the status code and the body.
fn get_orders(token_file: &str, url: &str) -> Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("this example speaks plain http:// only")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };

    let mut stream = TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nAuthorization: Bearer {}\r\n\r\n",
        read_token(token_file)?
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;

    let (head, body) = answer.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .ok_or("no status code")?
        .parse()?;
    Ok((status, body.to_owned()))
}

fn main() -> ExitCode {
    let token_file = env::var("TOKEN_FILE").unwrap_or_else(|_| "/run/tokend/orders".into());
    let url = env::var("ORDERS_URL").unwrap_or_else(|_| "http://127.0.0.1:8080/orders".into());
    match get_orders(&token_file, &url) {
        Ok((status, body)) if (200..300).contains(&status) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("{status} {body}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}
