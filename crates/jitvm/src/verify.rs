//! The verifier: the only producer of [`Program`].
//!
//! It takes an unverified [`Module`] and checks, per function: the header (`locals >= args`,
//! at most [`MAX_LOCALS`] locals, some code, a unique name); that the code decodes (known
//! opcodes, whole operands); that every jump lands on the first byte of an instruction of the
//! same function, every local index is below `locals`, every call names a function; and, by
//! abstract interpretation of the operand-stack depth over all reachable paths, that nothing
//! underflows (a call pops exactly the callee's declared arguments), the depth stays within
//! [`MAX_STACK`], agrees wherever paths merge and is zero at every `loop_header`, and that no
//! path runs past the last instruction. Finally `main` must exist and take no arguments.
//!
//! Errors name the function and the byte offset of the instruction. Every check is in this one
//! pass; the interpreter and the JIT rely on all of them.

#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::collections::HashSet;

use crate::bytecode::{DecodeInsnError, Flow, Module, Opcode, Operand, decode_insn};
use crate::error::{Error, Result};
use crate::program::{FuncId, Function, Insn, MAX_LOCALS, MAX_STACK, Program};

/// Verifies `module` and builds the [`Program`] the interpreter and the JIT run.
pub fn verify(module: &Module) -> Result<Program> {
    let mut names = HashSet::new();
    for f in &module.funcs {
        if !names.insert(f.name.as_str()) {
            return Err(Error::DuplicateName {
                func: f.name.clone(),
            });
        }
        if f.locals < f.args {
            return Err(Error::LocalsBelowArgs {
                func: f.name.clone(),
                args: f.args,
                locals: f.locals,
            });
        }
        if f.locals > MAX_LOCALS {
            return Err(Error::TooManyLocals {
                func: f.name.clone(),
                locals: f.locals,
                limit: MAX_LOCALS,
            });
        }
        if f.code.is_empty() {
            return Err(Error::EmptyFunction {
                func: f.name.clone(),
            });
        }
    }
    let main = module
        .funcs
        .iter()
        .position(|f| f.name == "main")
        .ok_or(Error::MissingMain)?;
    let args: Vec<u32> = module.funcs.iter().map(|f| f.args).collect();
    let mut funcs = Vec::with_capacity(module.funcs.len());
    for f in &module.funcs {
        funcs.push(verify_function(module, f, &args)?);
    }
    for f in &mut funcs {
        f.lowered = crate::ir::lower(f, &args);
    }
    let main = FuncId::try_from(main).map_err(|_| Error::MissingMain)?;
    if let Some(f) = funcs.get(main as usize)
        && f.args != 0
    {
        return Err(Error::MainHasArgs { args: f.args });
    }
    Ok(Program { funcs, main })
}

fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn verify_function(
    module: &Module,
    raw: &crate::bytecode::RawFunction,
    args: &[u32],
) -> Result<Function> {
    let name = || raw.name.clone();
    let code = &raw.code;

    // 1. Decode linearly; remember where instructions start.
    let mut decoded = Vec::new();
    let mut index_of = vec![u32::MAX; code.len()];
    let mut at = 0usize;
    while at < code.len() {
        let offset = u32_of(at);
        let d = decode_insn(code, at).map_err(|e| match e {
            DecodeInsnError::UnknownOpcode(byte) => Error::UnknownOpcode {
                func: name(),
                offset,
                byte,
            },
            DecodeInsnError::Truncated(op) => Error::TruncatedOperand {
                func: name(),
                offset,
                opcode: op.name(),
            },
            DecodeInsnError::End => Error::TruncatedOperand {
                func: name(),
                offset,
                opcode: "?",
            },
        })?;
        if let Some(slot) = index_of.get_mut(at) {
            *slot = u32_of(decoded.len());
        }
        decoded.push((offset, d.opcode, d.operand));
        at += d.len;
    }

    // 2. Operands: jump targets, local indices, callees.
    let mut insns = Vec::with_capacity(decoded.len());
    let mut is_target = vec![false; decoded.len()];
    for &(offset, opcode, operand) in &decoded {
        let local = |index: u32| {
            if index < raw.locals {
                Ok(index)
            } else {
                Err(Error::LocalOutOfRange {
                    func: name(),
                    offset,
                    index,
                    locals: raw.locals,
                })
            }
        };
        let target = |target: u32| {
            if target as usize >= code.len() {
                return Err(Error::JumpOutOfFunction {
                    func: name(),
                    offset,
                    target,
                });
            }
            match index_of.get(target as usize) {
                Some(&i) if i != u32::MAX => Ok(i),
                _ => Err(Error::JumpIntoInstruction {
                    func: name(),
                    offset,
                    target,
                }),
            }
        };
        let insn = match (opcode, operand) {
            (Opcode::LoadImm, Operand::Imm(v)) => Insn::LoadImm(v),
            (Opcode::LoadLocal, Operand::Local(n)) => Insn::LoadLocal(local(u32::from(n))?),
            (Opcode::StoreLocal, Operand::Local(n)) => Insn::StoreLocal(local(u32::from(n))?),
            (Opcode::LoadLocal0, _) => Insn::LoadLocal(local(0)?),
            (Opcode::LoadLocal1, _) => Insn::LoadLocal(local(1)?),
            (Opcode::Add, _) => Insn::Add,
            (Opcode::Sub, _) => Insn::Sub,
            (Opcode::Mul, _) => Insn::Mul,
            (Opcode::Div, _) => Insn::Div,
            (Opcode::Mod, _) => Insn::Mod,
            (Opcode::Neg, _) => Insn::Neg,
            (Opcode::Lt, _) => Insn::Lt,
            (Opcode::Le, _) => Insn::Le,
            (Opcode::Gt, _) => Insn::Gt,
            (Opcode::Ge, _) => Insn::Ge,
            (Opcode::Eq, _) => Insn::Eq,
            (Opcode::Ne, _) => Insn::Ne,
            (Opcode::Jump, Operand::Target(t)) => {
                let t = target(t)?;
                mark(&mut is_target, t);
                Insn::Jump(t)
            }
            (Opcode::JumpIfFalse, Operand::Target(t)) => {
                let t = target(t)?;
                mark(&mut is_target, t);
                Insn::JumpIfFalse(t)
            }
            (Opcode::LoopHeader, _) => Insn::LoopHeader,
            (Opcode::Call, Operand::Func(callee)) => {
                if callee as usize >= module.funcs.len() {
                    return Err(Error::UnknownCallee {
                        func: name(),
                        offset,
                        callee,
                    });
                }
                Insn::Call(callee)
            }
            (Opcode::Return, _) => Insn::Return,
            (Opcode::ReturnNil, _) => Insn::ReturnNil,
            (Opcode::Pop, _) => Insn::Pop,
            (Opcode::Dup, _) => Insn::Dup,
            (Opcode::Print, _) => Insn::Print,
            (Opcode::Halt, _) => Insn::Halt,
            // The decoder always pairs an opcode with its operand kind.
            (op, _) => {
                return Err(Error::TruncatedOperand {
                    func: name(),
                    offset,
                    opcode: op.name(),
                });
            }
        };
        insns.push(insn);
    }

    // 3. Stack depths over every reachable path.
    let mut depth: Vec<Option<u32>> = vec![None; insns.len()];
    let mut max_stack = 0u32;
    let mut work = vec![0usize];
    if let Some(d) = depth.first_mut() {
        *d = Some(0);
    }
    while let Some(i) = work.pop() {
        let (Some(&(offset, opcode, _)), Some(&insn), Some(&Some(d))) =
            (decoded.get(i), insns.get(i), depth.get(i))
        else {
            continue;
        };
        let mut pops = opcode.pops();
        if let Insn::Call(callee) = insn {
            let callee_args = args.get(callee as usize).copied().unwrap_or(0);
            if d < callee_args {
                return Err(Error::CallArgCount {
                    func: name(),
                    offset,
                    callee: module
                        .funcs
                        .get(callee as usize)
                        .map(|f| f.name.clone())
                        .unwrap_or_default(),
                    args: callee_args,
                    depth: d,
                });
            }
            pops = pops.saturating_add(callee_args);
        }
        if d < pops {
            return Err(Error::StackUnderflow {
                func: name(),
                offset,
                needs: pops,
                depth: d,
            });
        }
        if insn == Insn::LoopHeader && d != 0 {
            return Err(Error::LoopHeaderStack {
                func: name(),
                offset,
                depth: d,
            });
        }
        let after = d - pops + opcode.pushes();
        if after > MAX_STACK {
            return Err(Error::StackOverflow {
                func: name(),
                offset,
                limit: MAX_STACK,
            });
        }
        max_stack = max_stack.max(after);
        let mut succ = |j: usize, work: &mut Vec<usize>| -> Result<()> {
            match depth.get_mut(j) {
                Some(slot @ None) => {
                    *slot = Some(after);
                    work.push(j);
                    Ok(())
                }
                Some(Some(seen)) if *seen != after => Err(Error::StackMismatch {
                    func: name(),
                    offset: decoded.get(j).map_or(0, |&(o, _, _)| o),
                    expected: *seen,
                    found: after,
                }),
                Some(Some(_)) => Ok(()),
                None => Err(Error::FallsOffEnd {
                    func: name(),
                    offset,
                }),
            }
        };
        if matches!(opcode.flow(), Flow::Next | Flow::Branch) {
            succ(i + 1, &mut work)?;
        }
        if let Insn::Jump(t) | Insn::JumpIfFalse(t) = insn {
            succ(t as usize, &mut work)?;
        }
    }

    Ok(Function {
        name: name(),
        args: raw.args,
        locals: raw.locals,
        code: insns,
        offsets: decoded.iter().map(|&(o, _, _)| o).collect(),
        depth,
        is_target,
        max_stack,
        lowered: crate::ir::Lowered::default(),
    })
}

fn mark(is_target: &mut [bool], index: u32) {
    if let Some(t) = is_target.get_mut(index as usize) {
        *t = true;
    }
}
