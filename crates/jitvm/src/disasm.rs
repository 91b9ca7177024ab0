//! The bytecode listing (`jitvm disasm`): per function, every instruction with its byte offset
//! and the operand-stack depth before it (`-` for unreachable code), jump targets as `L<offset>`.
//!
//! ```text
//! func main args=0 locals=2 max_stack=2
//! L0:
//!      0  [0]  loop_header
//!      1  [0]  load_local 1
//! ```

#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::fmt::Write as _;

use crate::bytecode::Module;
use crate::error::Result;
use crate::program::Program;
use crate::text::decode_function;

/// Lists `module`, with the stack depths `program` (verified from it) computed.
pub fn listing(module: &Module, program: &Program) -> Result<String> {
    let mut out = String::new();
    for (i, raw) in module.funcs.iter().enumerate() {
        let verified = program.functions().get(i);
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "func {} args={} locals={} max_stack={}",
            raw.name,
            raw.args,
            raw.locals,
            verified.map_or(0, |f| f.max_stack())
        );
        let insns = decode_function(raw, module.funcs.len())?;
        for (index, insn) in insns.iter().enumerate() {
            if verified.is_some_and(|f| f.is_jump_target(index)) {
                let _ = writeln!(out, "L{}:", insn.offset);
            }
            let depth = verified
                .and_then(|f| f.depth_at(index))
                .map_or_else(|| "-".to_owned(), |d| d.to_string());
            let _ = write!(out, "{:>6}  [{depth}]  {}", insn.offset, insn.opcode.name());
            crate::text::write_operand(&mut out, module, insn.operand);
            out.push('\n');
        }
        out.push_str("end\n");
    }
    Ok(out)
}
