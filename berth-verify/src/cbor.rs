//! A bounded CBOR decoder (RFC 8949) for COSE_Sign1 envelopes. Only what COSE uses is
//! kept apart (integers, byte and text strings, arrays, maps, tags, simple values);
//! floats are read and dropped. Limits make any input cheap: nesting at most
//! [`MAX_DEPTH`], at most [`MAX_ITEMS`] items in all, every length checked against the
//! bytes left before anything is allocated, and no indefinite lengths (COSE is
//! deterministic CBOR).

pub const MAX_DEPTH: usize = 16;
pub const MAX_ITEMS: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Uint(u64),
    /// A negative integer, as the CBOR argument `n` of `-1 - n`.
    Nint(u64),
    Bytes(&'a [u8]),
    Text(&'a str),
    Array(Vec<Value<'a>>),
    Map(Vec<(Value<'a>, Value<'a>)>),
    Tag(u64, Box<Value<'a>>),
    Bool(bool),
    Null,
    /// Undefined, other simple values and floats: nothing COSE headers need.
    Other,
}

impl Value<'_> {
    /// The value as a signed integer, if it is one that fits.
    pub fn as_int(&self) -> Option<i64> {
        match *self {
            Value::Uint(n) => i64::try_from(n).ok(),
            Value::Nint(n) => i64::try_from(n).ok().map(|n| -1 - n),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    #[error("CBOR input ends early")]
    Truncated,
    #[error("CBOR nests deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("CBOR has more than {MAX_ITEMS} items")]
    TooMany,
    #[error("CBOR indefinite lengths are not accepted")]
    Indefinite,
    #[error("CBOR text is not UTF-8")]
    BadText,
    #[error("CBOR is malformed")]
    Malformed,
    #[error("bytes follow the CBOR item")]
    Trailing,
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    items: usize,
}

/// Decodes exactly one item spanning all of `input`.
pub fn decode(input: &[u8]) -> Result<Value<'_>, CborError> {
    let mut d = Decoder {
        input,
        pos: 0,
        items: 0,
    };
    let v = d.item(0)?;
    if d.pos != input.len() {
        return Err(CborError::Trailing);
    }
    Ok(v)
}

impl<'a> Decoder<'a> {
    fn byte(&mut self) -> Result<u8, CborError> {
        let b = *self.input.get(self.pos).ok_or(CborError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], CborError> {
        let left = (self.input.len() - self.pos) as u64;
        if n > left {
            return Err(CborError::Truncated);
        }
        let n = n as usize;
        let s = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn argument(&mut self, info: u8) -> Result<u64, CborError> {
        Ok(match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.byte()?),
            25 => u64::from(u16::from_be_bytes(self.fixed()?)),
            26 => u64::from(u32::from_be_bytes(self.fixed()?)),
            27 => u64::from_be_bytes(self.fixed()?),
            31 => return Err(CborError::Indefinite),
            _ => return Err(CborError::Malformed),
        })
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], CborError> {
        let s = self.take(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// A count of nested items, which must each take at least one byte: checking it
    /// against the bytes left bounds the allocation by the input.
    fn count(&mut self, n: u64, per_item: u64) -> Result<usize, CborError> {
        let left = (self.input.len() - self.pos) as u64;
        if n.saturating_mul(per_item) > left {
            return Err(CborError::Truncated);
        }
        if self.items as u64 + n > MAX_ITEMS as u64 {
            return Err(CborError::TooMany);
        }
        Ok(n as usize)
    }

    fn item(&mut self, depth: usize) -> Result<Value<'a>, CborError> {
        if depth > MAX_DEPTH {
            return Err(CborError::TooDeep);
        }
        self.items += 1;
        if self.items > MAX_ITEMS {
            return Err(CborError::TooMany);
        }
        let initial = self.byte()?;
        let (major, info) = (initial >> 5, initial & 0x1f);
        Ok(match major {
            0 => Value::Uint(self.argument(info)?),
            1 => Value::Nint(self.argument(info)?),
            2 => {
                let n = self.argument(info)?;
                Value::Bytes(self.take(n)?)
            }
            3 => {
                let n = self.argument(info)?;
                let s = self.take(n)?;
                Value::Text(std::str::from_utf8(s).map_err(|_| CborError::BadText)?)
            }
            4 => {
                let n = self.argument(info)?;
                let n = self.count(n, 1)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.item(depth + 1)?);
                }
                Value::Array(v)
            }
            5 => {
                let n = self.argument(info)?;
                let n = self.count(n, 2)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = self.item(depth + 1)?;
                    let val = self.item(depth + 1)?;
                    v.push((k, val));
                }
                Value::Map(v)
            }
            6 => {
                let tag = self.argument(info)?;
                Value::Tag(tag, Box::new(self.item(depth + 1)?))
            }
            _ => match info {
                20 => Value::Bool(false),
                21 => Value::Bool(true),
                22 => Value::Null,
                24 => {
                    self.byte()?;
                    Value::Other
                }
                25 => {
                    self.take(2)?;
                    Value::Other
                }
                26 => {
                    self.take(4)?;
                    Value::Other
                }
                27 => {
                    self.take(8)?;
                    Value::Other
                }
                31 => return Err(CborError::Indefinite),
                28..=30 => return Err(CborError::Malformed),
                _ => Value::Other,
            },
        })
    }
}

/// Appends the head of a CBOR item (major type and argument), shortest form.
pub fn encode_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= 0xff {
        out.extend([m | 24, n as u8]);
    } else if n <= 0xffff {
        out.push(m | 25);
        out.extend((n as u16).to_be_bytes());
    } else if n <= 0xffff_ffff {
        out.push(m | 26);
        out.extend((n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend(n.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_cose_shapes() {
        // 18([h'a10126', {}, h'00', h'01'])
        let v = decode(&[
            0xd2, 0x84, 0x43, 0xa1, 0x01, 0x26, 0xa0, 0x41, 0x00, 0x41, 0x01,
        ])
        .expect("decode");
        let Value::Tag(18, inner) = v else {
            panic!("not tag 18")
        };
        let Value::Array(items) = *inner else {
            panic!("not an array")
        };
        assert_eq!(items[0], Value::Bytes(&[0xa1, 0x01, 0x26]));
        let Value::Map(m) = decode(&[0xa1, 0x01, 0x26]).expect("map") else {
            panic!()
        };
        assert_eq!(m[0].1.as_int(), Some(-7));
    }

    #[test]
    fn bounded() {
        // 100 nested arrays
        let deep: Vec<u8> = std::iter::repeat_n(0x81u8, 100).chain([0x00]).collect();
        assert_eq!(decode(&deep), Err(CborError::TooDeep));
        // an array claiming 2^32 items in 5 bytes
        assert_eq!(
            decode(&[0x9a, 0xff, 0xff, 0xff, 0xff]),
            Err(CborError::Truncated)
        );
        assert_eq!(decode(&[0x9f, 0xff]), Err(CborError::Indefinite));
        assert_eq!(decode(&[0x62, 0xff, 0xfe]), Err(CborError::BadText));
        assert_eq!(decode(&[0x00, 0x00]), Err(CborError::Trailing));
        let wide: Vec<u8> = [0x99, 0x27, 0x10]
            .into_iter()
            .chain(std::iter::repeat_n(0u8, 10000))
            .collect();
        assert_eq!(decode(&wide), Err(CborError::TooMany));
    }

    #[test]
    fn heads_round_trip() {
        for n in [0u64, 23, 24, 255, 256, 65535, 65536, 1 << 40] {
            let mut out = Vec::new();
            encode_head(&mut out, 2, n);
            let mut d = Decoder {
                input: &out,
                pos: 1,
                items: 0,
            };
            assert_eq!(d.argument(out[0] & 0x1f), Ok(n));
        }
    }
}
