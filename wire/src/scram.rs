//! Server-side SCRAM-SHA-256 for the gate's and the pooler's client-facing endpoints, built on
//! pgwire's SCRAM state machine. Only a verifier is kept in memory, never the password.

use bytes::BytesMut;
use pgwire::api::auth::sasl::scram::{ScramSecret, ScramServerAuth, gen_salted_password};

use super::error::SqlError;
use super::message;

const ITERATIONS: usize = 4096;
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// A user's SCRAM verifier, derived once from the configured password.
#[derive(Clone)]
pub struct Verifier {
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(<redacted>)")
    }
}

impl Verifier {
    pub fn from_password(password: &str) -> Verifier {
        let salt: [u8; 16] = rand::random();
        let salted = gen_salted_password(password, &salt, ITERATIONS);
        match ScramSecret::verifier_from_salted_password(salt.to_vec(), salted, ITERATIONS) {
            ScramSecret::Verifier {
                salt,
                stored_key,
                server_key,
                ..
            } => Verifier {
                salt,
                stored_key,
                server_key,
            },
            ScramSecret::SaltedPassword { .. } => unreachable!("verifier_from_salted_password"),
        }
    }

    fn secret(&self) -> ScramSecret {
        ScramSecret::Verifier {
            salt: self.salt.clone(),
            iterations: ITERATIONS,
            stored_key: self.stored_key.clone(),
            server_key: self.server_key.clone(),
        }
    }
}

/// One SCRAM exchange, driven by the connection code that owns the socket:
/// `start` -> send AuthenticationSASL; `client_first` -> send SASLContinue;
/// `client_final` -> send SASLFinal + AuthenticationOk, or fail with 28P01.
pub struct ScramExchange {
    user: String,
    verifier: Verifier,
    waiting: Option<pgwire::api::auth::sasl::scram::ScramServerAuthWaitingForClientFinal>,
}

fn password_failed(user: &str) -> SqlError {
    SqlError::fatal(
        "28P01",
        format!("password authentication failed for user \"{user}\""),
    )
}

fn protocol_violation(detail: impl std::fmt::Display) -> SqlError {
    SqlError::fatal("08P01", format!("malformed SCRAM message: {detail}"))
}

impl ScramExchange {
    pub fn new(user: &str, verifier: Verifier) -> Self {
        ScramExchange {
            user: user.to_string(),
            verifier,
            waiting: None,
        }
    }

    /// AuthenticationSASL listing the one mechanism offered.
    pub fn start(&self, out: &mut BytesMut) {
        let mut payload = Vec::with_capacity(MECHANISM.len() + 2);
        payload.extend_from_slice(MECHANISM.as_bytes());
        payload.extend_from_slice(b"\0\0");
        message::authentication(out, 10, &payload);
    }

    /// Handles SASLInitialResponse (body of a 'p' frame).
    pub fn client_first(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), SqlError> {
        let nul = body
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| protocol_violation("missing mechanism name"))?;
        let mechanism = &body[..nul];
        if mechanism != MECHANISM.as_bytes() {
            return Err(SqlError::fatal(
                "28000",
                format!(
                    "SASL mechanism \"{}\" is not supported; use {MECHANISM}",
                    String::from_utf8_lossy(mechanism)
                ),
            ));
        }
        let rest = &body[nul + 1..];
        if rest.len() < 4 {
            return Err(protocol_violation("truncated initial response"));
        }
        let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let data = usize::try_from(len)
            .ok()
            .and_then(|len| rest.get(4..4 + len))
            .ok_or_else(|| protocol_violation("initial response length"))?;
        let (server_first, waiting) = ScramServerAuth::new()
            .on_client_first_message_with_secret(data, self.verifier.secret())
            .map_err(protocol_violation)?;
        self.waiting = Some(waiting);
        message::authentication(out, 11, server_first.as_bytes());
        Ok(())
    }

    /// Handles SASLResponse (body of a 'p' frame); on success appends SASLFinal and AuthOk.
    pub fn client_final(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), SqlError> {
        let waiting = self
            .waiting
            .take()
            .ok_or_else(|| protocol_violation("final message before first message"))?;
        match waiting.on_client_final_message(body) {
            Ok(server_final) => {
                message::authentication(out, 12, server_final.as_bytes());
                message::authentication(out, 0, &[]);
                Ok(())
            }
            Err(pgwire::error::PgWireError::InvalidPassword(_)) => Err(password_failed(&self.user)),
            Err(other) => {
                // A wrong password can also surface as a malformed proof; never reveal which.
                tracing::debug!(user = %self.user, error = %other, "SCRAM final message rejected");
                Err(password_failed(&self.user))
            }
        }
    }
}
