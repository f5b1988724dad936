//! Real-world pickle variants written by real Python/numpy (tests/reference/pickle_fixtures.py)
//! and by runner's own writer; and corrupt/truncated files, which must be errors, never panics.

mod common;

use common::*;
use runner::weights::pickle::{unpickle, Limits};
use runner::weights::pickle_write::{write_npy_object, write_pickle, Flavor, PyObj};
use runner::weights::{self, npy};

/// v[i] = i * 0.5 - 3, as the fixture script writes every float array.
fn vals(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32 * 0.5 - 3.0).collect()
}

fn check_weights_fixture(name: &str) {
    let path = fixture(&format!("pickles/{name}"));
    let stored = weights::read_stored(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let get = |k: &str| {
        stored
            .iter()
            .find(|(n, _)| n == k)
            .unwrap_or_else(|| {
                panic!(
                    "{name}: no {k} in {:?}",
                    stored.iter().map(|s| &s.0).collect::<Vec<_>>()
                )
            })
            .1
            .clone()
    };
    let w1 = get("conv1.W");
    assert_eq!(w1.shape, vec![2, 3, 4, 5], "{name}");
    assert_eq!(
        w1.to_f32_c().unwrap(),
        vals(120),
        "{name} conv1 W (<f4, C order)"
    );
    assert_eq!(get("conv1.b").to_f32_c().unwrap(), vals(5), "{name}");
    // float64 big-endian in Fortran order
    let w6 = get("fc6.W");
    assert_eq!(w6.shape, vec![6, 7]);
    assert_eq!(
        w6.to_f32_c().unwrap(),
        vals(42),
        "{name} fc6 W (>f8, Fortran order)"
    );
    assert_eq!(
        get("fc6.b").to_f32_c().unwrap(),
        vals(7),
        "{name} fc6 b (>f4)"
    );
    assert_eq!(
        get("fc7.W").to_f32_c().unwrap(),
        vals(12),
        "{name} fc7 W (<f4 Fortran)"
    );
    assert_eq!(
        get("fc7.b").to_f32_c().unwrap(),
        vals(4),
        "{name} fc7 b (<f8)"
    );
}

#[test]
fn np_save_dicts_numpy1_and_numpy2() {
    check_weights_fixture("npsave_np1.npy");
    check_weights_fixture("npsave_np2.npy");
}

#[test]
fn python2_binstring_pickles() {
    check_weights_fixture("py2_np1.npy");
    check_weights_fixture("py2_np2.npy");
}

#[test]
fn pickle_dump_protocols_2_4_5() {
    for p in [2, 4, 5] {
        for np in [1, 2] {
            check_weights_fixture(&format!("dump_p{p}_np{np}.p"));
        }
    }
}

#[test]
fn the_fixtures_really_are_the_claimed_flavours() {
    let b = std::fs::read(fixture("pickles/py2_np1.npy")).unwrap();
    assert!(
        b.windows(22).any(|w| w == b"numpy.core.multiarray\n"),
        "numpy 1.x module name"
    );
    assert!(b.contains(&b'T') && b.contains(&b'U'), "BINSTRING opcodes");
    let b = std::fs::read(fixture("pickles/npsave_np2.npy")).unwrap();
    assert!(
        b.windows(16).any(|w| w == b"numpy._core.mult"),
        "numpy 2.x module name"
    );
    let b = std::fs::read(fixture("pickles/dump_p2_np2.p")).unwrap();
    assert!(
        b.windows(8).any(|w| w == b"_codecs\n"),
        "protocol 2 from Python 3 uses _codecs.encode"
    );
    let b = std::fs::read(fixture("pickles/dump_p5_np1.p")).unwrap();
    assert!(
        b.windows(11).any(|w| w == b"_frombuffer"),
        "protocol 5 uses _frombuffer"
    );
}

#[test]
fn train_pickles_from_python() {
    for name in [
        "train_np1.p",
        "train_np2.p",
        "train_py2_np1.p",
        "train_py2_np2.p",
    ] {
        let d = runner::data::pickle::load(&fixture(&format!("pickles/{name}")), None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((d.n, d.height, d.width), (4, 5, 6), "{name}");
        assert_eq!(d.labels, vec![0, 2, 1, 2], "{name}");
        assert_eq!(d.num_classes, 3);
        let want: Vec<u8> = (0..4 * 5 * 6 * 3).map(|i| (i % 256) as u8).collect();
        assert_eq!(d.images, want, "{name}");
    }
}

#[test]
fn runner_written_pickles_roundtrip_in_both_flavours() {
    let obj = PyObj::Dict(vec![
        (
            "a".into(),
            PyObj::List(vec![
                PyObj::f32_array(vec![300], &vals(300)),
                PyObj::Int(-5),
            ]),
        ),
        ("b".into(), PyObj::Str("héllo".into())),
    ]);
    for flavor in [Flavor::Python2, Flavor::Python3] {
        let mut buf = Vec::new();
        write_pickle(&mut buf, &obj, flavor).unwrap();
        let (v, used) = unpickle(&buf, &Limits::default()).unwrap();
        assert_eq!(used, buf.len());
        let d = v.as_str_dict().unwrap();
        let a = d[0].1.as_seq().unwrap();
        assert_eq!(a[0].as_array().unwrap().to_f32_c().unwrap(), vals(300));
        assert_eq!(a[1].as_int(), Some(-5));
        let mut npyb = Vec::new();
        write_npy_object(&mut npyb, &obj, flavor).unwrap();
        match npy::parse_npy(&npyb, &Limits::default()).unwrap() {
            npy::NpyContent::Object(v) => {
                assert!(v.unwrap_object_scalar().unwrap().as_str_dict().is_some())
            }
            _ => panic!("object expected"),
        }
    }
}

#[test]
fn every_truncation_of_every_fixture_is_an_error_not_a_panic() {
    let dir = std::fs::read_dir(fixture("pickles")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for e in dir {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        for cut in 0..bytes.len() {
            let t = tmp.path().join("t.npy");
            std::fs::write(&t, &bytes[..cut]).unwrap();
            assert!(
                weights::read_stored(&t).is_err(),
                "{} cut at {cut} was accepted",
                p.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 10_000);
}

#[test]
fn corrupted_bytes_never_panic() {
    // flip each byte of a fixture in turn: any outcome but a panic is fine
    let bytes = std::fs::read(fixture("pickles/py2_np1.npy")).unwrap();
    for i in 0..bytes.len() {
        for x in [0x00u8, 0xff, 0x80] {
            let mut b = bytes.clone();
            b[i] ^= x | 1;
            if let Ok(npy::NpyContent::Object(v)) = npy::parse_npy(&b, &Limits::default()) {
                let _ = v.unwrap_object_scalar();
            }
        }
    }
}

#[test]
fn hostile_sizes_are_refused_before_allocating() {
    // BINBYTES8 claiming 2^62 bytes
    let mut p = vec![0x80, 4, 0x8e];
    p.extend_from_slice(&(1u64 << 62).to_le_bytes());
    let err = unpickle(&p, &Limits::default()).unwrap_err();
    assert!(err.contains("truncated"), "{err}");
    // an .npy header claiming 10^12 float32 elements
    let mut b = npy::npy_header("<f4", &[1_000_000, 1_000_000]);
    b.extend_from_slice(&[0; 64]);
    assert!(npy::parse_npy(&b, &Limits::default()).is_err());
    // a global that would execute code
    let evil = b"\x80\x02cos\nsystem\nU\x02lsR.";
    let err = unpickle(evil, &Limits::default()).unwrap_err();
    assert!(err.contains("os.system"), "{err}");
}
