//! Zero-copy views of the frontend messages the gate and pooler need to look inside: Query,
//! Parse, Bind, Describe, Close, Execute. Each `parse` takes a frame body (after tag + length)
//! and borrows from it; malformed bodies give a `WireError::Protocol` naming the message.

use bytes::{BufMut, BytesMut};
use smallvec::SmallVec;

use super::error::WireError;
use super::message::{self, frontend};

/// Reads a NUL-terminated string starting at `*pos`, advancing past the NUL.
fn cstr<'a>(body: &'a [u8], pos: &mut usize, what: &str) -> Result<&'a [u8], WireError> {
    let rest = body
        .get(*pos..)
        .ok_or_else(|| WireError::protocol(format!("{what}: truncated message")))?;
    let end = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| WireError::protocol(format!("{what}: missing string terminator")))?;
    *pos += end + 1;
    Ok(&rest[..end])
}

fn int16(body: &[u8], pos: &mut usize, what: &str) -> Result<i16, WireError> {
    let bytes = body
        .get(*pos..*pos + 2)
        .ok_or_else(|| WireError::protocol(format!("{what}: truncated message")))?;
    *pos += 2;
    Ok(i16::from_be_bytes([bytes[0], bytes[1]]))
}

fn int32(body: &[u8], pos: &mut usize, what: &str) -> Result<i32, WireError> {
    let bytes = body
        .get(*pos..*pos + 4)
        .ok_or_else(|| WireError::protocol(format!("{what}: truncated message")))?;
    *pos += 4;
    Ok(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, WireError> {
    std::str::from_utf8(bytes).map_err(|_| WireError::protocol(format!("{what}: invalid UTF-8")))
}

fn count(value: i16, what: &str) -> Result<usize, WireError> {
    usize::try_from(value).map_err(|_| WireError::protocol(format!("{what}: negative count")))
}

/// Simple Query: the SQL text.
pub fn parse_query(body: &[u8]) -> Result<&str, WireError> {
    let mut pos = 0;
    utf8(cstr(body, &mut pos, "Query")?, "Query")
}

/// Parse: statement name, SQL text and declared parameter type OIDs.
#[derive(Debug)]
pub struct Parse<'a> {
    pub name: &'a str,
    pub sql: &'a str,
    pub param_types: Vec<u32>,
}

impl<'a> Parse<'a> {
    // `Parse::parse` reads a Parse message; the name is the protocol's, not a builder's.
    #[allow(clippy::self_named_constructors)]
    pub fn parse(body: &'a [u8]) -> Result<Self, WireError> {
        let mut pos = 0;
        let name = utf8(cstr(body, &mut pos, "Parse")?, "Parse")?;
        let sql = utf8(cstr(body, &mut pos, "Parse")?, "Parse")?;
        let n = count(int16(body, &mut pos, "Parse")?, "Parse")?;
        let mut param_types = Vec::with_capacity(n);
        for _ in 0..n {
            param_types.push(int32(body, &mut pos, "Parse")? as u32);
        }
        if pos != body.len() {
            return Err(WireError::protocol("Parse: trailing bytes"));
        }
        Ok(Parse {
            name,
            sql,
            param_types,
        })
    }
}

/// Parameters (and formats) a Bind holds without a heap allocation; more spill to the heap.
pub const INLINE_PARAMS: usize = 8;

/// Bind: portal, statement, parameter formats and values, result formats.
#[derive(Debug)]
pub struct Bind<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    pub param_formats: SmallVec<[i16; INLINE_PARAMS]>,
    pub params: SmallVec<[Option<&'a [u8]>; INLINE_PARAMS]>,
    pub result_formats: SmallVec<[i16; INLINE_PARAMS]>,
    /// Offset in the body where the part after the statement name starts (formats onwards),
    /// so the message can be re-emitted with another statement name without re-encoding.
    tail_offset: usize,
    body: &'a [u8],
}

impl<'a> Bind<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, WireError> {
        let mut pos = 0;
        let portal = utf8(cstr(body, &mut pos, "Bind")?, "Bind")?;
        let statement = utf8(cstr(body, &mut pos, "Bind")?, "Bind")?;
        let tail_offset = pos;
        let n = count(int16(body, &mut pos, "Bind")?, "Bind")?;
        let mut param_formats = SmallVec::with_capacity(n);
        for _ in 0..n {
            param_formats.push(int16(body, &mut pos, "Bind")?);
        }
        let n = count(int16(body, &mut pos, "Bind")?, "Bind")?;
        let mut params = SmallVec::with_capacity(n);
        for _ in 0..n {
            let len = int32(body, &mut pos, "Bind")?;
            if len < 0 {
                params.push(None);
            } else {
                let end = pos + len as usize;
                let value = body
                    .get(pos..end)
                    .ok_or_else(|| WireError::protocol("Bind: truncated parameter"))?;
                params.push(Some(value));
                pos = end;
            }
        }
        let n = count(int16(body, &mut pos, "Bind")?, "Bind")?;
        let mut result_formats = SmallVec::with_capacity(n);
        for _ in 0..n {
            result_formats.push(int16(body, &mut pos, "Bind")?);
        }
        if pos != body.len() {
            return Err(WireError::protocol("Bind: trailing bytes"));
        }
        if param_formats.len() > 1 && param_formats.len() != params.len() {
            return Err(WireError::protocol(format!(
                "bind message has {} parameter formats but {} parameters",
                param_formats.len(),
                params.len()
            )));
        }
        Ok(Bind {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
            tail_offset,
            body,
        })
    }

    /// Format code of parameter `index` (0 = text, 1 = binary), per Bind's rules.
    pub fn param_format(&self, index: usize) -> i16 {
        match self.param_formats.len() {
            0 => 0,
            1 => self.param_formats[0],
            _ => self.param_formats.get(index).copied().unwrap_or(0),
        }
    }

    /// Re-emits this Bind naming `statement` instead, keeping everything else byte for byte.
    pub fn write_renamed(&self, out: &mut BytesMut, statement: &str) {
        let start = message::begin(out, frontend::BIND);
        message::put_cstr(out, self.portal.as_bytes());
        message::put_cstr(out, statement.as_bytes());
        out.extend_from_slice(&self.body[self.tail_offset..]);
        message::finish(out, start);
    }

    /// Emits a Bind for `statement` carrying only the parameters listed in `param_map` (new
    /// parameter i is old parameter `param_map[i]`), each with its own format code.
    pub fn write_subset(&self, out: &mut BytesMut, statement: &str, param_map: &[usize]) {
        let start = message::begin(out, frontend::BIND);
        message::put_cstr(out, self.portal.as_bytes());
        message::put_cstr(out, statement.as_bytes());
        out.put_i16(param_map.len() as i16);
        for &old in param_map {
            out.put_i16(self.param_format(old));
        }
        out.put_i16(param_map.len() as i16);
        for &old in param_map {
            match self.params.get(old).copied().flatten() {
                Some(value) => {
                    out.put_i32(value.len() as i32);
                    out.extend_from_slice(value);
                }
                None => out.put_i32(-1),
            }
        }
        out.put_i16(self.result_formats.len() as i16);
        for format in &self.result_formats {
            out.put_i16(*format);
        }
        message::finish(out, start);
    }
}

