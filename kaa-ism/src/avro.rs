//! Avro binary encoding primitives, as used by every Kaa inter-service message.
//!
//! This is the part of the [Avro specification] that the Kaa schemas need: zigzag
//! varint `int` and `long`, length-prefixed `bytes` and `string`, union branch
//! indexes, and `map`s written as blocks. Records are simply their fields in order,
//! so message crates build their codecs from these calls.
//!
//! # Reading
//!
//! [`Reader`] decodes from a borrowed slice. Strings and bytes are returned as
//! sub-slices of the input, never copied. No length read from the input is trusted:
//! a length is checked against the bytes that remain before it is used, and the
//! reader never allocates or reserves on the strength of a count it has not checked
//! (see [`Reader::map_block`]). Every error is a [`DecodeError`] naming the record,
//! the field and the byte offset.
//!
//! Every string is checked to be UTF-8. A single string is checked with
//! `std::str::from_utf8`; a run of many short strings, such as the entries of a
//! `map<string>`, is checked once, ahead, with [`simdutf8`] (SIMD, far faster than
//! std on long inputs; for inputs under 64 bytes it uses std itself), and each string
//! is then taken from the checked span (see [`Reader::check_utf8_ahead`]; the
//! result is the same as checking each string on its own).
//!
//! Deviations from a maximally liberal reader, all of them deliberate:
//! - overlong varints (a redundant trailing `0x00` group, e.g. `[0x80, 0x00]` for 0)
//!   and varints that do not fit 64 bits are rejected; Apache Avro never writes them;
//! - an `int` whose value does not fit 32 bits is rejected;
//! - a map block with a negative count must carry a byte size that matches the
//!   entries that follow it.
//!
//! # Writing
//!
//! The `put_*` functions append to any [`BufMut`]; the `*_len` functions give the
//! exact encoded size so callers can reserve once. [`SplicedDatum`] is an encoded
//! datum whose one large `bytes` value is borrowed rather than copied, for callers
//! that can write non-contiguous bytes.
//!
//! ```
//! use kaa_ism::avro::{put_long, put_string, Reader};
//!
//! let mut buf = Vec::new();
//! put_long(&mut buf, -3);
//! put_string(&mut buf, "héllo");
//! assert_eq!(buf[0], 0x05); // zigzag(-3) = 5
//!
//! let mut reader = Reader::new(&buf, "Example");
//! assert_eq!(reader.long("n")?, -3);
//! assert_eq!(reader.string("greeting")?, "héllo");
//! assert!(reader.is_empty());
//! # Ok::<(), kaa_ism::avro::DecodeError>(())
//! ```
//!
//! [Avro specification]: https://avro.apache.org/docs/1.12.0/specification/#binary-encoding

use bytes::BufMut;

/// Why a datum could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The input ended in the middle of a value.
    #[error("input ends in the middle of a value")]
    UnexpectedEnd,
    /// A varint had a redundant trailing zero group.
    #[error("overlong varint encoding")]
    OverlongVarint,
    /// A varint does not fit in 64 bits.
    #[error("varint overflows 64 bits")]
    VarintOverflow,
    /// An Avro `int` whose value does not fit in 32 bits.
    #[error("int value {0} out of the 32-bit range")]
    IntOutOfRange(i64),
    /// A `bytes` or `string` length (or a map block byte size) is negative.
    #[error("negative length {0}")]
    NegativeLength(i64),
    /// A length or count promises more data than the input holds.
    #[error("length {length} exceeds the {remaining} bytes that remain")]
    LengthPastEnd {
        /// The length read from the input.
        length: u64,
        /// How many bytes remained after the length.
        remaining: usize,
    },
    /// A `string` that is not valid UTF-8.
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A union branch index outside the union.
    #[error("union branch index {index} out of range for a union of {branches}")]
    UnionIndex {
        /// The index read from the input.
        index: i64,
        /// The number of branches of the union in the schema.
        branches: usize,
    },
    /// A map or array block count of `i64::MIN`, which has no positive counterpart.
    #[error("block count {0} cannot be negated")]
    InvalidBlockCount(i64),
    /// A block with a negative count whose byte size does not match its entries.
    #[error("block byte size {declared} does not match the {actual} bytes of its entries")]
    BlockSizeMismatch {
        /// The byte size the block declared.
        declared: u64,
        /// The bytes its entries actually took.
        actual: usize,
    },
    /// A value that is well-formed Avro but not allowed by the message's own rules.
    #[error("{0}")]
    Invalid(&'static str),
}

/// A datum that could not be decoded: which record and field, where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{record}.{field}: {kind} (at byte {offset})")]
pub struct DecodeError {
    /// The record (message type) being decoded, e.g. `ClientData`.
    pub record: &'static str,
    /// The field being decoded, e.g. `payload`.
    pub field: &'static str,
    /// Byte offset into the datum where the failing value starts.
    pub offset: usize,
    /// What was wrong.
    pub kind: DecodeErrorKind,
}

