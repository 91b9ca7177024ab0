//! The text format (`.jvm`): parser and printer.
//!
//! ```text
//! func NAME args=N locals=M      ; locals include the args, which arrive in locals 0..N-1
//! LABEL:
//!     OPCODE [OPERAND]
//! end
//! ```
//!
//! One instruction per line; `;` starts a comment; a label may share its line with an
//! instruction (`loop: loop_header`). Names and labels are `[A-Za-z_.$][A-Za-z0-9_.$]*`.
//! Operands: `load_imm` a decimal or `0x` hexadecimal integer with an optional sign, local
//! indices a decimal `u16`, jumps a label of the same function, `call` a function name (defined
//! anywhere in the file). The parser resolves names and encodes the bytecode directly; the
//! stack discipline, local ranges and the like are left to the verifier.
//!
//! The printer writes a module back as text, naming every jump target `L<offset>:`.

#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::bytecode::{
    DecodeInsnError, Module, Opcode, Operand, OperandKind, RawFunction, decode_insn, encode_insn,
    is_identifier,
};
use crate::error::{Error, Result, quote};

/// Source lines of a parsed module's instructions, to report verifier errors by line.
#[derive(Clone, Debug, Default)]
pub struct LineMap {
    /// Per function (same order as the module): (byte offset, 1-based line) of each instruction.
    funcs: Vec<Vec<(u32, u32)>>,
    names: HashMap<String, usize>,
    /// Per function: the 1-based line of its `func` header.
    headers: Vec<u32>,
}

impl LineMap {
    /// The line of the instruction at byte `offset` of function `func`.
    pub fn line_of(&self, func: &str, offset: u32) -> Option<u32> {
        let lines = self.funcs.get(*self.names.get(func)?)?;
        let i = lines.partition_point(|&(o, _)| o < offset);
        match lines.get(i) {
            Some(&(o, line)) if o == offset => Some(line),
            _ => lines.last().map(|&(_, line)| line),
        }
    }

    /// The line of the header (`func NAME ...`) of function `func`.
    pub fn header_line(&self, func: &str) -> Option<u32> {
        self.headers.get(*self.names.get(func)?).copied()
    }

    /// Maps a verifier error to the source line of the instruction it names, or for an error
    /// about a whole function (locals, emptiness) to the line of its header.
    pub fn line_of_error(&self, error: &Error) -> Option<u32> {
        match error.location() {
            Some((func, offset)) => self.line_of(func, offset),
            None => self.header_line(error.function()?),
        }
    }
}

/// Parses a module from text. See the module documentation for the format.
pub fn parse(source: &str) -> Result<Module> {
    parse_with_lines(source).map(|(m, _)| m)
}

/// Parses bytes as text (they must be UTF-8).
pub fn parse_bytes(bytes: &[u8]) -> Result<(Module, LineMap)> {
    match std::str::from_utf8(bytes) {
        Ok(s) => parse_with_lines(s),
        Err(e) => {
            let before = bytes.get(..e.valid_up_to()).unwrap_or(&[]);
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            Err(Error::Syntax {
                line: line_u32(line),
                message: "invalid UTF-8".into(),
            })
        }
    }
}

fn line_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A function being parsed.
struct Open {
    index: usize,
    line: u32,
    labels: HashMap<String, u32>,
    /// (position of the operand in the code, label, line)
    jumps: Vec<(usize, String, u32)>,
    lines: Vec<(u32, u32)>,
}

