//! Message tags and builders for the frames Tessera creates itself (everything else is relayed).

use bytes::{BufMut, BytesMut};

/// Frontend (client -> server) message tags.
pub mod frontend {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const TERMINATE: u8 = b'X';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PASSWORD: u8 = b'p';
}

/// Backend (server -> client) message tags.
pub mod backend {
    pub const AUTHENTICATION: u8 = b'R';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const DATA_ROW: u8 = b'D';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const EMPTY_QUERY: u8 = b'I';
    pub const ERROR: u8 = b'E';
    pub const NOTICE: u8 = b'N';
    pub const NOTIFICATION: u8 = b'A';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const NO_DATA: u8 = b'n';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const COPY_IN: u8 = b'G';
    pub const COPY_OUT: u8 = b'H';
    pub const COPY_BOTH: u8 = b'W';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const NEGOTIATE_PROTOCOL: u8 = b'v';
}

/// Transaction status byte of ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }

    pub fn from_byte(byte: u8) -> Option<TxStatus> {
        match byte {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }
}

/// Starts a tagged frame; returns the offset to pass to [`finish`].
pub fn begin(out: &mut BytesMut, tag: u8) -> usize {
    let start = out.len();
    out.put_u8(tag);
    out.put_i32(0);
    start
}

/// Writes the length of the frame started at `start`.
pub fn finish(out: &mut BytesMut, start: usize) {
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

pub fn put_cstr(out: &mut BytesMut, text: &[u8]) {
    out.extend_from_slice(text);
    out.put_u8(0);
}

/// A frame with no body (ParseComplete, BindComplete, Sync, ...).
pub fn empty(out: &mut BytesMut, tag: u8) {
    out.put_u8(tag);
    out.put_i32(4);
}

pub fn ready_for_query(out: &mut BytesMut, status: TxStatus) {
    out.put_u8(backend::READY_FOR_QUERY);
    out.put_i32(5);
    out.put_u8(status.byte());
}

pub fn command_complete(out: &mut BytesMut, tag: &str) {
    let start = begin(out, backend::COMMAND_COMPLETE);
    put_cstr(out, tag.as_bytes());
    finish(out, start);
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    let start = begin(out, backend::PARAMETER_STATUS);
    put_cstr(out, name.as_bytes());
    put_cstr(out, value.as_bytes());
    finish(out, start);
}

pub fn backend_key_data(out: &mut BytesMut, process_id: i32, secret_key: i32) {
    out.put_u8(backend::BACKEND_KEY_DATA);
    out.put_i32(12);
    out.put_i32(process_id);
    out.put_i32(secret_key);
}

/// Authentication request with the given code and payload (0 = Ok, 10 = SASL, ...).
pub fn authentication(out: &mut BytesMut, code: i32, payload: &[u8]) {
    let start = begin(out, backend::AUTHENTICATION);
    out.put_i32(code);
    out.extend_from_slice(payload);
    finish(out, start);
}

/// ParameterDescription with the given type OIDs.
pub fn parameter_description(out: &mut BytesMut, types: &[u32]) {
    let start = begin(out, backend::PARAMETER_DESCRIPTION);
    out.put_i16(types.len() as i16);
    for oid in types {
        out.put_u32(*oid);
    }
    finish(out, start);
}

/// A simple query frame.
pub fn query(out: &mut BytesMut, sql: &str) {
    let start = begin(out, frontend::QUERY);
    put_cstr(out, sql.as_bytes());
    finish(out, start);
}

/// A Parse frame.
pub fn parse(out: &mut BytesMut, name: &str, sql: &str, param_types: &[u32]) {
    let start = begin(out, frontend::PARSE);
    put_cstr(out, name.as_bytes());
    put_cstr(out, sql.as_bytes());
    out.put_i16(param_types.len() as i16);
    for oid in param_types {
        out.put_u32(*oid);
    }
    finish(out, start);
}

/// A Describe or Close frame for a statement (`b'S'`) or portal (`b'P'`).
pub fn describe_or_close(out: &mut BytesMut, tag: u8, kind: u8, name: &str) {
    let start = begin(out, tag);
    out.put_u8(kind);
    put_cstr(out, name.as_bytes());
    finish(out, start);
}

pub fn execute(out: &mut BytesMut, portal: &str, max_rows: i32) {
    let start = begin(out, frontend::EXECUTE);
    put_cstr(out, portal.as_bytes());
    out.put_i32(max_rows);
    finish(out, start);
}

/// The tag of a CommandComplete body, without its terminating NUL.
pub fn command_tag(body: &[u8]) -> &[u8] {
    body.strip_suffix(&[0]).unwrap_or(body)
}

/// Row count at the end of a command tag ("SELECT 3", "INSERT 0 3", "UPDATE 2"), if any.
pub fn command_tag_rows(tag: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(tag).ok()?;
    text.rsplit(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_tag_rows_reads_the_last_number() {
        assert_eq!(command_tag_rows(b"INSERT 0 3"), Some(3));
        assert_eq!(command_tag_rows(b"SELECT 12"), Some(12));
        assert_eq!(command_tag_rows(b"CREATE TABLE"), None);
    }

    #[test]
    fn built_frames_carry_correct_lengths() {
        let mut out = BytesMut::new();
        command_complete(&mut out, "SELECT 1");
        assert_eq!(&out[..], b"C\0\0\0\x0dSELECT 1\0");
        out.clear();
        ready_for_query(&mut out, TxStatus::InTransaction);
        assert_eq!(&out[..], b"Z\0\0\0\x05T");
    }
}