/// A cursor over one Avro binary datum, borrowing from the input.
///
/// Each read names the field it reads, so that errors can say where decoding
/// stopped. All reads are bounds-checked; none can panic.
///
/// The cursor is the unread tail of the input (`rest`); reads split values off its
/// front with `split_first` / `split_at_checked`, so each read makes one length
/// check, and the byte offset that errors report is computed only when an error
/// is built (`len - rest.len()`). Error construction lives in `#[cold]` functions
/// so that the successful path of each read stays small enough to inline.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    /// The bytes not read yet.
    rest: &'a [u8],
    /// The length of the whole datum: the position is `len - rest.len()`.
    len: usize,
    record: &'static str,
    /// A span of the input already checked to be UTF-8 (see
    /// [`Reader::check_utf8_ahead`]), and the offset where it starts.
    checked: &'a str,
    checked_at: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading `input`, a datum of the record named `record` (used in errors).
    #[inline]
    pub fn new(input: &'a [u8], record: &'static str) -> Self {
        Reader {
            rest: input,
            len: input.len(),
            record,
            checked: "",
            checked_at: 0,
        }
    }

    /// Switches the record name used in errors, e.g. while decoding a nested record.
    #[inline]
    pub fn set_record(&mut self, record: &'static str) {
        self.record = record;
    }

    /// The byte offset of the next read.
    #[inline]
    pub fn position(&self) -> usize {
        self.offset_of(self.rest)
    }

    /// The bytes not read yet.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// True when every byte has been read.
    ///
    /// Message decoders use this before a trailing field that has a default: a datum
    /// from an older writer ends there, and the field takes its default.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The offset of `tail`, an earlier or the current value of `rest`.
    #[inline]
    fn offset_of(&self, tail: &[u8]) -> usize {
        self.len - tail.len()
    }

    #[cold]
    #[inline(never)]
    fn error_at(&self, field: &'static str, offset: usize, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            record: self.record,
            field,
            offset,
            kind,
        }
    }

    /// The error for a length (or count) `length` read at `at` that is negative or
    /// longer than what remains after it.
    #[cold]
    #[inline(never)]
    fn length_error(&self, field: &'static str, at: &[u8], length: i64) -> DecodeError {
        let kind = if length < 0 {
            DecodeErrorKind::NegativeLength(length)
        } else {
            DecodeErrorKind::LengthPastEnd {
                length: length.unsigned_abs(),
                remaining: self.rest.len(),
            }
        };
        self.error_at(field, self.offset_of(at), kind)
    }

    /// An error for `field` at the current position, for checks made by message codecs.
    #[cold]
    pub fn invalid(&self, field: &'static str, why: &'static str) -> DecodeError {
        self.error_at(field, self.position(), DecodeErrorKind::Invalid(why))
    }

    /// Reads a zigzag varint `long`.
    #[inline(always)]
    pub fn long(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        // Fast path: one byte, the common case for small values, lengths under 64
        // and union indexes.
        if let Some((&b, tail)) = self.rest.split_first()
            && b < 0x80
        {
            self.rest = tail;
            return Ok(zigzag_decode(u64::from(b)));
        }
        self.long_multi(field)
    }

    /// The rest of [`Reader::long`]: a varint of two bytes or more, or an error.
    #[inline(never)]
    fn long_multi(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        match read_varint(self.rest) {
            Ok((value, used)) => {
                self.rest = self.rest.get(used..).unwrap_or_default();
                Ok(zigzag_decode(value))
            }
            Err(kind) => Err(self.error_at(field, self.position(), kind)),
        }
    }

    /// Reads a zigzag varint `int`, rejecting values outside `i32`.
    #[inline]
    pub fn int(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        let at = self.rest;
        let value = self.long(field)?;
        match i32::try_from(value) {
            Ok(v) => Ok(v),
            Err(_) => Err(self.error_at(
                field,
                self.offset_of(at),
                DecodeErrorKind::IntOutOfRange(value),
            )),
        }
    }

    /// Reads `bytes`, borrowing them from the input.
    #[inline(always)]
    pub fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let at = self.rest;
        let length = self.long(field)?;
        // A negative length fails the conversion; one past the end fails the split.
        if let Ok(n) = usize::try_from(length)
            && let Some((value, tail)) = self.rest.split_at_checked(n)
        {
            self.rest = tail;
            return Ok(value);
        }
        Err(self.length_error(field, at, length))
    }

    /// Reads a `string`, borrowing it from the input after checking it is UTF-8.
    #[inline(always)]
    pub fn string(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let at = self.rest;
        let raw = self.bytes(field)?;
        if let Some(s) = self.already_checked(raw) {
            return Ok(s);
        }
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s),
            Err(_) => Err(self.error_at(field, self.offset_of(at), DecodeErrorKind::InvalidUtf8)),
        }
    }

    /// Checks ahead of the current position, in one pass, that the input is UTF-8 up
    /// to the first byte where it is not, so that [`Reader::string`] can skip its own
    /// check for every string that lies in that span.
    ///
    /// Worth calling before a run of short strings, such as a `map<string>` (which
    /// [`Reader::map`] does by itself): one validation over the whole run is much
    /// cheaper than one per string, and the varint lengths between the strings
    /// (single bytes below `0x80` for strings shorter than 64 bytes) are ASCII, so
    /// they do not end the span. The result is the same as checking each string on
    /// its own: a string is taken from the checked span only if it lies inside it
    /// and starts and ends on character boundaries, which holds exactly when the
    /// string is itself valid UTF-8; any other string is checked as usual. Does
    /// nothing while the current position is still inside the last checked span,
    /// so nested maps never check the same bytes twice.
    pub fn check_utf8_ahead(&mut self) {
        let at = self.position();
        if at < self.checked_at + self.checked.len() {
            return;
        }
        self.checked = valid_utf8_prefix(self.rest);
        self.checked_at = at;
    }

    /// `raw`, a value just read, as a string if it lies in the span checked by
    /// [`Reader::check_utf8_ahead`].
    ///
    /// Both are views of the same input, so the same address and length mean the
    /// same bytes; a value outside the span (or before it: the offset wraps) gives
    /// `None`, as does one that does not start and end on character boundaries.
    #[inline(always)]
    fn already_checked(&self, raw: &'a [u8]) -> Option<&'a str> {
        if self.checked.is_empty() {
            return None;
        }
        let offset = (raw.as_ptr() as usize).wrapping_sub(self.checked.as_ptr() as usize);
        self.checked.get(offset..offset.checked_add(raw.len())?)
    }

    /// Reads a union branch index for a union of `branches` branches.
    #[inline]
    pub fn union_index(
        &mut self,
        field: &'static str,
        branches: usize,
    ) -> Result<usize, DecodeError> {
        let at = self.rest;
        let index = self.long(field)?;
        match usize::try_from(index) {
            Ok(i) if i < branches => Ok(i),
            _ => Err(self.error_at(
                field,
                self.offset_of(at),
                DecodeErrorKind::UnionIndex { index, branches },
            )),
        }
    }

    /// Reads a `string` as a [`Cow::Borrowed`](std::borrow::Cow) of the input, the
    /// form message structs keep so that callers can also own their values.
    #[inline]
    pub fn cow_string(
        &mut self,
        field: &'static str,
    ) -> Result<std::borrow::Cow<'a, str>, DecodeError> {
        self.string(field).map(std::borrow::Cow::Borrowed)
    }

    /// Reads an optional `string` (see [`Reader::optional`]) as a borrowed `Cow`.
    #[inline]
    pub fn optional_cow_string(
        &mut self,
        field: &'static str,
        null_first: bool,
    ) -> Result<Option<std::borrow::Cow<'a, str>>, DecodeError> {
        self.optional(field, null_first, |r, f| r.cow_string(f))
    }

    /// Reads the `["null", T]` or `[T, "null"]` union of an optional field.
    ///
    /// `null_first` says which branch is `null` in the schema; `read` reads `T`.
    #[inline]
    pub fn optional<T>(
        &mut self,
        field: &'static str,
        null_first: bool,
        read: impl FnOnce(&mut Self, &'static str) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        let index = self.union_index(field, 2)?;
        if (index == 0) == null_first {
            Ok(None)
        } else {
            read(self, field).map(Some)
        }
    }

    /// Reads the header of one map (or array) block and returns its entry count;
    /// `0` marks the end of the map.
    ///
    /// A negative count is followed by the block's size in bytes, as the Avro
    /// specification allows; the size is checked against the remaining input here
    /// and against the entries by [`Reader::end_block`]. `min_entry_len` is the
    /// smallest number of bytes one entry can take (2 for a `map<string>`: an empty
    /// key and an empty value); a count that could not fit in the remaining bytes is
    /// rejected before anything is allocated, so callers may reserve the count.
    pub fn map_block(
        &mut self,
        field: &'static str,
        min_entry_len: usize,
    ) -> Result<Block, DecodeError> {
        let start = self.position();
        let count = self.long(field)?;
        let (count, byte_size) = if count < 0 {
            let Some(positive) = count.checked_neg() else {
                return Err(self.error_at(field, start, DecodeErrorKind::InvalidBlockCount(count)));
            };
            let size_at = self.position();
            let size = self.long(field)?;
            if size < 0 {
                return Err(self.error_at(field, size_at, DecodeErrorKind::NegativeLength(size)));
            }
            if size.unsigned_abs() > self.remaining() as u64 {
                return Err(self.error_at(
                    field,
                    size_at,
                    DecodeErrorKind::LengthPastEnd {
                        length: size.unsigned_abs(),
                        remaining: self.remaining(),
                    },
                ));
            }
            (positive.unsigned_abs(), Some(size.unsigned_abs()))
        } else {
            (count.unsigned_abs(), None)
        };
        let remaining = self.remaining();
        let fits = count
            .checked_mul(min_entry_len.max(1) as u64)
            .is_some_and(|needed| needed <= remaining as u64);
        if !fits {
            return Err(self.error_at(
                field,
                start,
                DecodeErrorKind::LengthPastEnd {
                    length: count,
                    remaining,
                },
            ));
        }
        Ok(Block {
            count: count as usize, // count * min_entry_len <= remaining, so it fits usize
            byte_size,
            entries_start: self.position(),
        })
    }

    /// Checks, after reading a block's entries, that a declared byte size matched.
    pub fn end_block(&self, field: &'static str, block: &Block) -> Result<(), DecodeError> {
        if let Some(declared) = block.byte_size {
            let actual = self.position() - block.entries_start;
            if declared != actual as u64 {
                return Err(self.error_at(
                    field,
                    block.entries_start,
                    DecodeErrorKind::BlockSizeMismatch { declared, actual },
                ));
            }
        }
        Ok(())
    }

    /// Reads a whole map, calling `entry` once per key with the reader positioned at
    /// the value, and collecting what it returns.
    ///
    /// Handles every legal block form: one block, several blocks, and blocks with
    /// negative counts and byte sizes.
    pub fn map<T>(
        &mut self,
        field: &'static str,
        min_entry_len: usize,
        mut entry: impl FnMut(&mut Self, &'a str) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let mut out = Vec::new();
        loop {
            let block = self.map_block(field, min_entry_len)?;
            if block.count == 0 {
                return Ok(out);
            }
            // After the block header: a count of 64 or more is not one ASCII byte.
            self.check_utf8_ahead();
            out.reserve(block.count);
            for _ in 0..block.count {
                let key = self.string(field)?;
                out.push(entry(self, key)?);
            }
            self.end_block(field, &block)?;
        }
    }

    /// Reads a whole array, calling `item` once per element with the reader positioned
    /// at it, and collecting what it returns.
    ///
    /// The array counterpart of [`Reader::map`]: handles every legal block form (one
    /// block, several blocks, negative counts with byte sizes), and a count that could
    /// not fit in the remaining bytes at `min_item_len` bytes per element is rejected
    /// before anything is reserved.
    pub fn array<T>(
        &mut self,
        field: &'static str,
        min_item_len: usize,
        mut item: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let mut out = Vec::new();
        loop {
            let block = self.map_block(field, min_item_len)?;
            if block.count == 0 {
                return Ok(out);
            }
            self.check_utf8_ahead();
            out.reserve(block.count);
            for _ in 0..block.count {
                out.push(item(self)?);
            }
            self.end_block(field, &block)?;
        }
    }

    /// Reads a whole `map<string>` (such as endpoint ID → application version), with
    /// `make` building each element from a key and its value, and fails with
    /// [`DecodeErrorKind::Invalid`]`(too_many)` at the key after the first
    /// `max_entries` entries.
    ///
    /// The same result, and the same errors at the same offsets, as [`Reader::map`]
    /// reading each value with [`Reader::string`] and counting entries, but faster:
    /// the block is checked for UTF-8 once ([`Reader::check_utf8_ahead`]), and an
    /// entry whose key and value both have one-byte lengths (shorter than 64
    /// bytes) and lie in the checked span is split off it directly as two `&str`s.
    /// Any other entry is read the general way.
    pub fn string_map<T>(
        &mut self,
        field: &'static str,
        max_entries: usize,
        too_many: &'static str,
        mut make: impl FnMut(&'a str, &'a str) -> T,
    ) -> Result<Vec<T>, DecodeError> {
        let mut out = Vec::new();
        let mut taken = 0usize;
        loop {
            // An entry takes at least 2 bytes: an empty key and an empty value.
            let block = self.map_block(field, 2)?;
            if block.count == 0 {
                return Ok(out);
            }
            self.check_utf8_ahead();
            out.reserve(block.count);
            for _ in 0..block.count {
                if taken < max_entries
                    && let Some((key, value, used)) = self.checked_entry()
                    && let Some(rest) = self.rest.get(used..)
                {
                    self.rest = rest;
                    out.push(make(key, value));
                } else {
                    let key = self.string(field)?;
                    if taken >= max_entries {
                        return Err(self.invalid(field, too_many));
                    }
                    let value = self.string(field)?;
                    out.push(make(key, value));
                }
                taken += 1;
            }
            self.end_block(field, &block)?;
        }
    }

    /// The key and value of the map entry at the current position, and the bytes
    /// they take, if both have one-byte lengths and lie in the checked span.
    #[inline(always)]
    fn checked_entry(&self) -> Option<(&'a str, &'a str, usize)> {
        if self.checked.is_empty() {
            return None;
        }
        // `rest` and `checked` view the same input: equal addresses, equal bytes.
        let offset = (self.rest.as_ptr() as usize).wrapping_sub(self.checked.as_ptr() as usize);
        let text = self.checked.get(offset..)?;
        let (key, text) = split_short_string(text)?;
        let (value, _) = split_short_string(text)?;
        Some((key, value, 2 + key.len() + value.len()))
    }
}

/// The header of one map or array block, from [`Reader::map_block`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Number of entries in the block; `0` ends the map.
    pub count: usize,
    /// The byte size declared by a block with a negative count.
    pub byte_size: Option<u64>,
    entries_start: usize,
}

