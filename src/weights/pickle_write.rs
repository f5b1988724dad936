//! Writing pickles that Python/numpy read: dicts of numpy arrays, lists and strings, in the two
//! flavours found in the wild: Python 2 (protocol 2, every string a `BINSTRING`, as in
//! `bvlc-alexnet.npy`) and Python 3 (protocol 3, `BINUNICODE` text and `BINBYTES` data, as in
//! Udacity's `train.p`). Used by `runner data synth` and by the tests.

use std::io::Write;

/// An object to pickle.
#[derive(Debug, Clone)]
pub enum PyObj {
    Str(String),
    Int(i64),
    /// A C-order numpy array: descr (e.g. `<f4`, `|u1`), shape and raw little-endian bytes.
    Array {
        descr: String,
        shape: Vec<usize>,
        data: Vec<u8>,
    },
    List(Vec<PyObj>),
    Dict(Vec<(String, PyObj)>),
}

impl PyObj {
    pub fn f32_array(shape: Vec<usize>, values: &[f32]) -> PyObj {
        PyObj::Array {
            descr: "<f4".into(),
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn u8_array(shape: Vec<usize>, values: Vec<u8>) -> PyObj {
        PyObj::Array {
            descr: "|u1".into(),
            shape,
            data: values,
        }
    }

    pub fn i64_array(shape: Vec<usize>, values: &[i64]) -> PyObj {
        PyObj::Array {
            descr: "<i8".into(),
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Python 2 cPickle protocol 2: SHORT_BINSTRING/BINSTRING for text and bytes.
    Python2,
    /// Python 3 protocol 3: BINUNICODE for text, BINBYTES for bytes.
    Python3,
}

struct W<'a, T: Write> {
    w: &'a mut T,
    flavor: Flavor,
}

impl<T: Write> W<'_, T> {
    fn raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.w.write_all(b)
    }

    fn text(&mut self, s: &str) -> std::io::Result<()> {
        match self.flavor {
            Flavor::Python2 => {
                let latin1: Vec<u8> = s
                    .chars()
                    .map(|c| if (c as u32) < 256 { c as u8 } else { b'?' })
                    .collect();
                self.binstring(&latin1)
            }
            Flavor::Python3 => {
                let b = s.as_bytes();
                if b.len() < 256 {
                    self.raw(&[0x8c, b.len() as u8])?;
                } else {
                    self.raw(b"X")?;
                    self.raw(&(b.len() as u32).to_le_bytes())?;
                }
                self.raw(b)
            }
        }
    }

    fn binstring(&mut self, b: &[u8]) -> std::io::Result<()> {
        if b.len() < 256 {
            self.raw(&[b'U', b.len() as u8])?;
        } else {
            let n = i32::try_from(b.len()).map_err(|_| {
                std::io::Error::other("array too large for a Python 2 pickle string")
            })?;
            self.raw(b"T")?;
            self.raw(&n.to_le_bytes())?;
        }
        self.raw(b)
    }

    fn bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self.flavor {
            Flavor::Python2 => self.binstring(b),
            Flavor::Python3 => {
                if b.len() < 256 {
                    self.raw(&[b'C', b.len() as u8])?;
                } else if let Ok(n) = u32::try_from(b.len()) {
                    self.raw(b"B")?;
                    self.raw(&n.to_le_bytes())?;
                } else {
                    self.raw(&[0x8e])?;
                    self.raw(&(b.len() as u64).to_le_bytes())?;
                }
                self.raw(b)
            }
        }
    }

    fn int(&mut self, v: i64) -> std::io::Result<()> {
        if let Ok(i) = i32::try_from(v) {
            self.raw(b"J")?;
            self.raw(&i.to_le_bytes())
        } else {
            self.raw(&[0x8a, 8])?;
            self.raw(&v.to_le_bytes())
        }
    }

    fn bool(&mut self, b: bool) -> std::io::Result<()> {
        self.raw(&[if b { 0x88 } else { 0x89 }])
    }

    fn global(&mut self, module: &str, name: &str) -> std::io::Result<()> {
        self.raw(b"c")?;
        self.raw(module.as_bytes())?;
        self.raw(b"\n")?;
        self.raw(name.as_bytes())?;
        self.raw(b"\n")
    }

    fn dtype(&mut self, descr: &str) -> std::io::Result<()> {
        let (order, code) = descr.split_at(1);
        self.global("numpy", "dtype")?;
        self.text(code)?;
        self.bool(false)?;
        self.bool(true)?;
        self.raw(&[0x87, b'R', b'('])?; // TUPLE3 REDUCE MARK
        self.int(3)?;
        self.text(order)?;
        self.raw(b"NNN")?;
        self.int(-1)?;
        self.int(-1)?;
        self.int(0)?;
        self.raw(b"tb") // TUPLE BUILD
    }

    /// `_reconstruct(ndarray, (0,), b'b')` then BUILD (1, shape, dtype, False, data).
    fn array(
        &mut self,
        descr: &str,
        shape: &[usize],
        data: &[u8],
        items: Option<&[PyObj]>,
    ) -> std::io::Result<()> {
        self.global("numpy.core.multiarray", "_reconstruct")?;
        self.global("numpy", "ndarray")?;
        self.int(0)?;
        self.raw(&[0x85])?; // TUPLE1
        self.bytes(b"b")?;
        self.raw(&[0x87, b'R', b'('])?;
        self.int(1)?;
        self.raw(b"(")?;
        for &d in shape {
            self.int(d as i64)?;
        }
        self.raw(b"t")?;
        self.dtype(descr)?;
        self.bool(false)?;
        match items {
            Some(objs) => {
                self.raw(b"](")?;
                for o in objs {
                    self.obj(o)?;
                }
                self.raw(b"e")?;
            }
            None => self.bytes(data)?,
        }
        self.raw(b"tb")
    }

    fn obj(&mut self, o: &PyObj) -> std::io::Result<()> {
        match o {
            PyObj::Str(s) => self.text(s),
            PyObj::Int(i) => self.int(*i),
            PyObj::Array { descr, shape, data } => self.array(descr, shape, data, None),
            PyObj::List(items) => {
                self.raw(b"](")?;
                for i in items {
                    self.obj(i)?;
                }
                self.raw(b"e")
            }
            PyObj::Dict(kv) => {
                self.raw(b"}(")?;
                for (k, v) in kv {
                    self.text(k)?;
                    self.obj(v)?;
                }
                self.raw(b"u")
            }
        }
    }
}

/// `pickle.dump(obj)` in the given flavour.
pub fn write_pickle<T: Write>(w: &mut T, obj: &PyObj, flavor: Flavor) -> std::io::Result<()> {
    let proto = match flavor {
        Flavor::Python2 => 2,
        Flavor::Python3 => 3,
    };
    let mut p = W { w, flavor };
    p.raw(&[0x80, proto])?;
    p.obj(obj)?;
    p.raw(b".")
}

/// `np.save(path, obj)` of a non-array object: a 0-d object array whose pickle holds `obj`.
pub fn write_npy_object<T: Write>(w: &mut T, obj: &PyObj, flavor: Flavor) -> std::io::Result<()> {
    w.write_all(&super::npy::npy_header("|O", &[]))?;
    let proto = match flavor {
        Flavor::Python2 => 2,
        Flavor::Python3 => 3,
    };
    let mut p = W { w, flavor };
    p.raw(&[0x80, proto])?;
    p.array("|O8", &[], &[], Some(std::slice::from_ref(obj)))?;
    p.raw(b".")
}
