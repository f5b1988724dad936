//! Host-side n-d arrays as numpy stores them (dtype code, byte order, C or Fortran order), and
//! the conversions runner needs from them.

/// A numpy dtype restricted to what runner reads: bool, ints, uints, floats, objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayDtype {
    /// 'b' bool, 'i' signed, 'u' unsigned, 'f' float, 'O' object
    pub kind: char,
    pub size: usize,
    pub big_endian: bool,
}

impl ArrayDtype {
    /// From a numpy type code such as `f4`, `<f4`, `>i8`, `|u1`, `O8`, `b1`, `float32`.
    pub fn from_code(code: &str) -> Result<Self, String> {
        let (order, rest) = match code.chars().next() {
            Some(c @ ('<' | '>' | '|' | '=')) => (Some(c), &code[1..]),
            _ => (None, code),
        };
        let named = match rest {
            "float16" => Some(('f', 2)),
            "float32" => Some(('f', 4)),
            "float64" => Some(('f', 8)),
            "int8" => Some(('i', 1)),
            "int16" => Some(('i', 2)),
            "int32" => Some(('i', 4)),
            "int64" => Some(('i', 8)),
            "uint8" => Some(('u', 1)),
            "uint16" => Some(('u', 2)),
            "uint32" => Some(('u', 4)),
            "uint64" => Some(('u', 8)),
            "bool" => Some(('b', 1)),
            "object" | "O" => Some(('O', 8)),
            _ => None,
        };
        let (kind, size) = match named {
            Some(ks) => ks,
            None => {
                let mut chars = rest.chars();
                let kind = chars
                    .next()
                    .ok_or_else(|| "empty numpy dtype code".to_string())?;
                let size: usize = chars
                    .as_str()
                    .parse()
                    .map_err(|_| format!("unsupported numpy dtype {code:?}"))?;
                (kind, size)
            }
        };
        let ok = match kind {
            'f' => matches!(size, 2 | 4 | 8),
            'i' | 'u' => matches!(size, 1 | 2 | 4 | 8),
            'b' => size == 1,
            'O' => matches!(size, 4 | 8),
            _ => false,
        };
        if !ok {
            return Err(format!(
                "unsupported numpy dtype {code:?} (runner reads bool, integer and float arrays)"
            ));
        }
        Ok(ArrayDtype {
            kind,
            size,
            big_endian: order == Some('>'),
        })
    }

    pub fn set_byte_order(&mut self, order: &str) -> Result<(), String> {
        match order {
            "<" | "|" | "=" => self.big_endian = false,
            ">" => self.big_endian = true,
            o => return Err(format!("unknown numpy byte order {o:?}")),
        }
        Ok(())
    }

    pub fn is_object(&self) -> bool {
        self.kind == 'O'
    }

    pub fn is_float(&self) -> bool {
        self.kind == 'f'
    }

    /// numpy's descr string, e.g. `<f4`.
    pub fn descr(&self) -> String {
        let order = if self.size == 1 || self.kind == 'O' {
            '|'
        } else if self.big_endian {
            '>'
        } else {
            '<'
        };
        format!("{order}{}{}", self.kind, self.size)
    }
}

/// A numeric array with its raw bytes, exactly as stored.
#[derive(Debug, Clone)]
pub struct NdArray {
    pub dtype: ArrayDtype,
    pub shape: Vec<usize>,
    pub fortran: bool,
    data: Vec<u8>,
}