#[inline]
fn zigzag_decode(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

/// Splits a string with a one-byte length prefix (a length below 64) off the front
/// of `text`: the string and what follows it, or `None` for a longer or negative
/// length, one past the end, or one that does not end on a character boundary.
#[inline(always)]
fn split_short_string(text: &str) -> Option<(&str, &str)> {
    let &prefix = text.as_bytes().first()?;
    // Zigzag: an even byte below 0x80 is a length of `prefix / 2` in one byte.
    if prefix >= 0x80 || prefix & 1 == 1 {
        return None;
    }
    // The prefix is ASCII, so the string starts on a character boundary.
    text.get(1..)?.split_at_checked(usize::from(prefix >> 1))
}

/// The longest prefix of `bytes` that is valid UTF-8.
fn valid_utf8_prefix(bytes: &[u8]) -> &str {
    // `compat` reports where the valid prefix ends; `basic` is the faster check of
    // that prefix (SIMD from 64 bytes on; shorter inputs go to `std::str::from_utf8`).
    match simdutf8::compat::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            let valid = bytes.get(..e.valid_up_to()).unwrap_or_default();
            simdutf8::basic::from_utf8(valid).unwrap_or_default()
        }
    }
}

/// Decodes an unsigned varint from the front of `bytes`: its value and how many
/// bytes it took.
///
/// When eight bytes remain and the varint ends within them (every `long` below
/// 2^55 in magnitude), it is decoded from one 64-bit word without branches; when ten
/// bytes (the longest varint) remain, the groups are read from a fixed-size array,
/// so the compiler unrolls the loop with no bounds checks; near the end of the input
/// the same rules are applied byte by byte.
#[inline]
fn read_varint(bytes: &[u8]) -> Result<(u64, usize), DecodeErrorKind> {
    if let Some(word) = bytes.first_chunk::<8>() {
        // Up to eight groups, branch-free: the first byte with its top bit clear ends
        // the varint; keep the groups up to it and pack their 7-bit payloads.
        let word = u64::from_le_bytes(*word);
        let ends = !word & 0x8080_8080_8080_8080;
        if ends != 0 {
            let end_bit = ends.trailing_zeros(); // the top bit of the last group
            let len = (end_bit / 8 + 1) as usize;
            let kept = word & (ends ^ (ends - 1)); // bytes up to and including the last
            let last = (kept >> (end_bit - 7)) as u8;
            if last == 0 && len > 1 {
                return Err(DecodeErrorKind::OverlongVarint);
            }
            let v = kept & 0x7f7f_7f7f_7f7f_7f7f;
            let v = (v & 0x007f_007f_007f_007f) | ((v & 0x7f00_7f00_7f00_7f00) >> 1);
            let v = (v & 0x0000_3fff_0000_3fff) | ((v & 0x3fff_0000_3fff_0000) >> 2);
            let v = (v & 0x0000_0000_0fff_ffff) | ((v & 0x0fff_ffff_0000_0000) >> 4);
            return Ok((v, len));
        }
    }
    if let Some(groups) = bytes.first_chunk::<10>() {
        let mut value: u64 = 0;
        for (i, &b) in groups.iter().enumerate() {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return varint_end(value, i, b);
            }
        }
        // Ten groups and the tenth still continues: more than 64 bits.
        return Err(DecodeErrorKind::VarintOverflow);
    }
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return varint_end(value, i, b);
        }
    }
    // Fewer than ten bytes remained and all of them continue the varint.
    Err(DecodeErrorKind::UnexpectedEnd)
}