/// Parses a module and the line of each instruction.
pub fn parse_with_lines(source: &str) -> Result<(Module, LineMap)> {
    let mut module = Module::default();
    let mut map = LineMap::default();
    let mut header_lines: Vec<u32> = Vec::new();
    // (function index, operand position, callee name, line)
    let mut calls: Vec<(usize, usize, String, u32)> = Vec::new();
    let mut open: Option<Open> = None;
    let mut last_line = 1;

    for (n, raw) in source.lines().enumerate() {
        let line = line_u32(n + 1);
        last_line = line;
        let text = raw.split(';').next().unwrap_or("").trim();
        if text.is_empty() {
            continue;
        }
        let mut tokens = text.split_whitespace();
        let Some(first) = tokens.next() else {
            continue;
        };
        if first == "func" {
            if let Some(f) = &open {
                return Err(missing_end(&module, f));
            }
            let rest: Vec<&str> = tokens.collect();
            let func = parse_header(line, &rest)?;
            if map.names.contains_key(&func.name) {
                return Err(Error::DuplicateFunction {
                    line,
                    name: func.name,
                });
            }
            map.names.insert(func.name.clone(), module.funcs.len());
            open = Some(Open {
                index: module.funcs.len(),
                line,
                labels: HashMap::new(),
                jumps: Vec::new(),
                lines: Vec::new(),
            });
            header_lines.push(line);
            module.funcs.push(func);
            continue;
        }
        let Some(f) = open.as_mut() else {
            return Err(Error::Syntax {
                line,
                message: format!("`{}` outside a function", quote(first)),
            });
        };
        let Some(func) = module.funcs.get_mut(f.index) else {
            continue;
        };
        if first == "end" {
            if let Some(extra) = tokens.next() {
                return Err(Error::Syntax {
                    line,
                    message: format!("unexpected `{}` after `end`", quote(extra)),
                });
            }
            resolve_jumps(func, f)?;
            map.funcs.push(std::mem::take(&mut f.lines));
            open = None;
            continue;
        }
        let mut mnemonic = Some(first);
        if let Some(label) = first.strip_suffix(':') {
            if !is_identifier(label) {
                return Err(Error::Syntax {
                    line,
                    message: format!("invalid label `{}`", quote(label)),
                });
            }
            if f.labels.contains_key(label) {
                return Err(Error::DuplicateLabel {
                    line,
                    label: label.to_owned(),
                });
            }
            f.labels.insert(label.to_owned(), code_offset(&func.code));
            mnemonic = tokens.next();
        }
        let Some(mnemonic) = mnemonic else {
            continue;
        };
        let opcode = Opcode::from_name(mnemonic).ok_or_else(|| Error::UnknownMnemonic {
            line,
            name: mnemonic.to_owned(),
        })?;
        let bad = |message: String| Error::BadOperand {
            line,
            opcode: opcode.name(),
            message,
        };
        let arg = tokens.next();
        if let Some(extra) = tokens.next() {
            return Err(bad(format!("unexpected `{}`", quote(extra))));
        }
        let at = func.code.len();
        f.lines.push((code_offset(&func.code), line));
        let operand = match (opcode.operand(), arg) {
            (OperandKind::None, None) => Operand::None,
            (OperandKind::None, Some(a)) => {
                return Err(bad(format!("takes no operand, got `{}`", quote(a))));
            }
            (_, None) => return Err(bad("missing operand".into())),
            (OperandKind::Imm64, Some(a)) => Operand::Imm(
                parse_int(a)
                    .ok_or_else(|| bad(format!("`{}` is not a 64-bit integer", quote(a))))?,
            ),
            (OperandKind::Local, Some(a)) => Operand::Local(a.parse::<u16>().map_err(|_| {
                bad(format!(
                    "`{}` is not a local index (0 to {})",
                    quote(a),
                    u16::MAX
                ))
            })?),
            (OperandKind::Target, Some(a)) => {
                if !is_identifier(a) {
                    return Err(bad(format!("`{}` is not a label", quote(a))));
                }
                f.jumps.push((at + 1, a.to_owned(), line));
                Operand::Target(0)
            }
            (OperandKind::Func, Some(a)) => {
                if !is_identifier(a) {
                    return Err(bad(format!("`{}` is not a function name", quote(a))));
                }
                calls.push((f.index, at + 1, a.to_owned(), line));
                Operand::Func(0)
            }
        };
        encode_insn(&mut func.code, opcode, operand);
    }
    if let Some(f) = &open {
        return Err(missing_end(&module, f));
    }
    for (func, pos, name, line) in calls {
        let Some(&callee) = map.names.get(&name) else {
            return Err(Error::UnknownFunction { line, name });
        };
        if let Some(f) = module.funcs.get_mut(func) {
            patch_u32(&mut f.code, pos, line_u32(callee));
        }
    }
    match map.names.get("main") {
        None => return Err(Error::NoMainFunction { line: last_line }),
        Some(&i) => {
            if let (Some(f), Some(&line)) = (module.funcs.get(i), header_lines.get(i))
                && f.args != 0
            {
                return Err(Error::MainWithArgs { line, args: f.args });
            }
        }
    }
    map.headers = header_lines;
    Ok((module, map))
}