impl NdArray {
    /// Checks that `data` holds exactly shape x itemsize bytes (with overflow checks).
    pub fn new(
        dtype: ArrayDtype,
        shape: Vec<usize>,
        fortran: bool,
        data: Vec<u8>,
        max_elements: u64,
    ) -> Result<Self, String> {
        let n = numel_checked(&shape, max_elements)?;
        let want = n
            .checked_mul(dtype.size as u64)
            .ok_or_else(|| format!("array of shape {shape:?} is too large"))?;
        if want != data.len() as u64 {
            return Err(format!(
                "array of shape {shape:?} and dtype {} needs {want} bytes but {} are stored (truncated or corrupt)",
                dtype.descr(),
                data.len()
            ));
        }
        Ok(NdArray {
            dtype,
            shape,
            fortran,
            data,
        })
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Elements as f64 in storage order.
    fn storage_f64(&self) -> Vec<f64> {
        let s = self.dtype.size;
        let be = self.dtype.big_endian;
        let k = self.dtype.kind;
        self.data
            .chunks_exact(s)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..s].copy_from_slice(c);
                if be {
                    b[..s].reverse();
                }
                match (k, s) {
                    ('f', 2) => half_to_f32(u16::from_le_bytes([b[0], b[1]])) as f64,
                    ('f', 4) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
                    ('f', 8) => f64::from_le_bytes(b),
                    ('u', _) | ('b', _) => u64::from_le_bytes(b) as f64,
                    ('i', _) => {
                        let shift = 64 - 8 * s as u32;
                        ((i64::from_le_bytes(b) << shift) >> shift) as f64
                    }
                    _ => f64::NAN,
                }
            })
            .collect()
    }

    /// Elements as i64 in storage order (integers and bools only).
    fn storage_i64(&self) -> Result<Vec<i64>, String> {
        let s = self.dtype.size;
        let be = self.dtype.big_endian;
        match self.dtype.kind {
            'i' | 'u' | 'b' => {}
            _ => {
                return Err(format!(
                    "expected an integer array, found dtype {}",
                    self.dtype.descr()
                ))
            }
        }
        self.data
            .chunks_exact(s)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..s].copy_from_slice(c);
                if be {
                    b[..s].reverse();
                }
                if self.dtype.kind == 'i' {
                    let shift = 64 - 8 * s as u32;
                    Ok((i64::from_le_bytes(b) << shift) >> shift)
                } else {
                    let v = u64::from_le_bytes(b);
                    i64::try_from(v).map_err(|_| format!("integer {v} does not fit in int64"))
                }
            })
            .collect()
    }

    /// Reorder storage-order elements into C order.
    fn to_c_order<T: Copy>(&self, v: Vec<T>) -> Vec<T> {
        if !self.fortran || self.shape.len() < 2 {
            return v;
        }
        // Fortran storage: the first index varies fastest.
        let shape = &self.shape;
        let nd = shape.len();
        let mut fstrides = vec![1usize; nd];
        for d in 1..nd {
            fstrides[d] = fstrides[d - 1] * shape[d - 1];
        }
        let mut out = Vec::with_capacity(v.len());
        let mut idx = vec![0usize; nd];
        for _ in 0..v.len() {
            let off: usize = idx.iter().zip(&fstrides).map(|(i, s)| i * s).sum();
            out.push(v[off]);
            for d in (0..nd).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out
    }

    /// Elements as f32, C order.
    pub fn to_f32_c(&self) -> Result<Vec<f32>, String> {
        if self.dtype.is_object() {
            return Err("expected a numeric array, found an object array".into());
        }
        let v: Vec<f32> =
            if self.dtype.kind == 'f' && self.dtype.size == 4 && !self.dtype.big_endian {
                self.data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            } else {
                self.storage_f64().into_iter().map(|x| x as f32).collect()
            };
        Ok(self.to_c_order(v))
    }

    /// Elements as i64, C order (integer arrays only).
    pub fn to_i64_c(&self) -> Result<Vec<i64>, String> {
        let v = self.storage_i64()?;
        Ok(self.to_c_order(v))
    }

    /// Bytes of a `uint8` array, C order.
    pub fn to_u8_c(&self) -> Result<Vec<u8>, String> {
        if self.dtype.kind != 'u' || self.dtype.size != 1 {
            return Err(format!(
                "expected a uint8 array, found dtype {}",
                self.dtype.descr()
            ));
        }
        Ok(self.to_c_order(self.data.clone()))
    }

    /// Consume into uint8 bytes, C order, without copying when already C-ordered.
    pub fn into_u8_c(self) -> Result<Vec<u8>, String> {
        if self.fortran {
            return self.to_u8_c();
        }
        if self.dtype.kind != 'u' || self.dtype.size != 1 {
            return Err(format!(
                "expected a uint8 array, found dtype {}",
                self.dtype.descr()
            ));
        }
        Ok(self.data)
    }
}

/// Product of dims, refusing more than `max` elements or overflow.
pub fn numel_checked(shape: &[usize], max: u64) -> Result<u64, String> {
    let mut n: u64 = 1;
    for &d in shape {
        n = n
            .checked_mul(d as u64)
            .filter(|&n| n <= max)
            .ok_or_else(|| {
                format!("array of shape {shape:?} has more than {max} elements; refusing it")
            })?;
    }
    Ok(n)
}

fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if frac == 0 => sign,
        0 => {
            // subnormal
            let v = frac as f32 / 1024.0 * 2f32.powi(-14);
            return if sign != 0 { -v } else { v };
        }
        0x1f => sign | 0x7f80_0000 | (frac << 13),
        e => sign | ((e + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_to_c_order() {
        // a 2x3 array [[0,1,2],[3,4,5]] stored in Fortran order is 0,3,1,4,2,5
        let data: Vec<u8> = [0u8, 3, 1, 4, 2, 5].to_vec();
        let a = NdArray::new(
            ArrayDtype::from_code("|u1").unwrap(),
            vec![2, 3],
            true,
            data,
            100,
        )
        .unwrap();
        assert_eq!(a.to_u8_c().unwrap(), vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn dtypes_and_endianness() {
        let be = ArrayDtype::from_code(">i2").unwrap();
        let a = NdArray::new(be, vec![2], false, vec![0xff, 0xfe, 0x00, 0x05], 10).unwrap();
        assert_eq!(a.to_i64_c().unwrap(), vec![-2, 5]);
        let h = ArrayDtype::from_code("<f2").unwrap();
        let a = NdArray::new(h, vec![2], false, vec![0x00, 0x3c, 0x00, 0xc0], 10).unwrap();
        assert_eq!(a.to_f32_c().unwrap(), vec![1.0, -2.0]);
        assert!(ArrayDtype::from_code("c16").is_err());
    }

    #[test]
    fn size_mismatch_and_huge_shapes_are_refused() {
        let f4 = ArrayDtype::from_code("<f4").unwrap();
        assert!(NdArray::new(f4.clone(), vec![3], false, vec![0; 8], 100).is_err());
        let err = NdArray::new(f4, vec![1 << 20, 1 << 20], false, vec![], 1 << 32).unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }
}