/// Checks the last group `b` (at index `i`) of a varint whose value is `value`.
#[inline(always)]
fn varint_end(value: u64, i: usize, b: u8) -> Result<(u64, usize), DecodeErrorKind> {
    if b == 0 && i > 0 {
        // A redundant trailing zero group.
        Err(DecodeErrorKind::OverlongVarint)
    } else if i == 9 && b > 0x01 {
        // The tenth group holds bit 63 alone.
        Err(DecodeErrorKind::VarintOverflow)
    } else {
        Ok((value, i + 1))
    }
}

#[inline]
fn zigzag_encode(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Appends a zigzag varint `long`.
#[inline(always)]
pub fn put_long<B: BufMut + ?Sized>(buf: &mut B, value: i64) {
    let mut n = zigzag_encode(value);
    if n < 0x80 {
        buf.put_u8(n as u8);
        return;
    }
    let mut tmp = [0u8; 10];
    let mut len = 0;
    while n >= 0x80 {
        tmp[len] = (n as u8) | 0x80;
        n >>= 7;
        len += 1;
    }
    tmp[len] = n as u8;
    buf.put_slice(&tmp[..=len]);
}

/// Appends a zigzag varint `int`.
#[inline]
pub fn put_int<B: BufMut + ?Sized>(buf: &mut B, value: i32) {
    put_long(buf, i64::from(value));
}

/// Appends length-prefixed `bytes`.
#[inline]
pub fn put_bytes<B: BufMut + ?Sized>(buf: &mut B, value: &[u8]) {
    put_long(buf, value.len() as i64);
    buf.put_slice(value);
}

/// Appends a length-prefixed UTF-8 `string`.
#[inline]
pub fn put_string<B: BufMut + ?Sized>(buf: &mut B, value: &str) {
    put_bytes(buf, value.as_bytes());
}

/// Appends a union branch index.
#[inline]
pub fn put_union_index<B: BufMut + ?Sized>(buf: &mut B, index: usize) {
    put_long(buf, index as i64);
}

/// Appends an optional value as a two-branch union with `null` first or second.
#[inline]
pub fn put_optional<B: BufMut + ?Sized, T: ?Sized>(
    buf: &mut B,
    value: Option<&T>,
    null_first: bool,
    put: impl FnOnce(&mut B, &T),
) {
    match value {
        None => put_union_index(buf, if null_first { 0 } else { 1 }),
        Some(v) => {
            put_union_index(buf, if null_first { 1 } else { 0 });
            put(buf, v);
        }
    }
}

/// Appends a map as Apache Avro writes one: a single block with a positive count
/// (omitted when the map is empty) and the terminating zero count.
///
/// `put_value` writes each value; keys are written as strings.
pub fn put_map<B, K, V, I>(buf: &mut B, entries: I, mut put_value: impl FnMut(&mut B, &V))
where
    B: BufMut + ?Sized,
    K: AsRef<str>,
    I: IntoIterator<Item = (K, V)>,
    I::IntoIter: ExactSizeIterator,
{
    let entries = entries.into_iter();
    let count = entries.len();
    if count > 0 {
        put_long(buf, count as i64);
        for (key, value) in entries {
            put_string(buf, key.as_ref());
            put_value(buf, &value);
        }
    }
    put_long(buf, 0);
}

/// Appends an array as Apache Avro writes one: a single block with a positive count
/// (omitted when the array is empty) and the terminating zero count.
///
/// `put_item` writes each element.
pub fn put_array<B, T, I>(buf: &mut B, items: I, mut put_item: impl FnMut(&mut B, T))
where
    B: BufMut + ?Sized,
    I: IntoIterator<Item = T>,
    I::IntoIter: ExactSizeIterator,
{
    let items = items.into_iter();
    let count = items.len();
    if count > 0 {
        put_long(buf, count as i64);
        for item in items {
            put_item(buf, item);
        }
    }
    put_long(buf, 0);
}

/// The number of bytes [`put_array`] writes for `count` elements that take
/// `items_len` bytes together.
#[inline]
pub fn array_len(count: usize, items_len: usize) -> usize {
    let header = if count == 0 {
        0
    } else {
        long_len(count as i64)
    };
    header + items_len + 1
}

/// The number of bytes [`put_long`] writes for `value`.
#[inline]
pub fn long_len(value: i64) -> usize {
    let n = zigzag_encode(value);
    // Each group carries 7 bits; zero still takes one byte.
    let bits = 64 - (n | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// The number of bytes [`put_string`] writes for `value`.
#[inline]
pub fn string_len(value: &str) -> usize {
    bytes_len(value.len())
}

/// The number of bytes [`put_optional`] writes: the branch index (one byte, as
/// the index is 0 or 1) plus `len` of the value when present.
#[inline]
pub fn optional_len<T: ?Sized>(value: Option<&T>, len: impl FnOnce(&T) -> usize) -> usize {
    1 + value.map_or(0, len)
}

/// Detaches a borrowed `Cow` from its input buffer (used by the messages'
/// `into_owned`).
#[inline]
pub fn to_static<B: ToOwned + ?Sized>(
    value: std::borrow::Cow<'_, B>,
) -> std::borrow::Cow<'static, B> {
    std::borrow::Cow::Owned(value.into_owned())
}

/// The number of bytes [`put_bytes`] (or [`put_string`]) writes for a value of `len` bytes.
#[inline]
pub fn bytes_len(len: usize) -> usize {
    long_len(len as i64) + len
}

/// An encoded datum whose one large `bytes` value is borrowed instead of copied.
///
/// [`Encode::encode`] copies every byte of the message into the output buffer, which
/// for a message carrying kilobytes of content (a 6/CDTP `ConfigResponse`) is most of
/// the cost of encoding it. A `SplicedDatum` holds the bytes written before that value
/// (including its length prefix) and after it in one small frame buffer, and the value
/// itself as a borrowed slice: three chunks that, read in order, are exactly the
/// datum `encode` writes. It is a [`bytes::Buf`], so a caller that writes with
/// vectored I/O (`chunks_vectored` into `IoSlice`s, `write_all_buf`), feeds a hasher
/// chunk by chunk, or chains buffers can send the datum without the copy; one that
/// needs contiguous bytes calls [`SplicedDatum::to_vec`] (or `Buf::copy_to_bytes`),
/// which costs the same copy as `encode`.
///
/// Message codecs build one with [`SplicedDatum::with_capacity`], write the leading
/// fields into [`SplicedDatum::frame_mut`], call [`SplicedDatum::put_spliced_bytes`]
/// for the large value, and write the trailing fields into the frame again.
///
/// ```
/// use bytes::Buf;
/// use kaa_ism::avro::{put_bytes, put_long, put_string, SplicedDatum};
///
/// let content = vec![b'x'; 4096];
/// let mut datum = SplicedDatum::with_capacity(16);
/// put_string(datum.frame_mut(), "head");
/// datum.put_spliced_bytes(&content);
/// put_long(datum.frame_mut(), 200);
///
/// let mut contiguous = Vec::new();
/// put_string(&mut contiguous, "head");
/// put_bytes(&mut contiguous, &content);
/// put_long(&mut contiguous, 200);
/// assert_eq!(datum.to_vec(), contiguous);
///
/// let mut slices = [std::io::IoSlice::new(&[]); 3];
/// assert_eq!(datum.chunks_vectored(&mut slices), 3);
/// assert!(std::ptr::eq(slices[1].as_ptr(), content.as_ptr()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SplicedDatum<'a> {
    /// The bytes before the spliced value, then the bytes after it.
    frame: Vec<u8>,
    /// Where the bytes after the spliced value start in `frame`; `None` until a
    /// value is spliced (everything written so far comes before it).
    head_len: Option<usize>,
    /// The spliced value.
    body: &'a [u8],
    /// How many bytes [`Buf::advance`] has consumed.
    consumed: usize,
}

impl<'a> SplicedDatum<'a> {
    /// An empty datum whose frame (everything but the spliced value) has room for
    /// `frame_capacity` bytes.
    pub fn with_capacity(frame_capacity: usize) -> Self {
        SplicedDatum {
            frame: Vec::with_capacity(frame_capacity),
            ..SplicedDatum::default()
        }
    }

    /// The buffer to write fields into: before [`SplicedDatum::put_spliced_bytes`]
    /// the fields that come before the spliced value, after it those that follow.
    pub fn frame_mut(&mut self) -> &mut Vec<u8> {
        &mut self.frame
    }

    /// Writes a `bytes` value as [`put_bytes`] does, except that only its length
    /// prefix goes into the frame: the value itself is borrowed.
    ///
    /// A datum splices one value; a second call writes its value into the frame, a
    /// copy, as [`put_bytes`] would.
    pub fn put_spliced_bytes(&mut self, value: &'a [u8]) {
        if self.head_len.is_some() {
            put_bytes(&mut self.frame, value);
            return;
        }
        put_long(&mut self.frame, value.len() as i64);
        self.head_len = Some(self.frame.len());
        self.body = value;
    }

    /// The datum as its three chunks: the bytes before the spliced value, the value,
    /// and the bytes after it (empty slices where there are none).
    pub fn parts(&self) -> [&[u8]; 3] {
        let (head, tail) = self
            .frame
            .split_at(self.head_len.unwrap_or(self.frame.len()));
        [head, self.body, tail]
    }

    /// The length of the whole datum.
    pub fn len(&self) -> usize {
        self.frame.len() + self.body.len()
    }

    /// True for a datum of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole datum as one contiguous vector (a copy of the spliced value).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        for part in self.parts() {
            out.extend_from_slice(part);
        }
        out
    }
}