fn missing_end(module: &Module, f: &Open) -> Error {
    Error::MissingEnd {
        line: f.line,
        name: module
            .funcs
            .get(f.index)
            .map(|f| f.name.clone())
            .unwrap_or_default(),
    }
}

fn code_offset(code: &[u8]) -> u32 {
    line_u32(code.len())
}

fn patch_u32(code: &mut [u8], pos: usize, value: u32) {
    if let Some(slot) = code.get_mut(pos..pos.saturating_add(4)) {
        slot.copy_from_slice(&value.to_le_bytes());
    }
}

fn resolve_jumps(func: &mut RawFunction, f: &Open) -> Result<()> {
    for (pos, label, line) in &f.jumps {
        let Some(&target) = f.labels.get(label) else {
            return Err(Error::UnknownLabel {
                line: *line,
                label: label.clone(),
            });
        };
        patch_u32(&mut func.code, *pos, target);
    }
    Ok(())
}

fn parse_header(line: u32, tokens: &[&str]) -> Result<RawFunction> {
    let syntax = |message: String| Error::Syntax { line, message };
    let usage = "expected `func NAME args=N locals=M`";
    let Some((&name, rest)) = tokens.split_first() else {
        return Err(syntax(usage.into()));
    };
    if !is_identifier(name) {
        return Err(syntax(format!("invalid function name `{}`", quote(name))));
    }
    let (mut args, mut locals) = (None, None);
    for tok in rest {
        let (key, value) = tok
            .split_once('=')
            .ok_or_else(|| syntax(format!("unexpected `{}`: {usage}", quote(tok))))?;
        let value: u32 = value.parse().map_err(|_| {
            syntax(format!(
                "`{}` is not a count in `{}`",
                quote(value),
                quote(tok)
            ))
        })?;
        let slot = match key {
            "args" => &mut args,
            "locals" => &mut locals,
            _ => {
                return Err(syntax(format!(
                    "unknown attribute `{}`: {usage}",
                    quote(key)
                )));
            }
        };
        if slot.replace(value).is_some() {
            return Err(syntax(format!("`{}` given twice", quote(key))));
        }
    }
    match (args, locals) {
        (Some(args), Some(locals)) => Ok(RawFunction {
            name: name.to_owned(),
            args,
            locals,
            code: Vec::new(),
        }),
        _ => Err(syntax(usage.into())),
    }
}

/// Parses a decimal or `0x` hexadecimal integer with an optional sign.
fn parse_int(s: &str) -> Option<i64> {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let magnitude = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None => {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse::<u64>().ok()?
        }
    };
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// One instruction of a function, decoded for printing or listing.
pub(crate) struct Listed {
    pub offset: u32,
    pub opcode: Opcode,
    pub operand: Operand,
}

