//! A buffered PostgreSQL protocol stream over TCP or a Unix socket.
//!
//! Frames are `tag (1 byte) | length (4 bytes, counts itself) | body`. `PgStream` keeps whole
//! frames in its read buffer so callers can inspect or copy them in place without allocating.

use std::io;
use std::path::Path;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// Largest frame accepted from a peer. PostgreSQL's own limit for most messages is 1 GiB; a
/// smaller bound keeps a malformed length from making us reserve absurd amounts of memory.
pub const MAX_FRAME_LEN: usize = 256 * 1024 * 1024;

/// Bytes read from the socket at a time when the buffer is empty.
const READ_CHUNK: usize = 16 * 1024;

/// The transport under a protocol stream.
#[derive(Debug)]
pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read_buf(buf).await,
            Socket::Unix(s) => s.read_buf(buf).await,
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.write_all(bytes).await,
            Socket::Unix(s) => s.write_all(bytes).await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.shutdown().await,
            Socket::Unix(s) => s.shutdown().await,
        }
    }

    /// Whether the peer closed the connection (or sent something unasked, such as the FATAL a
    /// terminated backend sends before closing): a non-blocking peek, no waiting.
    fn peer_closed(&self) -> bool {
        let mut byte = [0u8; 1];
        let result = match self {
            Socket::Tcp(s) => s.try_read(&mut byte),
            Socket::Unix(s) => s.try_read(&mut byte),
        };
        match result {
            Err(error) => error.kind() != io::ErrorKind::WouldBlock,
            // EOF, or unsolicited bytes on an idle connection: not usable either way.
            Ok(_) => true,
        }
    }

    /// Peer address for logs.
    pub fn peer(&self) -> String {
        match self {
            Socket::Tcp(s) => s
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "tcp:?".into()),
            Socket::Unix(_) => "unix".into(),
        }
    }
}

/// Header of the complete frame at the front of a buffer: its tag and total length including
/// the tag byte. `Ok(None)` when the buffer does not yet hold the whole frame.
pub fn frame_at(buf: &[u8]) -> io::Result<Option<(u8, usize)>> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let declared = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if declared < 4 || declared as usize > MAX_FRAME_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "invalid length {declared} in protocol message of type '{}'",
                printable(buf[0])
            ),
        ));
    }
    let total = declared as usize + 1;
    Ok((buf.len() >= total).then_some((buf[0], total)))
}

/// A message tag as a printable character for error messages.
pub fn printable(tag: u8) -> char {
    if tag.is_ascii_graphic() {
        tag as char
    } else {
        '?'
    }
}

/// Buffered protocol stream. Reads fill `read_buf`; writes accumulate in `write_buf` until
/// `flush`.
#[derive(Debug)]
pub struct PgStream {
    socket: Socket,
    /// Invariant: starts at a frame boundary.
    pub read_buf: BytesMut,
    pub write_buf: BytesMut,
}

impl PgStream {
    pub fn new(socket: Socket) -> Self {
        PgStream {
            socket,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    pub fn tcp(stream: TcpStream) -> Self {
        let _ = stream.set_nodelay(true);
        PgStream::new(Socket::Tcp(stream))
    }

    pub async fn connect_tcp(host: &str, port: u16) -> io::Result<Self> {
        Ok(PgStream::tcp(TcpStream::connect((host, port)).await?))
    }

    pub async fn connect_unix(path: &Path) -> io::Result<Self> {
        Ok(PgStream::new(Socket::Unix(
            UnixStream::connect(path).await?,
        )))
    }

    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// An idle connection whose peer has gone away (server restarted, backend terminated).
    pub fn is_dead(&self) -> bool {
        !self.read_buf.is_empty() || self.socket.peer_closed()
    }

    /// Reads more bytes from the socket; an orderly close by the peer is `UnexpectedEof`.
    pub async fn fill(&mut self) -> io::Result<()> {
        if self.read_buf.capacity() - self.read_buf.len() < 1024 {
            self.read_buf.reserve(READ_CHUNK);
        }
        let n = self.socket.read_buf(&mut self.read_buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by peer",
            ));
        }
        Ok(())
    }

    /// Waits until a whole frame is buffered and returns its tag and total length. The frame is
    /// `self.read_buf[..len]`; call [`PgStream::consume`] when done with it.
    pub async fn next_frame(&mut self) -> io::Result<(u8, usize)> {
        loop {
            if let Some(header) = frame_at(&self.read_buf)? {
                return Ok(header);
            }
            if let Some(len) = self.pending_frame_len() {
                self.read_buf
                    .reserve(len.saturating_sub(self.read_buf.len()));
            }
            self.fill().await?;
        }
    }

    /// The next frame if it is already buffered.
    pub fn buffered_frame(&self) -> io::Result<Option<(u8, usize)>> {
        frame_at(&self.read_buf)
    }

    fn pending_frame_len(&self) -> Option<usize> {
        (self.read_buf.len() >= 5).then(|| {
            i32::from_be_bytes([
                self.read_buf[1],
                self.read_buf[2],
                self.read_buf[3],
                self.read_buf[4],
            ]) as usize
                + 1
        })
    }

    /// Body of the buffered frame of total length `len` (without tag and length).
    pub fn body(&self, len: usize) -> &[u8] {
        &self.read_buf[5..len]
    }

    /// Drops the first `len` bytes (a frame) of the read buffer.
    pub fn consume(&mut self, len: usize) {
        self.read_buf.advance(len);
    }

    /// Moves the first `len` bytes (a frame) of the read buffer into another stream's write
    /// buffer: the raw relay of one message.
    pub fn relay_into(&mut self, len: usize, out: &mut BytesMut) {
        out.extend_from_slice(&self.read_buf[..len]);
        self.read_buf.advance(len);
    }

    /// Reads an untagged startup-phase packet (`length | body`) and returns its body.
    pub async fn read_startup_packet(&mut self, max_len: usize) -> io::Result<BytesMut> {
        while self.read_buf.len() < 4 {
            self.fill().await?;
        }
        let declared = i32::from_be_bytes([
            self.read_buf[0],
            self.read_buf[1],
            self.read_buf[2],
            self.read_buf[3],
        ]);
        if declared < 8 || declared as usize > max_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("invalid startup packet length {declared}"),
            ));
        }
        let len = declared as usize;
        while self.read_buf.len() < len {
            self.fill().await?;
        }
        let mut packet = self.read_buf.split_to(len);
        packet.advance(4);
        Ok(packet)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.write_buf.extend_from_slice(bytes);
    }

    /// Sends everything in the write buffer.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.write_buf.is_empty() {
            self.socket.write_all(&self.write_buf).await?;
            self.write_buf.clear();
        }
        Ok(())
    }

    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.socket.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_at_reports_incomplete_and_complete_frames() {
        assert_eq!(frame_at(b"Z\0\0").unwrap(), None);
        assert_eq!(frame_at(b"Z\0\0\0\x05").unwrap(), None);
        assert_eq!(frame_at(b"Z\0\0\0\x05I").unwrap(), Some((b'Z', 6)));
        assert_eq!(frame_at(b"Z\0\0\0\x05Ixx").unwrap(), Some((b'Z', 6)));
    }

    #[test]
    fn frame_at_rejects_lengths_that_cannot_be_valid() {
        assert!(frame_at(b"Z\0\0\0\x03").is_err());
        assert!(frame_at(b"Z\xff\xff\xff\xff").is_err());
    }
}