impl bytes::Buf for SplicedDatum<'_> {
    fn remaining(&self) -> usize {
        self.len() - self.consumed
    }

    fn chunk(&self) -> &[u8] {
        let mut skip = self.consumed;
        for part in self.parts() {
            if skip < part.len() {
                return part.get(skip..).unwrap_or_default();
            }
            skip -= part.len();
        }
        &[]
    }

    /// Consumes `cnt` bytes; advancing past the end stops at the end.
    fn advance(&mut self, cnt: usize) {
        self.consumed = self.consumed.saturating_add(cnt).min(self.len());
    }

    fn chunks_vectored<'b>(&'b self, dst: &mut [std::io::IoSlice<'b>]) -> usize {
        let mut skip = self.consumed;
        let mut filled = 0;
        for part in self.parts() {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            let Some(slot) = dst.get_mut(filled) else {
                break;
            };
            *slot = std::io::IoSlice::new(part.get(skip..).unwrap_or_default());
            skip = 0;
            filled += 1;
        }
        filled
    }
}

/// A message that encodes as one Avro binary datum.
pub trait Encode {
    /// The exact number of bytes [`Encode::encode`] appends.
    fn encoded_len(&self) -> usize;

    /// Appends the datum to `buf`.
    ///
    /// Growable buffers (`Vec<u8>`, `BytesMut`) never fail; a fixed-size buffer must
    /// have [`Encode::encoded_len`] bytes of room, as [`BufMut`] panics otherwise.
    fn encode<B: BufMut + ?Sized>(&self, buf: &mut B);

