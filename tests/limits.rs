//! Resource bounds: inputs that claim or build far more than they hold are refused quickly,
//! with a message, in bounded memory.

mod common;

use common::*;
use runner::weights::pickle::{unpickle, Limits};

#[test]
fn an_npy_claiming_a_trillion_elements_is_refused_without_allocating() {
    let mut b = runner::weights::npy::npy_header("<f4", &[1_000_000, 1_000_000]);
    b.extend_from_slice(&[0u8; 64]);
    let e = runner::weights::npy::parse_npy(&b, &Limits::default())
        .err()
        .expect("refused");
    assert!(e.contains("1000000"), "{e}");

    // through the CLI, as a weights file: one clean line
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("huge.npy"), &b).unwrap();
    let out = run_in(d.path(), &["weights", "inspect", "huge.npy"]);
    assert_clean_failure(&out, &["huge.npy"]);
}

fn op(code: u8) -> u8 {
    code
}

/// PROTO 2, `n` empty lists, each appended into the one below: a chain `n` deep.
fn nested_lists(n: usize) -> Vec<u8> {
    let mut b = vec![0x80, 2];
    b.extend(std::iter::repeat_n(op(b']'), n));
    b.extend(std::iter::repeat_n(op(b'a'), n - 1));
    b.push(b'.');
    b
}

#[test]
fn deeply_nested_pickles_are_refused_without_overflowing_the_stack() {
    // 1,000 deep is allowed; 1,001 and 200,000 are refused (a recursive drop of 200,000 levels
    // would overflow any thread's stack)
    assert!(unpickle(&nested_lists(1000), &Limits::default()).is_ok());
    for n in [1001, 200_000] {
        let e = unpickle(&nested_lists(n), &Limits::default()).expect_err("refused");
        assert!(e.contains("more than 1000 deep"), "{e}");
    }
    // refused half-way (truncated), the same chain is torn down without recursion
    let mut b = nested_lists(200_000);
    b.pop();
    assert!(unpickle(&b, &Limits::default()).is_err());
}

#[test]
fn self_containing_and_memo_bomb_pickles() {
    // l = []; l.append(l)
    let cyc = [0x80, 2, b']', b'q', 0, b'h', 0, b'a', b'.'];
    let e = unpickle(&cyc, &Limits::default()).expect_err("refused");
    assert!(e.contains("contains itself"), "{e}");

    // the same without the memo: DUP, then APPEND the list to itself
    let dup = [0x80, 2, b']', b'2', b'a', b'.'];
    let e = unpickle(&dup, &Limits::default()).expect_err("refused");
    assert!(e.contains("contains itself"), "{e}");
    // a cycle left on the stack beside a harmless result is torn down, not returned
    let beside = [0x80, 2, b']', b'2', b'a', b']', b'.'];
    let (v, _) = unpickle(&beside, &Limits::default()).unwrap();
    assert_eq!(v.as_seq().map(|s| s.len()), Some(0));

    // l[i+1] = [l[i], l[i]] 900 times: 2^900 leaves if expanded, 901 lists as stored
    let mut b = vec![0x80, 2, b']', b'r', 0, 0, 0, 0];
    for i in 0u32..900 {
        b.push(b']');
        for _ in 0..2 {
            b.push(b'j');
            b.extend(i.to_le_bytes());
            b.push(b'a');
        }
        b.push(b'r');
        b.extend((i + 1).to_le_bytes());
    }
    b.push(b'.');
    let t = std::time::Instant::now();
    let (v, _) = unpickle(&b, &Limits::default()).expect("a shared DAG 901 deep is fine");
    assert_eq!(v.as_seq().map(|s| s.len()), Some(2));
    assert!(
        t.elapsed().as_secs() < 5,
        "memo references must not be expanded"
    );

    // as a dataset: one clean line, not a crash
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("bomb.p"), &b).unwrap();
    std::fs::write(
        d.path().join("s.toml"),
        "[backbone]\narch = \"alexnet\"\nweights = \"random\"\nfreeze = \"fc7\"\n\
         [dataset]\nkind = \"pickle\"\npath = \"bomb.p\"\n[run]\ndevice = \"cpu\"\n",
    )
    .unwrap();
    let out = run_in(d.path(), &["extract", "s.toml", "--out", "x.npz"]);
    assert_clean_failure(&out, &["bomb.p", "expected a dict"]);
}