/// Decodes a whole function and checks that its jumps land on instructions and its calls name
/// functions of a module with `funcs` functions.
pub(crate) fn decode_function(func: &RawFunction, funcs: usize) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < func.code.len() {
        let offset = line_u32(at);
        let d = decode_insn(&func.code, at).map_err(|e| match e {
            DecodeInsnError::UnknownOpcode(byte) => Error::UnknownOpcode {
                func: func.name.clone(),
                offset,
                byte,
            },
            DecodeInsnError::Truncated(op) => Error::TruncatedOperand {
                func: func.name.clone(),
                offset,
                opcode: op.name(),
            },
            DecodeInsnError::End => Error::TruncatedOperand {
                func: func.name.clone(),
                offset,
                opcode: "?",
            },
        })?;
        out.push(Listed {
            offset,
            opcode: d.opcode,
            operand: d.operand,
        });
        at += d.len;
    }
    for insn in &out {
        match insn.operand {
            Operand::Target(target) => {
                if target as usize >= func.code.len() {
                    return Err(Error::JumpOutOfFunction {
                        func: func.name.clone(),
                        offset: insn.offset,
                        target,
                    });
                }
                if out.binary_search_by_key(&target, |i| i.offset).is_err() {
                    return Err(Error::JumpIntoInstruction {
                        func: func.name.clone(),
                        offset: insn.offset,
                        target,
                    });
                }
            }
            Operand::Func(callee) if callee as usize >= funcs => {
                return Err(Error::UnknownCallee {
                    func: func.name.clone(),
                    offset: insn.offset,
                    callee,
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Writes `module` as text; jump targets become labels `L<offset>:`. Fails on code that cannot
/// be decoded, jumps that do not land on an instruction and calls to unknown functions (with
/// the verifier's error variants).
pub fn print(module: &Module) -> Result<String> {
    let mut out = String::new();
    for (i, func) in module.funcs.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let insns = decode_function(func, module.funcs.len())?;
        let mut targets: Vec<u32> = insns
            .iter()
            .filter_map(|i| match i.operand {
                Operand::Target(t) => Some(t),
                _ => None,
            })
            .collect();
        targets.sort_unstable();
        targets.dedup();
        let _ = writeln!(
            out,
            "func {} args={} locals={}",
            func.name, func.args, func.locals
        );
        for insn in &insns {
            if targets.binary_search(&insn.offset).is_ok() {
                let _ = writeln!(out, "L{}:", insn.offset);
            }
            let _ = write!(out, "    {}", insn.opcode.name());
            write_operand(&mut out, module, insn.operand);
            out.push('\n');
        }
        out.push_str("end\n");
    }
    Ok(out)
}

/// Appends an instruction's operand as the text format writes it (jump targets as `L<offset>`,
/// calls by name), with a leading space; nothing for no operand.
pub(crate) fn write_operand(out: &mut String, module: &Module, operand: Operand) {
    let _ = match operand {
        Operand::None => Ok(()),
        Operand::Imm(v) => write!(out, " {v}"),
        Operand::Local(n) => write!(out, " {n}"),
        Operand::Target(t) => write!(out, " L{t}"),
        Operand::Func(f) => {
            let name = module
                .funcs
                .get(f as usize)
                .map_or("?", |f| f.name.as_str());
            write!(out, " {name}")
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints() {
        assert_eq!(parse_int("0"), Some(0));
        assert_eq!(parse_int("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_int("9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int("9223372036854775808"), None);
        assert_eq!(parse_int("-0x10"), Some(-16));
        assert_eq!(parse_int("+5"), Some(5));
        assert_eq!(parse_int("--5"), None);
        assert_eq!(parse_int("-+5"), None);
        assert_eq!(parse_int(""), None);
        assert_eq!(parse_int("1e3"), None);
    }

    #[test]
    fn parse_and_print() {
        let src = "func main args=0 locals=1 ; c\nloop: loop_header\n load_imm 0x10\n call f\n jump_if_false loop\n return_nil\nend\nfunc f args=1 locals=1\n load_local_0\n return\nend\n";
        let m = parse(src).unwrap();
        let text = print(&m).unwrap();
        assert!(text.contains("L0:\n    loop_header\n    load_imm 16\n    call f\n"));
        assert_eq!(parse(&text).unwrap(), m);
    }
}
