//! The binary bytecode format (`.jvmb`).
//!
//! All integers are little-endian.
//!
//! ```text
//! file     := magic version count function*count
//! magic    := 00 'J' 'V' 'M'            (4 bytes; the NUL tells it from text)
//! version  := u32                       (1)
//! count    := u32                       number of functions
//! function := name_len:u16 name:[u8; name_len]   UTF-8 identifier [A-Za-z_.$][A-Za-z0-9_.$]*
//!             args:u32 locals:u32                locals include the args
//!             code_len:u32 code:[u8; code_len]
//! ```
//!
//! Nothing may follow the last function. A function's index is its position in the file; the
//! program starts at the function named `main`. The code is a sequence of instructions, each
//! one opcode byte (see [`crate::bytecode::Opcode`]) then its operand: `load_imm` an `i64`
//! (8 bytes), `load_local`/`store_local` a `u16` local index, `jump`/`jump_if_false` a `u32`
//! byte offset in the same function's code, `call` a `u32` function index; the others none.
//!
//! [`decode`] checks only the container (magic, version, lengths, names); the code is checked by
//! [`crate::verify::verify`].

#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use crate::bytecode::{Module, RawFunction, is_identifier};
use crate::error::{Error, Result};

/// The first four bytes of a binary module.
pub const MAGIC: [u8; 4] = *b"\0JVM";

/// The format version written by [`encode`] and read by [`decode`].
pub const VERSION: u32 = 1;

/// Whether `bytes` starts with [`MAGIC`] (else it is taken for text).
pub fn is_binary(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// Writes `module` in the binary format. Names longer than 65,535 bytes and code longer than
/// 4 GiB cannot be represented; they are cut (the verifier or the decoder then rejects the
/// result), which no parsed or decoded module reaches.
pub fn encode(module: &Module) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&len_u32(module.funcs.len()).to_le_bytes());
    for f in &module.funcs {
        let name = f.name.as_bytes();
        let name = name.get(..usize::from(u16::MAX)).unwrap_or(name);
        out.extend_from_slice(&len_u16(name.len()).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&f.args.to_le_bytes());
        out.extend_from_slice(&f.locals.to_le_bytes());
        let code = f.code.get(..u32::MAX as usize).unwrap_or(&f.code);
        out.extend_from_slice(&len_u32(code.len()).to_le_bytes());
        out.extend_from_slice(code);
    }
    out
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn len_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// A cursor over the input.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n);
        match end.and_then(|end| self.bytes.get(self.at..end)) {
            Some(s) => {
                self.at += n;
                Ok(s)
            }
            None => Err(Error::Truncated { what, at: self.at }),
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let at = self.at;
        self.take(N, what)?
            .try_into()
            .map_err(|_| Error::Truncated { what, at })
    }

    fn u16(&mut self, what: &'static str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
}

/// Reads a binary module (container only; the code is not checked).
pub fn decode(bytes: &[u8]) -> Result<Module> {
    let mut r = Reader { bytes, at: 0 };
    let magic: [u8; 4] = r.array("magic").map_err(|_| Error::BadMagic)?;
    if magic != MAGIC {
        return Err(Error::BadMagic);
    }
    let version = r.u32("version")?;
    if version != VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    let count = r.u32("function count")?;
    let mut funcs = Vec::new();
    for _ in 0..count {
        let name_len = r.u16("function name length")?;
        let name_at = r.at;
        let name = r.take(usize::from(name_len), "function name")?;
        let name = std::str::from_utf8(name)
            .ok()
            .filter(|n| is_identifier(n))
            .ok_or(Error::BadName { at: name_at })?
            .to_owned();
        let args = r.u32("function args")?;
        let locals = r.u32("function locals")?;
        let code_len = r.u32("code length")?;
        let code = r.take(code_len as usize, "code")?.to_vec();
        funcs.push(RawFunction {
            name,
            args,
            locals,
            code,
        });
    }
    if r.at != bytes.len() {
        return Err(Error::TrailingBytes {
            at: r.at,
            count: bytes.len().saturating_sub(r.at),
        });
    }
    Ok(Module { funcs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Module {
        Module {
            funcs: vec![
                RawFunction {
                    name: "main".into(),
                    args: 0,
                    locals: 2,
                    code: vec![0x42],
                },
                RawFunction {
                    name: "f".into(),
                    args: 1,
                    locals: 1,
                    code: vec![],
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let bytes = encode(&m);
        assert!(is_binary(&bytes));
        assert_eq!(decode(&bytes).unwrap(), m);
    }

    #[test]
    fn container_errors() {
        let bytes = encode(&sample());
        assert_eq!(decode(b"func"), Err(Error::BadMagic));
        assert_eq!(decode(b"\0J"), Err(Error::BadMagic));
        let mut v2 = bytes.clone();
        v2[4] = 2;
        assert_eq!(decode(&v2), Err(Error::UnsupportedVersion(2)));
        for cut in 4..bytes.len() {
            assert!(
                matches!(decode(&bytes[..cut]), Err(Error::Truncated { .. })),
                "cut at {cut}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            decode(&trailing),
            Err(Error::TrailingBytes { count: 1, .. })
        ));
        let mut bad_name = bytes.clone();
        bad_name[14] = b' ';
        assert!(matches!(decode(&bad_name), Err(Error::BadName { at: 14 })));
        // A huge function count with no data is truncated, not an allocation.
        let mut huge = bytes[..8].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&huge), Err(Error::Truncated { .. })));
    }
}
