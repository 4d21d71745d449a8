//! The server side of connection startup, shared by the gate and the tablet pooler: TLS/GSS
//! negotiation (declined for now), cancel requests, the startup packet, protocol-version
//! negotiation and SCRAM-SHA-256 authentication.

use bytes::BufMut;

use super::error::{SqlError, WireError};
use super::message::{self, backend, frontend};
use super::scram::{ScramExchange, Verifier};
use super::socket::PgStream;

/// PostgreSQL's limit for startup-phase packets.
const MAX_STARTUP_PACKET: usize = 10_000;
const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;

/// What a new connection asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupRequest {
    /// A normal session, with its startup parameters (user, database, options, ...).
    Startup { params: Vec<(String, String)> },
    /// Cancel the query running on the session identified by this key.
    Cancel { process_id: i32, secret_key: i32 },
}

impl StartupRequest {
    pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the startup packet, declining SSL/GSS encryption. Protocol 3.x clients asking for a
/// newer minor version or `_pq_.` options get NegotiateProtocolVersion (queued in the write
/// buffer, sent with the authentication request), as PostgreSQL does.
pub async fn read_startup(stream: &mut PgStream) -> Result<StartupRequest, WireError> {
    loop {
        let packet = stream.read_startup_packet(MAX_STARTUP_PACKET).await?;
        if packet.len() < 4 {
            return Err(WireError::protocol("startup packet too short"));
        }
        let code = i32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]);
        match code {
            SSL_REQUEST | GSSENC_REQUEST => {
                // Encryption is not offered yet; libpq then continues in plaintext (sslmode=prefer).
                stream.write(b"N");
                stream.flush().await?;
            }
            CANCEL_REQUEST => {
                if packet.len() < 12 {
                    return Err(WireError::protocol("cancel request too short"));
                }
                let process_id = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
                let secret_key = i32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
                return Ok(StartupRequest::Cancel {
                    process_id,
                    secret_key,
                });
            }
            _ => {
                let major = (code >> 16) as u16;
                let minor = (code & 0xffff) as u16;
                if major != 3 {
                    return Err(WireError::protocol(format!(
                        "unsupported frontend protocol {major}.{minor}: server supports 3.0"
                    )));
                }
                let params = parse_params(&packet[4..])?;
                let unknown: Vec<&str> = params
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .filter(|k| k.starts_with("_pq_."))
                    .collect();
                if minor > 0 || !unknown.is_empty() {
                    let start = message::begin(&mut stream.write_buf, backend::NEGOTIATE_PROTOCOL);
                    stream.write_buf.put_i32(0);
                    stream.write_buf.put_i32(unknown.len() as i32);
                    for name in &unknown {
                        message::put_cstr(&mut stream.write_buf, name.as_bytes());
                    }
                    message::finish(&mut stream.write_buf, start);
                }
                let params = params
                    .into_iter()
                    .filter(|(k, _)| !k.starts_with("_pq_."))
                    .collect();
                return Ok(StartupRequest::Startup { params });
            }
        }
    }
}

fn parse_params(mut body: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    let mut params = Vec::new();
    let next = |body: &mut &[u8]| -> Result<String, WireError> {
        let end = body
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| WireError::protocol("startup packet: unterminated string"))?;
        let text = std::str::from_utf8(&body[..end])
            .map_err(|_| WireError::protocol("startup packet: invalid UTF-8"))?
            .to_string();
        *body = &body[end + 1..];
        Ok(text)
    };
    loop {
        if body.is_empty() {
            return Err(WireError::protocol("startup packet: missing terminator"));
        }
        if body == [0] {
            return Ok(params);
        }
        let name = next(&mut body)?;
        let value = next(&mut body)?;
        params.push((name, value));
    }
}

/// Runs SCRAM-SHA-256 with the client. On failure the error has already been sent to the client
/// (FATAL) and is returned for logging.
pub async fn authenticate(
    stream: &mut PgStream,
    user: &str,
    verifier: Option<&Verifier>,
) -> Result<(), SqlError> {
    let result = exchange(stream, user, verifier).await;
    if let Err(error) = &result {
        error.encode(&mut stream.write_buf);
        let _ = stream.flush().await;
    }
    result
}

async fn exchange(
    stream: &mut PgStream,
    user: &str,
    verifier: Option<&Verifier>,
) -> Result<(), SqlError> {
    // An unknown user runs the exchange against a throwaway verifier and fails at the end, so
    // the answer does not reveal which user names exist.
    let verifier = verifier
        .cloned()
        .unwrap_or_else(|| Verifier::from_password(&format!("{:x}", rand::random::<u128>())));
    let mut scram = ScramExchange::new(user, verifier);
    scram.start(&mut stream.write_buf);
    flush(stream).await?;
    let body = read_password_message(stream).await?;
    scram.client_first(&body, &mut stream.write_buf)?;
    flush(stream).await?;
    let body = read_password_message(stream).await?;
    scram.client_final(&body, &mut stream.write_buf)?;
    flush(stream).await
}

async fn flush(stream: &mut PgStream) -> Result<(), SqlError> {
    stream.flush().await.map_err(|e| {
        SqlError::fatal(
            "08006",
            format!("connection lost during authentication: {e}"),
        )
    })
}

async fn read_password_message(stream: &mut PgStream) -> Result<Vec<u8>, SqlError> {
    let (tag, len) = stream.next_frame().await.map_err(|e| {
        SqlError::fatal(
            "08006",
            format!("connection lost during authentication: {e}"),
        )
    })?;
    if tag != frontend::PASSWORD {
        return Err(SqlError::fatal(
            "08P01",
            format!(
                "expected password response, got message type '{}'",
                super::socket::printable(tag)
            ),
        ));
    }
    let body = stream.body(len).to_vec();
    stream.consume(len);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_params_parse_and_reject_garbage() {
        let params = parse_params(b"user\0bob\0database\0app\0\0").unwrap();
        assert_eq!(
            params,
            vec![
                ("user".into(), "bob".into()),
                ("database".into(), "app".into())
            ]
        );
        assert!(parse_params(b"user\0bob").is_err());
        assert!(parse_params(b"").is_err());
        assert!(parse_params(b"user\0\xff\xfe\0\0").is_err());
    }
}
