//! numpy's `.npy` format (versions 1-3) and `.npz` archives: reading numeric arrays and pickled
//! objects (`np.save(dict)`), and writing `.npy` headers for streamed output.

use std::io::{Read, Seek, Write};
use std::path::Path;

use super::array::{ArrayDtype, NdArray};
use super::pickle::{self, Limits, Value};
use crate::error::{Error, Result};

pub const MAGIC: &[u8] = b"\x93NUMPY";

/// What an `.npy` holds: a numeric array, or (for `|O` files) the pickled object inside.
pub enum NpyContent {
    Array(NdArray),
    Object(Value),
}

#[derive(Debug)]
struct Header {
    descr: String,
    fortran: bool,
    shape: Vec<usize>,
}

/// Parse a whole `.npy` file held in memory.
pub fn parse_npy(bytes: &[u8], limits: &Limits) -> std::result::Result<NpyContent, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a numpy .npy file (bad magic)".into());
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or("truncated .npy header")?;
    let text = String::from_utf8_lossy(&bytes[start..end]);
    let header = parse_header(&text)?;
    let body = &bytes[end..];
    let dtype = ArrayDtype::from_code(&header.descr)?;
    if dtype.is_object() {
        let (v, _) = pickle::unpickle(body, limits)?;
        return Ok(NpyContent::Object(v));
    }
    let n = super::array::numel_checked(&header.shape, limits.max_array_elements)?;
    let want = n.checked_mul(dtype.size as u64).ok_or("array too large")?;
    if (body.len() as u64) < want {
        return Err(format!(
            "truncated .npy: shape {:?} of {} needs {want} bytes of data, the file has {}",
            header.shape,
            header.descr,
            body.len()
        ));
    }
    let data = body[..want as usize].to_vec();
    Ok(NpyContent::Array(NdArray::new(
        dtype,
        header.shape,
        header.fortran,
        data,
        limits.max_array_elements,
    )?))
}

/// Parse the Python-literal header dict: `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header(text: &str) -> std::result::Result<Header, String> {
    let find = |key: &str| -> std::result::Result<&str, String> {
        let k = text
            .find(&format!("'{key}'"))
            .or_else(|| text.find(&format!("\"{key}\"")))
            .ok_or_else(|| format!(".npy header has no '{key}': {text:?}"))?;
        let rest = &text[k + key.len() + 2..];
        let colon = rest.find(':').ok_or("malformed .npy header")?;
        Ok(rest[colon + 1..].trim_start())
    };
    let d = find("descr")?;
    let quote = d.chars().next().ok_or("malformed .npy header")?;
    if quote != '\'' && quote != '"' {
        return Err("structured .npy dtypes are not supported".into());
    }
    let close = d[1..].find(quote).ok_or("malformed .npy descr")?;
    let descr = d[1..1 + close].to_string();
    let f = find("fortran_order")?;
    let fortran = f.starts_with("True");
    let s = find("shape")?;
    let open = s.find('(').ok_or("malformed .npy shape")?;
    let close = s[open..]
        .find(')')
        .map(|c| open + c)
        .ok_or("malformed .npy shape")?;
    let shape = s[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("bad .npy shape entry {t:?}"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Header {
        descr,
        fortran,
        shape,
    })
}

/// The header bytes of a version-1 (or 2, when needed) `.npy` for a C-order array.
pub fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_s = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    let v1 = dict.len() + 11 < u16::MAX as usize;
    let pre = if v1 { 10 } else { 12 };
    let total = pre + dict.len() + 1;
    let pad = (64 - total % 64) % 64;
    let body = format!("{dict}{}\n", " ".repeat(pad));
    let mut out = Vec::with_capacity(pre + body.len());
    out.extend_from_slice(MAGIC);
    if v1 {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(body.as_bytes());
    out
}

/// Read every member of an `.npz` (a zip of `.npy` files). Object members are refused.
pub fn read_npz(path: &Path, limits: &Limits) -> Result<Vec<(String, NdArray)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    read_npz_from(std::io::BufReader::new(file), limits).map_err(|m| Error::format(path, m))
}

pub fn read_npz_from<R: Read + Seek>(
    reader: R,
    limits: &Limits,
) -> std::result::Result<Vec<(String, NdArray)>, String> {
    let mut zip = zip::ZipArchive::new(reader)
        .map_err(|e| format!("not a readable .npz (zip) archive: {e}"))?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip
            .by_index(i)
            .map_err(|e| format!("corrupt .npz member {i}: {e}"))?;
        let name = f.name().trim_end_matches(".npy").to_string();
        let size = f.size();
        if size > limits.max_array_elements.saturating_mul(8) {
            return Err(format!("member {name} claims {size} bytes; refusing it"));
        }
        let mut buf = Vec::new();
        // take() bounds the read by what the directory claims, whatever the stream says
        (&mut f)
            .take(size)
            .read_to_end(&mut buf)
            .map_err(|e| format!("member {name}: {e}"))?;
        match parse_npy(&buf, limits).map_err(|e| format!("member {name}: {e}"))? {
            NpyContent::Array(a) => out.push((name, a)),
            NpyContent::Object(_) => {
                return Err(format!(
                "member {name} is a pickled object array; runner reads numeric .npz members only"
            ))
            }
        }
    }
    Ok(out)
}

/// Read a whole file into memory, with the path in the error; a directory, device or FIFO is
/// an error saying what it is, before anything is read (reading one may never end).
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    if let Some(what) = crate::fsio::not_regular(path) {
        return Err(Error::weights(
            path,
            format!("is {what}, not a regular file; expected a weights file (.npy, .npz, pickle, .safetensors, .pth or .onnx)"),
        ));
    }
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Write `.npy` bytes for a C-order array to `w`.
pub fn write_npy<W: Write>(
    w: &mut W,
    descr: &str,
    shape: &[usize],
    data: &[u8],
) -> std::io::Result<()> {
    w.write_all(&npy_header(descr, shape))?;
    w.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        let mut b = npy_header("<f4", &[2, 3]);
        assert_eq!(b.len() % 64, 0);
        for x in [1.0f32, 2., 3., 4., 5., 6.] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        match parse_npy(&b, &Limits::default()).unwrap() {
            NpyContent::Array(a) => {
                assert_eq!(a.shape, vec![2, 3]);
                assert_eq!(a.to_f32_c().unwrap(), vec![1.0, 2., 3., 4., 5., 6.]);
            }
            NpyContent::Object(_) => panic!("numeric expected"),
        }
    }

    #[test]
    fn truncated_data_is_an_error() {
        let mut b = npy_header("<f4", &[1000]);
        b.extend_from_slice(&[0u8; 16]);
        let err = parse_npy(&b, &Limits::default()).err().unwrap();
        assert!(err.contains("truncated"), "{err}");
    }
}
