//! The code buffer both encoders share: bytes, labels, fix-ups and the size limit.
//!
//! A [`CodeBuffer`] knows nothing of any instruction set. The one ISA-specific part, how a
//! fix-up's field is written and how far it reaches, is the [`FixupKind`] it is generic over
//! (x86-64 rel8/rel32, AArch64 imm26/imm19/imm14/ADR). The [`Encoder`] trait is what every
//! assembler built on a code buffer offers.
//!
//! Rules, the same for every instruction set:
//!
//! - Appends are whole or nothing. An append that would take the code past the buffer's limit
//!   ([`MAX_CODE_SIZE`] unless made smaller) writes nothing and makes the buffer *too large*:
//!   from then on nothing is appended, fallible operations return [`Error::CodeTooLarge`], and
//!   so does [`CodeBuffer::finish`].
//! - A branch to a bound label is patched when it is appended; out of reach, it is
//!   [`Error::BranchOutOfRange`] and nothing is appended. A branch to an unbound label leaves
//!   a fix-up that [`CodeBuffer::bind`] patches.
//! - `bind` binds the label even when an earlier branch cannot reach it: it patches every
//!   fix-up it can, returns the first [`Error::BranchOutOfRange`], and `finish` returns that
//!   error again.
//! - `finish` fails with [`Error::UnboundLabel`] if a branch names a label never bound. A label
//!   made and never used is fine.

use crate::{Error, Label, Result};
use core::fmt;

/// The largest code a buffer produces, in bytes (just under 2 GiB, so that every 32-bit
/// displacement within the code is in range).
pub const MAX_CODE_SIZE: usize = i32::MAX as usize;

/// How one kind of label-relative field is written: the only part of a [`CodeBuffer`] that
/// depends on the instruction set.
pub trait FixupKind: Copy + fmt::Debug {
    /// How many bytes the field occupies (the bytes [`patch`](Self::patch) is given).
    fn width(self) -> usize;

    /// Writes into `field` (the `width` bytes at offset `at` of the code, holding the
    /// instruction's bits with the displacement still zero) the displacement to `target`.
    ///
    /// # Errors
    ///
    /// [`Error::BranchOutOfRange`] (with `at`), leaving `field` alone, if `target` is beyond
    /// the field's reach.
    fn patch(self, field: &mut [u8], at: usize, target: usize) -> Result<()>;
}

/// A branch whose label was not bound when it was appended.
#[derive(Clone, Copy, Debug)]
struct Fixup<K> {
    /// Offset of the field to patch.
    at: usize,
    kind: K,
}

/// The state of one label.
#[derive(Clone, Debug)]
struct LabelSlot<K> {
    /// Where the label is bound.
    bound: Option<usize>,
    /// Fields that wait for the label.
    pending: Vec<Fixup<K>>,
}

/// Code bytes with labels and fix-ups, generic over the instruction set's [`FixupKind`]. See
/// the [module documentation](self) for the rules.
#[derive(Clone)]
pub struct CodeBuffer<K> {
    bytes: Vec<u8>,
    labels: Vec<LabelSlot<K>>,
    /// Maximum code size (always [`MAX_CODE_SIZE`] outside tests).
    limit: usize,
    /// Set once an append did not fit under `limit`; nothing is appended afterwards.
    too_large: bool,
    /// The first fix-up `bind` could not patch, reported again by `finish`.
    broken: Option<Error>,
}

impl<K: fmt::Debug> fmt::Debug for CodeBuffer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeBuffer")
            .field("len", &self.bytes.len())
            .field("labels", &self.labels)
            .field("limit", &self.limit)
            .field("too_large", &self.too_large)
            .field("broken", &self.broken)
            .finish()
    }
}

