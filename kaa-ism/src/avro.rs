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
//! exact encoded size so callers can reserve once.
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
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
    record: &'static str,
}

impl<'a> Reader<'a> {
    /// Starts reading `input`, a datum of the record named `record` (used in errors).
    pub fn new(input: &'a [u8], record: &'static str) -> Self {
        Reader {
            input,
            pos: 0,
            record,
        }
    }

    /// Switches the record name used in errors, e.g. while decoding a nested record.
    pub fn set_record(&mut self, record: &'static str) {
        self.record = record;
    }

    /// The byte offset of the next read.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.input.len().saturating_sub(self.pos)
    }

    /// True when every byte has been read.
    ///
    /// Message decoders use this before a trailing field that has a default: a datum
    /// from an older writer ends there, and the field takes its default.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn error_at(&self, field: &'static str, offset: usize, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            record: self.record,
            field,
            offset,
            kind,
        }
    }

    /// An error for `field` at the current position, for checks made by message codecs.
    pub fn invalid(&self, field: &'static str, why: &'static str) -> DecodeError {
        self.error_at(field, self.pos, DecodeErrorKind::Invalid(why))
    }

    /// Reads a zigzag varint `long`.
    #[inline]
    pub fn long(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        let start = self.pos;
        // Fast path: one byte, the common case for small values and union indexes.
        if let Some(&b) = self.input.get(start)
            && b < 0x80
        {
            self.pos = start + 1;
            return Ok(zigzag_decode(u64::from(b)));
        }
        let mut value: u64 = 0;
        let mut group = 0u32;
        loop {
            let Some(&b) = self.input.get(self.pos) else {
                return Err(self.error_at(field, start, DecodeErrorKind::UnexpectedEnd));
            };
            self.pos += 1;
            // The tenth group holds bit 63 alone and must end the varint.
            if group == 9 && b > 0x01 {
                return Err(self.error_at(field, start, DecodeErrorKind::VarintOverflow));
            }
            value |= u64::from(b & 0x7f) << (7 * group);
            if b & 0x80 == 0 {
                if b == 0 && group > 0 {
                    return Err(self.error_at(field, start, DecodeErrorKind::OverlongVarint));
                }
                return Ok(zigzag_decode(value));
            }
            group += 1;
        }
    }

    /// Reads a zigzag varint `int`, rejecting values outside `i32`.
    #[inline]
    pub fn int(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        let start = self.pos;
        let value = self.long(field)?;
        i32::try_from(value)
            .map_err(|_| self.error_at(field, start, DecodeErrorKind::IntOutOfRange(value)))
    }

    /// Reads a length prefix and checks it against the bytes that remain.
    #[inline]
    fn length(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let start = self.pos;
        let length = self.long(field)?;
        if length < 0 {
            return Err(self.error_at(field, start, DecodeErrorKind::NegativeLength(length)));
        }
        let remaining = self.remaining();
        match usize::try_from(length) {
            Ok(n) if n <= remaining => Ok(n),
            _ => Err(self.error_at(
                field,
                start,
                DecodeErrorKind::LengthPastEnd {
                    length: length.unsigned_abs(),
                    remaining,
                },
            )),
        }
    }

    /// Reads `bytes`, borrowing them from the input.
    #[inline]
    pub fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.length(field)?;
        let start = self.pos;
        let end = start + n; // n <= remaining, so this neither overflows nor passes the end
        let slice = self.input.get(start..end).unwrap_or_default();
        self.pos = end;
        Ok(slice)
    }

    /// Reads a `string`, borrowing it from the input after checking it is UTF-8.
    #[inline]
    pub fn string(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let start = self.pos;
        let raw = self.bytes(field)?;
        std::str::from_utf8(raw)
            .map_err(|_| self.error_at(field, start, DecodeErrorKind::InvalidUtf8))
    }

    /// Reads a union branch index for a union of `branches` branches.
    #[inline]
    pub fn union_index(
        &mut self,
        field: &'static str,
        branches: usize,
    ) -> Result<usize, DecodeError> {
        let start = self.pos;
        let index = self.long(field)?;
        match usize::try_from(index) {
            Ok(i) if i < branches => Ok(i),
            _ => Err(self.error_at(
                field,
                start,
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
        let start = self.pos;
        let count = self.long(field)?;
        let (count, byte_size) = if count < 0 {
            let Some(positive) = count.checked_neg() else {
                return Err(self.error_at(field, start, DecodeErrorKind::InvalidBlockCount(count)));
            };
            let size_at = self.pos;
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
            entries_start: self.pos,
        })
    }

    /// Checks, after reading a block's entries, that a declared byte size matched.
    pub fn end_block(&self, field: &'static str, block: &Block) -> Result<(), DecodeError> {
        if let Some(declared) = block.byte_size {
            let actual = self.pos - block.entries_start;
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
            out.reserve(block.count);
            for _ in 0..block.count {
                let key = self.string(field)?;
                out.push(entry(self, key)?);
            }
            self.end_block(field, &block)?;
        }
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
        fn string_round_trip(s in ".*") {
            let mut buf = Vec::new();
            put_string(&mut buf, &s);
            prop_assert_eq!(buf.len(), bytes_len(s.len()));
            let mut r = Reader::new(&buf, "T");
            prop_assert_eq!(r.string("s"), Ok(s.as_str()));
            prop_assert!(r.is_empty());
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