/// Describe or Close target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Statement,
    Portal,
}

/// Describe or Close: what kind of object and its name.
#[derive(Debug)]
pub struct Named<'a> {
    pub target: Target,
    pub name: &'a str,
}

impl<'a> Named<'a> {
    pub fn parse(body: &'a [u8], what: &str) -> Result<Self, WireError> {
        let target = match body.first() {
            Some(b'S') => Target::Statement,
            Some(b'P') => Target::Portal,
            _ => {
                return Err(WireError::protocol(format!(
                    "{what}: invalid target, expected 'S' or 'P'"
                )));
            }
        };
        let mut pos = 1;
        let name = utf8(cstr(body, &mut pos, what)?, what)?;
        Ok(Named { target, name })
    }
}

/// Execute: portal and row limit (0 = all rows).
#[derive(Debug)]
pub struct Execute<'a> {
    pub portal: &'a str,
    pub max_rows: i32,
}

impl<'a> Execute<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, WireError> {
        let mut pos = 0;
        let portal = utf8(cstr(body, &mut pos, "Execute")?, "Execute")?;
        let max_rows = int32(body, &mut pos, "Execute")?;
        Ok(Execute { portal, max_rows })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind_body() -> BytesMut {
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::bind(
            "p1",
            "s1",
            [1i16],
            [Some(&7i64.to_be_bytes()[..]), None],
            |value, buf| match value {
                Some(bytes) => {
                    buf.extend_from_slice(bytes);
                    Ok(postgres_protocol::IsNull::No)
                }
                None => Ok(postgres_protocol::IsNull::Yes),
            },
            [1i16],
            &mut out,
        )
        .map_err(|_| "bind encode")
        .unwrap();
        out
    }

    #[test]
    fn bind_parses_and_renames_without_changing_parameters() {
        let frame = bind_body();
        let bind = Bind::parse(&frame[5..]).unwrap();
        assert_eq!(bind.portal, "p1");
        assert_eq!(bind.statement, "s1");
        assert_eq!(bind.params[..], [Some(&7i64.to_be_bytes()[..]), None]);
        assert_eq!(bind.param_format(1), 1);
        let mut out = BytesMut::new();
        bind.write_renamed(&mut out, "t00ff");
        let renamed = Bind::parse(&out[5..]).unwrap();
        assert_eq!(renamed.statement, "t00ff");
        assert_eq!(renamed.params[..], bind.params[..]);
        assert_eq!(renamed.result_formats[..], [1]);
    }

    #[test]
    fn bind_subset_keeps_selected_parameters_in_order() {
        let frame = bind_body();
        let bind = Bind::parse(&frame[5..]).unwrap();
        let mut out = BytesMut::new();
        bind.write_subset(&mut out, "x", &[1, 0]);
        let subset = Bind::parse(&out[5..]).unwrap();
        assert_eq!(subset.params[..], [None, Some(&7i64.to_be_bytes()[..])]);
    }

    #[test]
    fn truncated_messages_are_protocol_errors_not_panics() {
        let frame = bind_body();
        for cut in 0..frame.len() - 5 {
            let _ = Bind::parse(&frame[5..5 + cut]);
        }
        assert!(Bind::parse(b"p\0").is_err());
        assert!(Parse::parse(b"\0select\0\xff").is_err());
        assert!(Named::parse(b"X\0", "Describe").is_err());
        assert!(Execute::parse(b"p\0\0").is_err());
    }
}