impl<K: FixupKind> Default for CodeBuffer<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: FixupKind> CodeBuffer<K> {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty buffer with room for `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> Self {
        CodeBuffer {
            bytes: Vec::with_capacity(bytes.min(MAX_CODE_SIZE)),
            labels: Vec::new(),
            limit: MAX_CODE_SIZE,
            too_large: false,
            broken: None,
        }
    }

    /// An empty buffer that holds at most `limit` bytes (at most [`MAX_CODE_SIZE`]).
    pub fn with_limit(limit: usize) -> Self {
        CodeBuffer {
            limit: limit.min(MAX_CODE_SIZE),
            ..Self::new()
        }
    }

    /// The offset of the next byte (the number of bytes so far).
    pub fn offset(&self) -> usize {
        self.bytes.len()
    }

    /// The code so far. Fields that wait for a label hold a zero displacement.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether an append has failed for want of room (then nothing more is appended).
    pub fn is_too_large(&self) -> bool {
        self.too_large
    }

    /// `Ok` unless the buffer is [too large](Self::is_too_large).
    ///
    /// # Errors
    ///
    /// [`Error::CodeTooLarge`].
    pub fn check_size(&self) -> Result<()> {
        if self.too_large {
            Err(Error::CodeTooLarge)
        } else {
            Ok(())
        }
    }

    /// Whether `n` more bytes fit under the limit; if not, the buffer becomes too large.
    pub fn ensure_room(&mut self, n: usize) -> bool {
        if self.too_large || n > self.limit - self.bytes.len() {
            self.too_large = true;
            return false;
        }
        self.bytes.reserve(n);
        true
    }

    /// Appends `bytes` whole, or nothing if they do not fit. Returns whether they were
    /// appended.
    pub fn emit(&mut self, bytes: &[u8]) -> bool {
        if !self.ensure_room(bytes.len()) {
            return false;
        }
        self.bytes.extend_from_slice(bytes);
        true
    }

    /// [`emit`](Self::emit) as a `Result`.
    ///
    /// # Errors
    ///
    /// [`Error::CodeTooLarge`] if the bytes do not fit (nothing is appended).
    pub fn put(&mut self, bytes: &[u8]) -> Result<()> {
        if self.emit(bytes) {
            Ok(())
        } else {
            Err(Error::CodeTooLarge)
        }
    }

    /// Appends `count` copies of `pattern` (all or none; cheap even for millions of copies).
    /// Returns whether they were appended.
    pub fn fill(&mut self, pattern: &[u8], count: usize) -> bool {
        let total = pattern.len().saturating_mul(count);
        if total == 0 {
            return true;
        }
        if !self.ensure_room(total) {
            return false;
        }
        let start = self.bytes.len();
        self.bytes.extend_from_slice(pattern);
        let mut done = pattern.len();
        while done < total {
            let chunk = done.min(total - done);
            self.bytes.extend_from_within(start..start + chunk);
            done += chunk;
        }
        true
    }

    /// A new, unbound label.
    pub fn new_label(&mut self) -> Label {
        match u32::try_from(self.labels.len()) {
            Ok(i) if i < u32::MAX => {
                self.labels.push(LabelSlot {
                    bound: None,
                    pending: Vec::new(),
                });
                Label(i)
            }
            // Out of label numbers: a label that no method accepts (Error::UnknownLabel).
            _ => Label(u32::MAX),
        }
    }

    fn slot(&mut self, l: Label) -> Result<&mut LabelSlot<K>> {
        usize::try_from(l.0)
            .ok()
            .and_then(|i| self.labels.get_mut(i))
            .ok_or(Error::UnknownLabel(l.0))
    }

    /// The offset `l` is bound to, or `None` if it is not bound (or not this buffer's).
    pub fn label_offset(&self, l: Label) -> Option<usize> {
        self.labels.get(usize::try_from(l.0).ok()?)?.bound
    }

    /// Binds `l` to the current offset and patches the fix-ups that wait for it.
    ///
    /// # Errors
    ///
    /// [`Error::CodeTooLarge`], [`Error::UnknownLabel`], [`Error::LabelBoundTwice`] (the
    /// buffer is unchanged); [`Error::BranchOutOfRange`] for the first fix-up that cannot
    /// reach here (the label is bound anyway, the other fix-ups are patched, and
    /// [`finish`](Self::finish) fails).
    pub fn bind(&mut self, l: Label) -> Result<()> {
        self.check_size()?;
        let target = self.bytes.len();
        let slot = self.slot(l)?;
        if slot.bound.is_some() {
            return Err(Error::LabelBoundTwice(l.0));
        }
        slot.bound = Some(target);
        let pending = core::mem::take(&mut slot.pending);
        let mut first = None;
        for f in pending {
            if let Err(e) = self.patch(f, target) {
                first.get_or_insert_with(|| e.clone());
                self.broken.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Writes the displacement of `f` to `target` into the code.
    fn patch(&mut self, f: Fixup<K>, target: usize) -> Result<()> {
        let end = f.at.saturating_add(f.kind.width());
        match self.bytes.get_mut(f.at..end) {
            Some(field) => f.kind.patch(field, f.at, target),
            // Fields are recorded inside the code, so this does not happen.
            None => Err(Error::BranchOutOfRange {
                at: f.at,
                target,
                range: 0,
            }),
        }
    }

    /// Appends `inst`, an instruction whose bytes from `field` on are a `kind` field naming
    /// `l`: patched now if `l` is bound, else left for [`bind`](Self::bind).
    ///
    /// # Errors
    ///
    /// [`Error::CodeTooLarge`], [`Error::UnknownLabel`], or [`Error::BranchOutOfRange`] if `l`
    /// is bound out of reach; nothing is appended on error.
    pub fn emit_branch(&mut self, inst: &[u8], field: usize, kind: K, l: Label) -> Result<()> {
        self.check_size()?;
        let start = self.bytes.len();
        let target = self.slot(l)?.bound;
        let at = start + field;
        if !self.ensure_room(inst.len()) {
            return Err(Error::CodeTooLarge);
        }
        self.bytes.extend_from_slice(inst);
        let fixup = Fixup { at, kind };
        let done = match target {
            Some(target) => self.patch(fixup, target),
            None => self.slot(l).map(|slot| slot.pending.push(fixup)),
        };
        if done.is_err() {
            self.bytes.truncate(start);
        }
        done
    }

    /// The finished code.
    ///
    /// # Errors
    ///
    /// [`Error::CodeTooLarge`] if an append did not fit; [`Error::BranchOutOfRange`] if `bind`
    /// could not patch a fix-up; [`Error::UnboundLabel`] if a fix-up waits for a label that was
    /// never bound.
    pub fn finish(self) -> Result<Vec<u8>> {
        self.check_size()?;
        if let Some(e) = self.broken {
            return Err(e);
        }
        if let Some(i) = self.labels.iter().position(|l| !l.pending.is_empty()) {
            return Err(Error::UnboundLabel(u32::try_from(i).unwrap_or(u32::MAX)));
        }
        Ok(self.bytes)
    }
}

/// The displacement from `from` to `target`, if both fit in an `i64`.
pub(crate) fn displacement(from: usize, target: usize) -> Option<i64> {
    Some(i64::try_from(target).ok()? - i64::try_from(from).ok()?)
}

/// What every assembler built on a [`CodeBuffer`] offers: labels, binding, the offset and the
/// finished code. The provided methods delegate to the buffer; each assembler also has them as
/// inherent methods, so callers need not import this trait.
pub trait Encoder {
    /// The instruction set's kinds of label-relative field.
    type Fixup: FixupKind;

    /// The assembler's code buffer.
    fn buffer(&self) -> &CodeBuffer<Self::Fixup>;

    /// The assembler's code buffer, to append to.
    fn buffer_mut(&mut self) -> &mut CodeBuffer<Self::Fixup>;

    /// The code buffer, giving up the assembler.
    fn into_buffer(self) -> CodeBuffer<Self::Fixup>
    where
        Self: Sized;

    /// Pads with no-ops until the offset is a multiple of `n` (how `n` is rounded is up to the
    /// instruction set).
    fn align(&mut self, n: usize);

    /// A new, unbound label. See [`CodeBuffer::new_label`].
    fn new_label(&mut self) -> Label {
        self.buffer_mut().new_label()
    }

    /// Binds `l` to the current offset. See [`CodeBuffer::bind`].
    ///
    /// # Errors
    ///
    /// As [`CodeBuffer::bind`].
    fn bind(&mut self, l: Label) -> Result<()> {
        self.buffer_mut().bind(l)
    }

    /// The offset `l` is bound to, if any. See [`CodeBuffer::label_offset`].
    fn label_offset(&self, l: Label) -> Option<usize> {
        self.buffer().label_offset(l)
    }

    /// The offset of the next instruction.
    fn offset(&self) -> usize {
        self.buffer().offset()
    }

    /// The code so far.
    fn bytes(&self) -> &[u8] {
        self.buffer().bytes()
    }

    /// The finished code. See [`CodeBuffer::finish`].
    ///
    /// # Errors
    ///
    /// As [`CodeBuffer::finish`].
    fn finish(self) -> Result<Vec<u8>>
    where
        Self: Sized,
    {
        self.into_buffer().finish()
    }
}

/// Gives an assembler type `$asm`, which keeps its `CodeBuffer<$fixup>` in a field `buf` and
/// has an inherent `align`, the [`Encoder`] methods both as inherent methods (so that callers
/// need not import the trait) and as the trait's implementation.
macro_rules! impl_encoder {
    ($asm:ty, $fixup:ty) => {
        /// Labels and the code: the shared [`CodeBuffer`](crate::buffer::CodeBuffer), whose
        /// [rules](crate::buffer) say what each error leaves behind.
        impl $asm {
            /// The offset of the next instruction (the number of bytes emitted so far).
            pub fn offset(&self) -> usize {
                self.buf.offset()
            }

            /// The code so far. Branches to labels not bound yet hold a zero displacement.
            pub fn bytes(&self) -> &[u8] {
                self.buf.bytes()
            }

            /// A new, unbound label.
            pub fn new_label(&mut self) -> $crate::Label {
                self.buf.new_label()
            }

            /// Binds `l` to the current offset and patches the branches that wait for it.
            ///
            /// # Errors
            ///
            /// [`Error::CodeTooLarge`](crate::Error::CodeTooLarge),
            /// [`Error::UnknownLabel`](crate::Error::UnknownLabel),
            /// [`Error::LabelBoundTwice`](crate::Error::LabelBoundTwice) (nothing changes);
            /// [`Error::BranchOutOfRange`](crate::Error::BranchOutOfRange) for the first earlier
            /// branch that cannot reach here (the label is bound anyway, the other branches are
            /// patched, and `finish` fails). See [`CodeBuffer::bind`](crate::buffer::CodeBuffer::bind).
            pub fn bind(&mut self, l: $crate::Label) -> $crate::Result<()> {
                self.buf.bind(l)
            }

            /// The offset `l` is bound to, or `None` if it is not bound (or not this
            /// assembler's).
            pub fn label_offset(&self, l: $crate::Label) -> Option<usize> {
                self.buf.label_offset(l)
            }

            /// The finished code.
            ///
            /// # Errors
            ///
            /// [`Error::CodeTooLarge`](crate::Error::CodeTooLarge) if the code outgrew
            /// [`MAX_CODE_SIZE`](crate::MAX_CODE_SIZE);
            /// [`Error::BranchOutOfRange`](crate::Error::BranchOutOfRange) if a forward branch
            /// could not reach its label when it was bound;
            /// [`Error::UnboundLabel`](crate::Error::UnboundLabel) if a branch uses a label that
            /// was never bound.
            pub fn finish(self) -> $crate::Result<Vec<u8>> {
                self.buf.finish()
            }
        }

        impl $crate::buffer::Encoder for $asm {
            type Fixup = $fixup;

            fn buffer(&self) -> &$crate::buffer::CodeBuffer<$fixup> {
                &self.buf
            }

            fn buffer_mut(&mut self) -> &mut $crate::buffer::CodeBuffer<$fixup> {
                &mut self.buf
            }

            fn into_buffer(self) -> $crate::buffer::CodeBuffer<$fixup> {
                self.buf
            }

            fn align(&mut self, n: usize) {
                <$asm>::align(self, n);
            }
        }
    };
}
pub(crate) use impl_encoder;

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy instruction set: one-byte fields holding the displacement from the field's end,
    /// in `-4..4`.
    #[derive(Clone, Copy, Debug)]
    struct Tiny;

    impl FixupKind for Tiny {
        fn width(self) -> usize {
            1
        }

        fn patch(self, field: &mut [u8], at: usize, target: usize) -> Result<()> {
            match displacement(at + 1, target) {
                Some(d @ -4..=3) => {
                    field[0] = d as u8;
                    Ok(())
                }
                _ => Err(Error::BranchOutOfRange {
                    at,
                    target,
                    range: 4,
                }),
            }
        }
    }

    /// A branch: opcode 0xB0, then the field.
    fn branch(b: &mut CodeBuffer<Tiny>, l: Label) -> Result<()> {
        b.emit_branch(&[0xB0, 0], 1, Tiny, l)
    }

    #[test]
    fn forward_and_backward_branches_are_patched() {
        let mut b = CodeBuffer::<Tiny>::new();
        let l = b.new_label();
        branch(&mut b, l).unwrap();
        assert_eq!(b.bytes(), [0xB0, 0]);
        assert!(b.emit(&[0x90]));
        b.bind(l).unwrap();
        branch(&mut b, l).unwrap();
        assert_eq!(b.label_offset(l), Some(3));
        assert_eq!(b.finish().unwrap(), [0xB0, 1, 0x90, 0xB0, 0xFE]);
    }

    #[test]
    fn unbound_label_at_finish_is_an_error() {
        let mut b = CodeBuffer::<Tiny>::new();
        let unused = b.new_label();
        let l = b.new_label();
        branch(&mut b, l).unwrap();
        assert_eq!(b.label_offset(unused), None);
        assert_eq!(b.clone().finish(), Err(Error::UnboundLabel(l.index())));
        b.bind(l).unwrap();
        assert_eq!(b.finish().unwrap(), [0xB0, 0]);
    }

    #[test]
    fn label_bound_twice_is_an_error() {
        let mut b = CodeBuffer::<Tiny>::new();
        let l = b.new_label();
        b.bind(l).unwrap();
        assert!(b.emit(&[0x90]));
        assert_eq!(b.bind(l), Err(Error::LabelBoundTwice(l.index())));
        assert_eq!(b.label_offset(l), Some(0), "the first binding stays");
        assert_eq!(b.finish().unwrap(), [0x90]);
    }

    #[test]
    fn unknown_label_is_an_error() {
        let mut other = CodeBuffer::<Tiny>::new();
        other.new_label();
        let foreign = other.new_label();
        let mut b = CodeBuffer::<Tiny>::new();
        assert_eq!(branch(&mut b, foreign), Err(Error::UnknownLabel(1)));
        assert_eq!(b.bind(foreign), Err(Error::UnknownLabel(1)));
        assert_eq!(b.label_offset(foreign), None);
        assert!(b.bytes().is_empty());
    }

    #[test]
    fn fixup_out_of_range_is_an_error() {
        // Backward, bound: reported by the branch, nothing appended.
        let mut b = CodeBuffer::<Tiny>::new();
        let l = b.new_label();
        b.bind(l).unwrap();
        assert!(b.fill(&[0x90], 3));
        let err = Error::BranchOutOfRange {
            at: 4,
            target: 0,
            range: 4,
        };
        assert_eq!(branch(&mut b, l), Err(err));
        assert_eq!(b.offset(), 3);
        b.finish().unwrap();

        // Forward: bind binds, patches the fix-ups in reach, reports the first one out of
        // reach; finish reports it again.
        let mut b = CodeBuffer::<Tiny>::new();
        let l = b.new_label();
        branch(&mut b, l).unwrap();
        assert!(b.fill(&[0x90], 3));
        branch(&mut b, l).unwrap();
        assert!(b.fill(&[0x90], 2));
        let err = Error::BranchOutOfRange {
            at: 1,
            target: 9,
            range: 4,
        };
        assert_eq!(b.bind(l), Err(err.clone()));
        assert_eq!(b.label_offset(l), Some(9));
        assert_eq!(b.bytes()[6], 2, "the branch in reach is patched");
        assert_eq!(b.finish(), Err(err));
    }

    #[test]
    fn size_limit() {
        let mut b = CodeBuffer::<Tiny>::with_limit(4);
        let l = b.new_label();
        assert!(b.fill(&[0x90], 2));
        branch(&mut b, l).unwrap(); // exactly the limit
        assert!(!b.emit(&[0x90]), "does not fit: not appended");
        assert!(b.is_too_large());
        assert!(!b.emit(&[]));
        assert_eq!(b.offset(), 4);
        assert_eq!(b.put(&[]), Err(Error::CodeTooLarge));
        assert_eq!(branch(&mut b, l), Err(Error::CodeTooLarge));
        assert_eq!(b.bind(l), Err(Error::CodeTooLarge));
        assert_eq!(b.finish(), Err(Error::CodeTooLarge));

        // A whole append that does not fit is not written at all.
        let mut b = CodeBuffer::<Tiny>::with_limit(5);
        assert!(!b.fill(&[1, 2], 3));
        assert_eq!(b.offset(), 0);
        assert_eq!(b.finish(), Err(Error::CodeTooLarge));
        let mut b = CodeBuffer::<Tiny>::new();
        assert!(!b.fill(&[1, 2], usize::MAX));
        assert_eq!(b.finish(), Err(Error::CodeTooLarge));
    }

    #[test]
    fn fill_repeats_the_pattern() {
        let mut b = CodeBuffer::<Tiny>::new();
        assert!(b.emit(&[7]));
        assert!(b.fill(&[1, 2, 3], 0));
        assert!(b.fill(&[1, 2, 3], 5));
        let want: Vec<u8> = core::iter::once(7)
            .chain([1, 2, 3].iter().copied().cycle().take(15))
            .collect();
        assert_eq!(b.finish().unwrap(), want);
    }

    /// What generic code can do with any assembler through [`Encoder`].
    fn through_the_trait<E: Encoder>(mut e: E) -> Result<Vec<u8>> {
        let start = e.new_label();
        let unused = e.new_label();
        e.bind(start)?;
        assert_eq!(e.bind(start), Err(Error::LabelBoundTwice(start.index())));
        e.align(8);
        e.buffer_mut().put(&[0xAA; 4])?;
        e.align(8);
        assert_eq!(e.offset(), 8);
        assert_eq!(e.bytes().len(), 8);
        assert_eq!(e.label_offset(start), Some(0));
        assert_eq!(e.label_offset(unused), None);
        assert!(!e.buffer().is_too_large());
        e.finish()
    }

    #[test]
    fn both_assemblers_are_encoders() {
        let x = through_the_trait(crate::x64::Assembler::new()).unwrap();
        assert_eq!(x, [0xAA, 0xAA, 0xAA, 0xAA, 0x0F, 0x1F, 0x40, 0x00]);
        let a = through_the_trait(crate::a64::Assembler::new()).unwrap();
        assert_eq!(a[..4], [0xAA; 4]);
        assert_eq!(a[4..], 0xd503_201fu32.to_le_bytes());
    }
}