    /// Encodes into a new vector of exactly the right size.
    fn to_vec(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        buf
    }
}

/// A message that decodes from one Avro binary datum, borrowing from it.
pub trait Decode<'a>: Sized {
    /// Decodes a datum. Bytes after the last field known to this version are
    /// ignored (they belong to fields a newer writer appended); a datum that ends
    /// right before trailing fields that have defaults takes the defaults.
    fn decode(input: &'a [u8]) -> Result<Self, DecodeError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_long(bytes: &[u8]) -> Result<i64, DecodeErrorKind> {
        Reader::new(bytes, "T").long("f").map_err(|e| e.kind)
    }

    fn encoded_long(v: i64) -> Vec<u8> {
        let mut buf = Vec::new();
        put_long(&mut buf, v);
        buf
    }

    #[test]
    fn spec_examples_of_zigzag() {
        // Table from the Avro specification, "Binary encoding".
        for (value, hex) in [
            (0i64, &[0x00u8][..]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-2, &[0x03]),
            (2, &[0x04]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
        ] {
            assert_eq!(encoded_long(value), hex, "encode {value}");
            assert_eq!(read_long(hex), Ok(value), "decode {value}");
        }
    }

    #[test]
    fn extremes() {
        for v in [i64::MIN, i64::MAX, i64::from(i32::MIN), i64::from(i32::MAX)] {
            let bytes = encoded_long(v);
            assert_eq!(bytes.len(), long_len(v));
            assert_eq!(read_long(&bytes), Ok(v));
        }
        assert_eq!(encoded_long(i64::MIN).len(), 10);
    }

    #[test]
    fn bad_varints() {
        let cases: &[(&str, &[u8], DecodeErrorKind)] = &[
            ("empty", &[], DecodeErrorKind::UnexpectedEnd),
            ("truncated", &[0x80], DecodeErrorKind::UnexpectedEnd),
            ("truncated long", &[0xff; 9], DecodeErrorKind::UnexpectedEnd),
            (
                "overlong zero",
                &[0x80, 0x00],
                DecodeErrorKind::OverlongVarint,
            ),
            (
                "overlong one",
                &[0x82, 0x80, 0x00],
                DecodeErrorKind::OverlongVarint,
            ),
            (
                "eleven bytes",
                &[
                    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ],
                DecodeErrorKind::VarintOverflow,
            ),
            (
                "tenth group too big",
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
                DecodeErrorKind::VarintOverflow,
            ),
        ];
        for (name, bytes, kind) in cases {
            assert_eq!(read_long(bytes).as_ref(), Err(kind), "{name}");
        }
    }

    #[test]
    fn bad_varints_with_bytes_after_them() {
        // The same rules when ten or more bytes remain (the unrolled path).
        let cases: &[(&str, &[u8], DecodeErrorKind)] = &[
            (
                "overlong zero",
                &[0x80, 0x00],
                DecodeErrorKind::OverlongVarint,
            ),
            (
                "overlong in the tenth group",
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00],
                DecodeErrorKind::OverlongVarint,
            ),
            ("eleven bytes", &[0xff; 11], DecodeErrorKind::VarintOverflow),
            (
                "tenth group too big",
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
                DecodeErrorKind::VarintOverflow,
            ),
        ];
        for (name, bytes, kind) in cases {
            let mut padded = bytes.to_vec();
            padded.extend_from_slice(&[0x02; 12]);
            assert_eq!(read_long(&padded).as_ref(), Err(kind), "{name}");
            assert_eq!(read_long(bytes).as_ref(), Err(kind), "{name}, unpadded");
        }
    }

    #[test]
    fn int_range() {
        let bytes = encoded_long(i64::from(i32::MAX) + 1);
        let err = Reader::new(&bytes, "T").int("f").unwrap_err();
        assert_eq!(
            err.kind,
            DecodeErrorKind::IntOutOfRange(i64::from(i32::MAX) + 1)
        );
        let bytes = encoded_long(i64::from(i32::MIN));
        assert_eq!(Reader::new(&bytes, "T").int("f"), Ok(i32::MIN));
    }

    #[test]
    fn bad_lengths() {
        let mut near_2_62 = Vec::new();
        put_long(&mut near_2_62, (1 << 62) - 1);
        near_2_62.extend_from_slice(b"abc");
        let mut negative = Vec::new();
        put_long(&mut negative, -1);
        let cases: &[(&str, &[u8], DecodeErrorKind)] = &[
            (
                "near 2^62",
                &near_2_62,
                DecodeErrorKind::LengthPastEnd {
                    length: (1 << 62) - 1,
                    remaining: 3,
                },
            ),
            ("negative", &negative, DecodeErrorKind::NegativeLength(-1)),
            (
                "past end",
                &[0x08, b'a'],
                DecodeErrorKind::LengthPastEnd {
                    length: 4,
                    remaining: 1,
                },
            ),
            (
                "invalid utf-8",
                &[0x04, 0xc3, 0x28],
                DecodeErrorKind::InvalidUtf8,
            ),
            (
                "lone continuation",
                &[0x02, 0x80],
                DecodeErrorKind::InvalidUtf8,
            ),
        ];
        for (name, bytes, kind) in cases {
            let err = Reader::new(bytes, "T").string("s").unwrap_err();
            assert_eq!(&err.kind, kind, "{name}");
            assert_eq!((err.record, err.field, err.offset), ("T", "s", 0), "{name}");
        }
    }

    #[test]
    fn strings_are_borrowed() {
        let mut buf = Vec::new();
        put_string(&mut buf, "zero-copy");
        let s = Reader::new(&buf, "T").string("s").unwrap();
        assert_eq!(s, "zero-copy");
        assert!(std::ptr::eq(s.as_ptr(), buf[1..].as_ptr()));
    }

    #[test]
    fn union_indexes() {
        assert_eq!(Reader::new(&[0x02], "T").union_index("u", 2), Ok(1));
        for bytes in [[0x04u8], [0x01]] {
            let err = Reader::new(&bytes, "T").union_index("u", 2).unwrap_err();
            assert!(matches!(
                err.kind,
                DecodeErrorKind::UnionIndex { branches: 2, .. }
            ));
        }
    }

    fn read_string_map(bytes: &[u8]) -> Result<Vec<(String, String)>, DecodeErrorKind> {
        Reader::new(bytes, "T")
            .map("m", 2, |r, k| Ok((k.to_owned(), r.string("m")?.to_owned())))
            .map_err(|e| e.kind)
    }

    #[test]
    fn maps_in_every_legal_block_form() {
        let expected = vec![
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
        ];
        let mut one_block = Vec::new();
        put_map(&mut one_block, [("a", "1"), ("b", "2")], |b, v| {
            put_string(b, v)
        });
        assert_eq!(one_block, [4, 2, b'a', 2, b'1', 2, b'b', 2, b'2', 0]);
        assert_eq!(read_string_map(&one_block), Ok(expected.clone()));

        let two_blocks = [2, 2, b'a', 2, b'1', 2, 2, b'b', 2, b'2', 0];
        assert_eq!(read_string_map(&two_blocks), Ok(expected.clone()));

        // Count -2 (zigzag 3) followed by the byte size 8 (zigzag 16).
        let sized = [3, 16, 2, b'a', 2, b'1', 2, b'b', 2, b'2', 0];
        assert_eq!(read_string_map(&sized), Ok(expected));

        assert_eq!(read_string_map(&[0]), Ok(vec![]));
    }

    fn read_string_array(bytes: &[u8]) -> Result<Vec<String>, DecodeErrorKind> {
        Reader::new(bytes, "T")
            .array("a", 1, |r| Ok(r.string("a")?.to_owned()))
            .map_err(|e| e.kind)
    }

    #[test]
    fn arrays_in_every_legal_block_form() {
        let expected = vec!["a".to_owned(), "bc".to_owned()];
        let mut one_block = Vec::new();
        put_array(&mut one_block, ["a", "bc"], put_string);
        assert_eq!(one_block, [4, 2, b'a', 4, b'b', b'c', 0]);
        assert_eq!(one_block.len(), array_len(2, 5));
        assert_eq!(read_string_array(&one_block), Ok(expected.clone()));

        let mut empty = Vec::new();
        put_array(&mut empty, Vec::<&str>::new(), put_string);
        assert_eq!(empty, [0]);
        assert_eq!(empty.len(), array_len(0, 0));
        assert_eq!(read_string_array(&empty), Ok(vec![]));

        let two_blocks = [2, 2, b'a', 2, 4, b'b', b'c', 0];
        assert_eq!(read_string_array(&two_blocks), Ok(expected.clone()));

        // Count -2 (zigzag 3) followed by the byte size 5 (zigzag 10).
        let sized = [3, 10, 2, b'a', 4, b'b', b'c', 0];
        assert_eq!(read_string_array(&sized), Ok(expected));

        // A long array: the count takes two bytes.
        let many: Vec<String> = (0..200).map(|i| i.to_string()).collect();
        let mut buf = Vec::new();
        put_array(&mut buf, &many, |b, v| put_string(b, v));
        let items_len: usize = many.iter().map(|s| string_len(s)).sum();
        assert_eq!(buf.len(), array_len(many.len(), items_len));
        assert_eq!(read_string_array(&buf), Ok(many));
    }

    #[test]
    fn array_blocks_that_lie() {
        let mut huge_count = Vec::new();
        put_long(&mut huge_count, i64::MAX);
        let cases: &[(&str, &[u8])] = &[
            ("count past end", &[0x08, 2, b'a', 0]),
            ("huge count", &huge_count),
            ("size mismatch", &[3, 8, 2, b'a', 4, b'b', b'c', 0]),
            ("negative size", &[3, 1, 2, b'a', 4, b'b', b'c', 0]),
            ("no terminator", &[2, 2, b'a']),
        ];
        for (name, bytes) in cases {
            assert!(read_string_array(bytes).is_err(), "{name}");
        }
    }

    #[test]
    fn map_blocks_that_lie() {
        let mut huge_count = Vec::new();
        put_long(&mut huge_count, i64::MAX);
        let mut min_count = Vec::new();
        put_long(&mut min_count, i64::MIN);
        let cases: &[(&str, &[u8])] = &[
            ("count past end", &[0x08, 2, b'a', 2, b'1', 0]),
            ("huge count", &huge_count),
            ("i64::MIN count", &min_count),
            (
                "size mismatch",
                &[3, 14, 2, b'a', 2, b'1', 2, b'b', 2, b'2', 0],
            ),
            (
                "negative size",
                &[3, 1, 2, b'a', 2, b'1', 2, b'b', 2, b'2', 0],
            ),
            (
                "size past end",
                &[3, 0x7e, 2, b'a', 2, b'1', 2, b'b', 2, b'2', 0],
            ),
            ("no terminator", &[2, 2, b'a', 2, b'1']),
        ];
        for (name, bytes) in cases {
            assert!(read_string_map(bytes).is_err(), "{name}");
        }
    }

    proptest! {
        #[test]
        fn long_round_trip(v in any::<i64>()) {
            let bytes = encoded_long(v);
            prop_assert_eq!(bytes.len(), long_len(v));
            prop_assert_eq!(read_long(&bytes), Ok(v));
        }

        #[test]
        fn long_round_trip_before_other_bytes(v in any::<i64>(), after in 0usize..12) {
            // Ten or more bytes left: the unrolled path; fewer: the byte-by-byte one.
            let mut bytes = encoded_long(v);
            bytes.extend(std::iter::repeat_n(0xffu8, after));
            let mut r = Reader::new(&bytes, "T");
            prop_assert_eq!(r.long("f"), Ok(v));
            prop_assert_eq!(r.position(), long_len(v));
            // Every proper prefix of the varint is a truncation.
            for cut in 0..long_len(v) {
                prop_assert_eq!(read_long(&bytes[..cut]), Err(DecodeErrorKind::UnexpectedEnd));
            }
        }

        #[test]
        fn varint_paths_agree_with_the_plain_loop(
            bytes in proptest::collection::vec(
                prop_oneof![any::<u8>(), 0x80u8..=0xff, Just(0x00u8), Just(0x01u8), Just(0x80u8)],
                0..14,
            ),
        ) {
            // The byte-at-a-time reading of the Avro rules, as a reference.
            let reference = |bytes: &[u8]| -> Result<(u64, usize), DecodeErrorKind> {
                let mut value = 0u64;
                for group in 0..10 {
                    let Some(&b) = bytes.get(group) else {
                        return Err(DecodeErrorKind::UnexpectedEnd);
                    };
                    if group == 9 && b > 0x01 {
                        return Err(DecodeErrorKind::VarintOverflow);
                    }
                    value |= u64::from(b & 0x7f) << (7 * group);
                    if b & 0x80 == 0 {
                        if b == 0 && group > 0 {
                            return Err(DecodeErrorKind::OverlongVarint);
                        }
                        return Ok((value, group + 1));
                    }
                }
                Err(DecodeErrorKind::VarintOverflow)
            };
            prop_assert_eq!(read_varint(&bytes), reference(&bytes));
        }

        #[test]
        fn string_round_trip(s in ".*") {
            let mut buf = Vec::new();
            put_string(&mut buf, &s);
            prop_assert_eq!(buf.len(), bytes_len(s.len()));
            let mut r = Reader::new(&buf, "T");
            prop_assert_eq!(r.string("s"), Ok(s.as_str()));
            prop_assert!(r.is_empty());
        }

        #[test]
        fn map_strings_checked_ahead_match_checking_each(
            entries in proptest::collection::vec(
                (
                    proptest::collection::vec(
                        prop_oneof![Just(b'a'), Just(0x80u8), Just(0xc3), Just(0xa9), Just(0xe2), any::<u8>()],
                        0..6,
                    ),
                    proptest::collection::vec(
                        prop_oneof![Just(b'v'), Just(0x80u8), Just(0xc3), Just(0xa9), any::<u8>()],
                        0..70,
                    ),
                ),
                0..8,
            ),
            cut in any::<proptest::sample::Index>(),
        ) {
            // Keys and values are arbitrary bytes (often not UTF-8, and values of 64
            // bytes or more have a non-ASCII length prefix): the map reader, which
            // checks UTF-8 ahead over the block, must give exactly what checking each
            // string on its own gives.
            let mut datum = Vec::new();
            if !entries.is_empty() {
                put_long(&mut datum, entries.len() as i64);
                for (k, v) in &entries {
                    put_bytes(&mut datum, k);
                    put_bytes(&mut datum, v);
                }
            }
            put_long(&mut datum, 0);
            let reference = |input: &[u8]| -> Result<Vec<(String, String)>, DecodeErrorKind> {
                let mut r = Reader::new(input, "T");
                let mut out = Vec::new();
                loop {
                    let block = r.map_block("m", 2).map_err(|e| e.kind)?;
                    if block.count == 0 {
                        return Ok(out);
                    }
                    for _ in 0..block.count {
                        let mut pair = Vec::new();
                        for _ in 0..2 {
                            let raw = r.bytes("m").map_err(|e| e.kind)?;
                            let s = std::str::from_utf8(raw).map_err(|_| DecodeErrorKind::InvalidUtf8)?;
                            pair.push(s.to_owned());
                        }
                        let v = pair.pop().unwrap_or_default();
                        let k = pair.pop().unwrap_or_default();
                        out.push((k, v));
                    }
                }
            };
            prop_assert_eq!(read_string_map(&datum), reference(&datum));
            let prefix = &datum[..cut.index(datum.len() + 1)];
            prop_assert_eq!(read_string_map(prefix), reference(prefix));

            // `string_map` against the general reads it stands for: each string
            // checked on its own (no check ahead), the limit checked after each key.
            let limited = |input: &[u8], max: usize| -> Result<Vec<(String, String)>, DecodeError> {
                let mut r = Reader::new(input, "T");
                let mut out = Vec::new();
                loop {
                    let block = r.map_block("m", 2)?;
                    if block.count == 0 {
                        return Ok(out);
                    }
                    for _ in 0..block.count {
                        let k = r.string("m")?.to_owned();
                        if out.len() >= max {
                            return Err(r.invalid("m", "too many"));
                        }
                        out.push((k, r.string("m")?.to_owned()));
                    }
                    r.end_block("m", &block)?;
                }
            };
            for input in [&datum[..], prefix] {
                for max in [usize::MAX, entries.len(), entries.len().saturating_sub(1), 0] {
                    let fast = Reader::new(input, "T")
                        .string_map("m", max, "too many", |k, v| (k.to_owned(), v.to_owned()));
                    prop_assert_eq!(fast, limited(input, max));
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&bytes, "T");
            let _ = r.clone().long("f");
            let _ = r.clone().int("f");
            let _ = r.clone().string("f");
            let _ = r.map("m", 2, |r, _| r.string("m"));
        }
    }
}