#[test]
fn a_100k_class_label_set_is_refused_unless_declared() {
    let d = tempfile::tempdir().unwrap();
    let labels: Vec<i64> = vec![0, 99_999];
    write_train_p(
        &d.path().join("t.p"),
        vec![7u8; 2 * 32 * 32 * 3],
        2,
        32,
        32,
        &labels,
    );
    std::fs::write(
        d.path().join("s.toml"),
        "[backbone]\narch = \"alexnet\"\nweights = \"random\"\nfreeze = \"fc7\"\n\
         [dataset]\nkind = \"pickle\"\npath = \"t.p\"\n[run]\ndevice = \"cpu\"\n",
    )
    .unwrap();
    let out = run_in(d.path(), &["extract", "s.toml", "--out", "x.npz"]);
    assert_clean_failure(
        &out,
        &[
            "t.p",
            "99999",
            "more than 10000 classes",
            "dataset.num_classes",
        ],
    );
    assert!(!d.path().join("x.npz").exists());
}

/// A PNG header claiming `w x h`, with a token image body: decoders must refuse it from the
/// header, before allocating.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    fn crc(bytes: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend(crc(&body).to_be_bytes());
    }
    let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(&mut b, b"IHDR", &ihdr);
    chunk(
        &mut b,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut b, b"IEND", &[]);
    b
}

#[test]
fn huge_images_are_refused_from_the_header_and_tiny_ones_work() {
    let e = runner::data::images::decode_bytes(&png_claiming(20_000, 20_000))
        .err()
        .expect("refused");
    assert!(
        e.contains("20000x20000") && e.contains("RUNNER_MAX_IMAGE_PIXELS"),
        "{e}"
    );

    // a folder of 1x1 images: resized like any other
    let d = tempfile::tempdir().unwrap();
    for (class, px) in [("a", [255u8, 0, 0]), ("b", [0u8, 0, 255])] {
        std::fs::create_dir_all(d.path().join("imgs").join(class)).unwrap();
        for i in 0..2 {
            image::RgbImage::from_pixel(1, 1, image::Rgb(px))
                .save(d.path().join(format!("imgs/{class}/{i}.png")))
                .unwrap();
        }
    }
    std::fs::write(
        d.path().join("s.toml"),
        "[backbone]\narch = \"alexnet\"\nweights = \"random\"\nfreeze = \"pool5\"\n\
         [dataset]\nkind = \"folder\"\npath = \"imgs\"\nimage_size = 32\n[run]\ndevice = \"cpu\"\n",
    )
    .unwrap();
    let out = run_in(d.path(), &["extract", "s.toml", "--out", "x.npz"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = runner::weights::npy::read_npz(&d.path().join("x.npz"), &Limits::default()).unwrap();
    let f = &m.iter().find(|(k, _)| k == "features").unwrap().1;
    assert_eq!(f.shape, vec![4, 9216]);
}

#[test]
fn a_sweep_of_a_million_points_is_refused_before_planning() {
    let text = "[backbone]\narch = \"alexnet\"\nweights = \"random\"\nfreeze = \"fc7\"\n\
                [dataset]\nkind = \"synthetic\"\n[sweep]\nmode = \"grid\"\n[sweep.params]\n\
                \"train.lr\" = [1,2,3,4,5,6,7,8,9,10]\n\"train.batch_size\" = [1,2,3,4,5,6,7,8,9,10]\n\
                \"train.epochs\" = [1,2,3,4,5,6,7,8,9,10]\n\"head.dropout\" = [0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.0]\n\
                \"train.momentum\" = [0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.0]\n\"seed\" = [1,2,3,4,5,6,7,8,9,10]\n";
    let t = std::time::Instant::now();
    let e = runner::spec::sweep::expand_str(std::path::Path::new("big.toml"), text, &[], vec![])
        .expect_err("refused");
    assert!(e.to_string().contains("1000000 points"), "{e}");
    assert!(t.elapsed().as_secs() < 5);
}
