//! Careless or hostile input, round 2: sizes that would take more memory than there is are
//! refused before any is taken, names stay inside `run.results_dir`, a closed standard output
//! is not a crash, and the Slurm script runs no character of a path or value as shell code.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Stdio;

use common::*;
use runner::weights::pickle_write::{write_npy_object, Flavor, PyObj};

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.to_string_lossy().to_string()
}

const SYNTH: &str = "[backbone]\nweights = \"random\"\n[dataset]\nkind = \"synthetic\"\nper_class = 2\n[run]\ndevice = \"cpu\"\n";

fn assert_refused(dir: &Path, set: &str, cmd: &str, must: &[&str]) {
    let s = write(dir, "s.toml", SYNTH);
    let out = run_in(dir, &[cmd, &s, "--set", set]);
    assert_clean_failure(&out, must);
    assert_eq!(out.status.code(), Some(2), "exit 2 for {set}");
}

#[test]
fn sizes_above_the_documented_limits_are_spec_errors_with_the_key() {
    let d = tempfile::tempdir().unwrap();
    for (set, key) in [
        ("dataset.per_class=2000000000", "dataset.per_class"),
        ("head.hidden=[100000000]", "head.hidden"),
        ("dataset.num_classes=1000000000", "dataset.num_classes"),
        ("dataset.image_size=60000", "dataset.image_size"),
        ("run.extract_batch=1000000", "run.extract_batch"),
        ("train.batch_size=100000000000", "train.batch_size"),
    ] {
        for cmd in ["check", "run"] {
            assert_refused(d.path(), set, cmd, &[key, "limit"]);
        }
    }
    // in the file, the error points at the line
    let s = write(
        d.path(),
        "s.toml",
        &SYNTH.replace("per_class = 2", "per_class = 2000000000"),
    );
    assert_clean_failure(
        &run_in(d.path(), &["check", &s]),
        &["s.toml:5:1", "dataset.per_class"],
    );
}

#[test]
fn sizes_under_the_limits_that_do_not_fit_in_memory_are_refused_before_running() {
    let d = tempfile::tempdir().unwrap();
    // each would take tens of GB to TB: 900k synthetic images per class with their features;
    // a 1M-unit hidden layer over 4096 features; 900k classes over 4096 features
    for (set, key) in [
        ("dataset.per_class=900000", "dataset.per_class"),
        ("head.hidden=[1000000]", "head.hidden"),
        ("dataset.num_classes=900000", "900000 classes"),
    ] {
        for cmd in ["check", "run"] {
            assert_refused(d.path(), set, cmd, &[key, "would take", "of memory"]);
        }
    }
    // nothing was written for them
    assert!(!d.path().join("results").join("s").exists());
}

#[test]
fn a_folder_of_small_images_at_a_huge_image_size_is_refused_at_once() {
    // 4096 is allowed by the limit; images are decoded a batch at a time, but batches of 1024
    // images at 4096x4096 (with those decoded ahead and their f32 copies) would take 670 GB
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("imgs");
    for c in ["a", "b"] {
        std::fs::create_dir_all(root.join(c)).unwrap();
        for i in 0..10_000 {
            // the run is refused before the data is read: empty files are never opened
            std::fs::write(root.join(c).join(format!("{i}.png")), b"").unwrap();
        }
    }
    let body = "[backbone]\nweights = \"random\"\n[dataset]\nkind = \"folder\"\npath = \"imgs\"\nimage_size = 4096\n[run]\ndevice = \"cpu\"\nextract_batch = 1024\n";
    let s = write(d.path(), "s.toml", body);
    let out = run_in(d.path(), &["run", &s]);
    assert_clean_failure(
        &out,
        &[
            "image_size = 4096",
            "run.extract_batch = 1024",
            "would take",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn names_are_one_plain_folder_under_results() {
    let d = tempfile::tempdir().unwrap();
    for name in [
        "../escape",
        "/tmp/absolute",
        "a/b",
        "line\\nbreak",
        "..",
        ".",
        "",
        "quote\\\"s",
        "$(touch pwned)",
    ] {
        let body = format!("name = \"{name}\"\n{SYNTH}");
        let s = write(d.path(), "s.toml", &body);
        let out = run_in(d.path(), &["check", &s]);
        if name.is_empty() {
            // an empty name means the file's stem
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            continue;
        }
        assert_clean_failure(&out, &["s.toml:1:1", "key `name`", "plain folder name"]);
        assert_eq!(out.status.code(), Some(2));
    }
    let long = "x".repeat(101);
    let s = write(d.path(), "s.toml", &format!("name = \"{long}\"\n{SYNTH}"));
    assert_clean_failure(&run_in(d.path(), &["check", &s]), &["key `name`", "100"]);
    // from --set too
    let s = write(d.path(), "s.toml", SYNTH);
    let out = run_in(d.path(), &["check", &s, "--set", "name=../../x"]);
    assert_clean_failure(&out, &["key `name`"]);
    // a file stem that is not a plain name becomes one
    let s = write(d.path(), "my exp $(x).toml", SYNTH);
    let out = run_in(d.path(), &["check", &s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("my_exp___x_"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!d.path().join("pwned").exists());
}

/// Run `args` with a standard output whose reader is gone before the process starts: a pipe
/// with its read end closed, so the first write fails with EPIPE, whatever the timing.
fn with_closed_stdout(dir: &Path, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = runner()
        .current_dir(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    std::process::Output {
        status,
        stdout: vec![],
        stderr: err.into_bytes(),
    }
}

#[test]
fn a_closed_standard_output_ends_commands_quietly() {
    let d = tempfile::tempdir().unwrap();
    let sweep = format!("{SYNTH}[sweep]\nmode = \"grid\"\n\"train.lr\" = [0.1, 0.01, 0.001]\n");
    let s = write(d.path(), "s.toml", &sweep);
    let npy = d.path().join("w.npy");
    let layers: Vec<(String, PyObj)> = (0..50)
        .map(|i| {
            let w = PyObj::f32_array(vec![2, 2], &[0.0; 4]);
            let b = PyObj::f32_array(vec![2], &[0.0; 2]);
            (format!("layer{i}"), PyObj::List(vec![w, b]))
        })
        .collect();
    let mut f = std::fs::File::create(&npy).unwrap();
    write_npy_object(&mut f, &PyObj::Dict(layers), Flavor::Python3).unwrap();
    drop(f);
    let npy = npy.to_string_lossy().to_string();
    for args in [
        vec!["plan", s.as_str()],
        vec!["status", s.as_str()],
        vec!["check", s.as_str()],
        vec!["devices"],
        vec!["weights", "inspect", npy.as_str()],
    ] {
        let out = with_closed_stdout(d.path(), &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE") && !err.contains("error"),
            "{args:?}: {err}"
        );
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
    }
}

fn slurm_dry_run(dir: &Path, spec: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["slurm", spec, "--dry-run"];
    args.extend_from_slice(extra);
    run_in(dir, &args)
}

#[test]
fn the_slurm_script_quotes_every_path_and_value() {
    let d = tempfile::tempdir().unwrap();
    let hostile = "r e's \"q\" $(touch pwned1) `touch pwned2` $HOME \\ ;touch pwned3";
    let body = format!("{SYNTH}[sweep]\nmode = \"grid\"\n\"train.lr\" = [0.1, 0.01]\n")
        .replace("[run]\n", &format!("[run]\nresults_dir = {hostile:?}\n"));
    let spec = write(d.path(), "sp ace's $(touch pwned4).toml", &body);
    let set = "dataset.val_path=v $(touch pwned5) '\"`";
    let out = slurm_dry_run(
        d.path(),
        &spec,
        &[
            "--set",
            set,
            "--partition",
            "p\"art $(touch pwned6)",
            "--sbatch-arg=--comment=a \"b\" `touch pwned7`",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --dry-run prints the script it would submit
    assert!(stdout.starts_with("#!/bin/bash\n"), "{stdout}");
    let directives: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("#SBATCH"))
        .collect();
    // job name, array, output, chdir, partition, the extra argument: nothing more
    assert_eq!(directives.len(), 6, "{stdout}");
    for l in &directives {
        let quoted = l.starts_with("#SBATCH \"--") && l.ends_with('"');
        let plain = l["#SBATCH ".len()..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=.,:/%@+".contains(c));
        assert!(quoted || plain, "{l}");
    }
    // the exec line, run by bash with printf in runner's place, gives back every argument as
    // it was, and runs nothing
    let exec = stdout
        .lines()
        .find(|l| l.starts_with("exec "))
        .expect("exec line");
    let exe_end = exec[6..].find('\'').unwrap() + 7;
    let probe = format!("printf '%s\\n'{}", &exec[exe_end..]);
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&probe)
        .current_dir(d.path())
        .env("SLURM_ARRAY_TASK_ID", "1")
        .output()
        .unwrap();
    let args: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        args,
        vec!["sweep", &spec, "--index", "1", "-q", "--set", set],
        "{probe}"
    );
    // the #SBATCH values as sbatch reads them (double quotes group, backslash escapes)
    let unquote = |l: &str| -> String {
        let Some(inner) = l
            .strip_prefix("#SBATCH \"")
            .and_then(|r| r.strip_suffix('"'))
        else {
            return l["#SBATCH ".len()..].to_string();
        };
        let mut s = String::new();
        let mut esc = false;
        for c in inner.chars() {
            match (esc, c) {
                (false, '\\') => esc = true,
                (_, c) => {
                    s.push(c);
                    esc = false;
                }
            }
        }
        s
    };
    let values: Vec<String> = directives.iter().map(|l| unquote(l)).collect();
    assert!(
        values.contains(&"--partition=p\"art $(touch pwned6)".to_string()),
        "{values:?}"
    );
    assert!(
        values.contains(&"--comment=a \"b\" `touch pwned7`".to_string()),
        "{values:?}"
    );
    assert!(
        values
            .iter()
            .any(|v| v.starts_with("--output=") && v.contains(hostile)),
        "{values:?}"
    );
    for i in 1..=7 {
        assert!(!d.path().join(format!("pwned{i}")).exists(), "pwned{i}");
    }
    // a line break cannot be carried by a #SBATCH line: refused, nothing written
    let out = slurm_dry_run(d.path(), &spec, &["--partition", "a\n#SBATCH --wrap=evil"]);
    assert_clean_failure(&out, &["#SBATCH", "line breaks"]);
}

/// A `torch.save`-style zip: `archive/data.pkl` holding `pickle`, and `storages` under
/// `archive/data/`.
fn pth_zip(path: &Path, pickle: &[u8], storages: &[(&str, &[u8])]) {
    use std::io::Write;
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let o =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", o).unwrap();
    z.write_all(pickle).unwrap();
    for (key, bytes) in storages {
        z.start_file(format!("archive/data/{key}"), o).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

/// Pickle opcodes for `{name: tensor}` with `_rebuild_tensor_v2` over FloatStorage "0" of
/// `numel` elements (protocol 2, as torch.save writes).
fn state_dict_pickle(name: &str, numel: u8, size: &[u32], stride: &[u32]) -> Vec<u8> {
    let text = |p: &mut Vec<u8>, s: &str| {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    };
    let ints = |p: &mut Vec<u8>, v: &[u32]| {
        p.push(b'(');
        for x in v {
            p.push(b'J');
            p.extend(x.to_le_bytes());
        }
        p.push(b't');
    };
    let mut p = b"\x80\x02}".to_vec();
    text(&mut p, name);
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    text(&mut p, "storage");
    p.extend(b"ctorch\nFloatStorage\n");
    text(&mut p, "0");
    text(&mut p, "cpu");
    p.extend([b'K', numel, b't', b'Q', b'K', 0]);
    ints(&mut p, size);
    ints(&mut p, stride);
    p.extend(b"\x89ccollections\nOrderedDict\n)RtRs.");
    p
}

/// Issue 29, items 1 and 3: `.pth` files are read by runner's own unpickler. A pickle that
/// calls a function is refused by `weights inspect` as by `run` (exit 2, naming it); a tensor
/// whose shape reaches beyond its storage is reported with its shape and the storage's size;
/// nothing but runner's message reaches either stream.
#[test]
fn pth_files_that_call_code_or_lie_about_sizes_are_refused_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    let evil = d.path().join("evil.pth");
    pth_zip(
        &evil,
        b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00ls\x85R.",
        &[],
    );
    let out = run_in(d.path(), &["weights", "inspect", "evil.pth"]);
    assert_clean_failure(&out, &["evil.pth", "PyTorch checkpoint", "posix.system"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "nothing listed");

    // 10^15 elements (10^5 x 10^5 x 10^5) over a storage of 4 floats (16 bytes)
    let huge = d.path().join("huge.pth");
    let pkl = state_dict_pickle(
        "conv1.weight",
        4,
        &[100_000, 100_000, 100_000],
        &[10_000_000, 100, 1],
    );
    pth_zip(&huge, &pkl, &[("0", &[0u8; 16])]);
    std::fs::write(
        d.path().join("s.toml"),
        "[backbone]\nweights = \"huge.pth\"\noutput = \"conv1\"\n[dataset]\nkind = \"synthetic\"\nper_class = 1\n[run]\ndevice = \"cpu\"\n",
    )
    .unwrap();
    for args in [
        vec!["weights", "inspect", "huge.pth"],
        vec!["run", "s.toml"],
    ] {
        let out = run_in(d.path(), &args);
        let must = [
            "huge.pth",
            "[100000, 100000, 100000]",
            "4 elements",
            "16 bytes",
        ];
        assert_clean_failure(&out, &must);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains("skipping"), "a dependency's output: {all}");
    }

    // a storage shorter than the pickle claims: named with both sizes when the tensor is read
    let short = d.path().join("short.pth");
    let pkl = state_dict_pickle("conv1.bias", 96, &[96], &[1]);
    pth_zip(&short, &pkl, &[("0", &[0u8; 20])]);
    let e = runner::weights::pth::open(&short, &std::fs::read(&short).unwrap())
        .unwrap()
        .f32("conv1.bias")
        .unwrap_err();
    assert!(
        e.contains("384 bytes") && e.contains("holds 20 bytes"),
        "{e}"
    );
    // and a sound one reads
    let ok = d.path().join("ok.pth");
    let vals: Vec<u8> = [1.5f32, -2.0, 0.25, 8.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    pth_zip(
        &ok,
        &state_dict_pickle("b", 4, &[2, 2], &[1, 2]),
        &[("0", &vals)],
    );
    let bytes = std::fs::read(&ok).unwrap();
    let c = runner::weights::pth::open(&ok, &bytes).unwrap();
    // strides (1, 2): the transpose of [[1.5, -2], [0.25, 8]]
    assert_eq!(
        c.f32("b").unwrap(),
        Some((vec![2, 2], vec![1.5, 0.25, -2.0, 8.0]))
    );
}

/// Exit 2 with one paragraph naming `file`, no panic, no signal, nothing on stdout.
fn refused_naming(out: &std::process::Output, file: &str, what: &str) {
    assert!(
        out.status.code().is_some(),
        "{what}: killed by a signal ({:?})",
        out.status
    );
    assert_clean_failure(out, &[file]);
    assert_eq!(out.status.code(), Some(2), "{what}: exit 2");
}

fn gz(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Hostile inputs, one per reader, each through the subcommands that read it (issue 29):
/// weights files of every format through `weights inspect`, `weights convert` and `run`;
/// datasets (IDX plain and gzip, each image format in a folder, a GTSRB annotation file)
/// through `run` and `extract`; images through `predict`; a spec through `check`. Every one is
/// refused with exit 2 and one paragraph naming the file, before memory is taken; a damaged
/// cache entry is recomputed with a warning naming it.
#[test]
fn a_hostile_input_for_every_reader_is_refused_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let huge_npy = {
        // an npy header claiming 10^12 float32 values over 16 bytes
        let mut h = b"\x93NUMPY\x01\x00".to_vec();
        let dict = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }";
        let mut text = dict.to_vec();
        while !(10 + text.len() + 1).is_multiple_of(64) {
            text.push(b' ');
        }
        text.push(b'\n');
        h.extend((text.len() as u16).to_le_bytes());
        h.extend(text);
        h.extend([0u8; 16]);
        h
    };
    let npz = {
        use std::io::Write;
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let o = zip::write::SimpleFileOptions::default();
        z.start_file("conv1/W.npy", o).unwrap();
        z.write_all(&huge_npy).unwrap();
        z.finish().unwrap().into_inner()
    };
    // pickle: BINBYTES8 claiming 2^60 bytes
    let mut pickle = b"\x80\x04\x8e".to_vec();
    pickle.extend((1u64 << 60).to_le_bytes());
    // safetensors: a header length beyond the file
    let mut safet = (1u64 << 40).to_le_bytes().to_vec();
    safet.extend(b"{\"a\":1}");
    // legacy .pth: the magic number, then a truncated protocol version
    let mut legacy = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
    legacy.extend(b"\x80\x02M\xe9");
    // ONNX: field 1 (ir_version), then a graph field claiming 2^40 bytes
    let mut onnx = vec![0x08, 0x07, 0x3a];
    onnx.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x20]);
    onnx.extend([0u8; 16]);
    let evil_zip_pth = {
        let p = dir.join("evil-src.pth");
        pth_zip(&p, b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.", &[]);
        std::fs::read(&p).unwrap()
    };
    let weights: [(&str, Vec<u8>); 7] = [
        ("w.npy", huge_npy.clone()),
        ("w.npz", npz),
        ("w.pkl", pickle),
        ("w.safetensors", safet),
        ("w.pth", evil_zip_pth),
        ("legacy.pth", legacy),
        ("w.onnx", onnx),
    ];
    for (name, bytes) in &weights {
        std::fs::write(dir.join(name), bytes).unwrap();
        let out = run_in(dir, &["weights", "inspect", name]);
        refused_naming(&out, name, &format!("weights inspect {name}"));
        assert!(out.stdout.is_empty());
        let out = run_in(dir, &["weights", "convert", name, "out.safetensors"]);
        refused_naming(&out, name, &format!("weights convert {name}"));
        std::fs::write(
            dir.join("w.toml"),
            format!("[backbone]\nweights = {name:?}\n[dataset]\nkind = \"synthetic\"\nper_class = 1\n[run]\ndevice = \"cpu\"\n"),
        )
        .unwrap();
        let out = run_in(dir, &["run", "w.toml"]);
        refused_naming(&out, name, &format!("run with {name}"));
    }

    // datasets
    let idx_lie = {
        // 10^9 images of 28x28 claimed, 784 bytes present
        let mut b = vec![0, 0, 8, 3];
        for v in [1_000_000_000u32, 28, 28] {
            b.extend(v.to_be_bytes());
        }
        b.extend([0u8; 784]);
        b
    };
    let labels = {
        let mut b = vec![0, 0, 8, 1];
        b.extend(1_000_000_000u32.to_be_bytes());
        b.push(0);
        b
    };
    std::fs::write(dir.join("a-images-idx3-ubyte"), &idx_lie).unwrap();
    std::fs::write(dir.join("a-labels-idx1-ubyte"), &labels).unwrap();
    std::fs::write(dir.join("b-images-idx3-ubyte.gz"), gz(&idx_lie)).unwrap();
    std::fs::write(dir.join("b-labels-idx1-ubyte.gz"), gz(&labels)).unwrap();
    for file in ["a-images-idx3-ubyte", "b-images-idx3-ubyte.gz"] {
        std::fs::write(
            dir.join("i.toml"),
            format!("[backbone]\nweights = \"random\"\n[dataset]\nkind = \"idx\"\npath = {file:?}\n[run]\ndevice = \"cpu\"\n"),
        )
        .unwrap();
        for cmd in [
            vec!["run", "i.toml"],
            vec!["extract", "i.toml", "--out", "f.npz"],
        ] {
            let out = run_in(dir, &cmd);
            refused_naming(&out, file, &format!("{cmd:?} on {file}"));
        }
    }
    // every image format, damaged, in a folder dataset (decoding errors are not skipped by
    // default) and given to predict
    let images: [(&str, &[u8]); 6] = [
        ("x.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x7f\xff\xff\xff\x7f\xff\xff\xff\x08\x02"),
        ("x.jpg", b"\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff\x03"),
        ("x.gif", b"GIF89a\xff\xff\xff\xff\x00\x00\x00"),
        ("x.bmp", b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00\xff\xff\xff\x7f\xff\xff\xff\x7f\x01\x00\x18\x00"),
        ("x.ppm", b"P6\n99999 99999\n255\n\x00\x00"),
        ("x.jpeg", b"not an image at all"),
    ];
    for (name, bytes) in images {
        let root = dir.join(format!("folder-{name}"));
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(root.join("b")).unwrap();
        std::fs::write(root.join("a").join(name), bytes).unwrap();
        std::fs::write(root.join("b").join(name), bytes).unwrap();
        std::fs::write(
            dir.join("f.toml"),
            format!(
                "[backbone]\nweights = \"random\"\n[dataset]\nkind = \"folder\"\npath = {:?}\nval_fraction = 0.5\n[run]\ndevice = \"cpu\"\n",
                root.display()
            ),
        )
        .unwrap();
        let out = run_in(dir, &["run", "f.toml"]);
        refused_naming(&out, name, &format!("run over a folder with {name}"));
    }
    // a GTSRB annotation file with a row of the wrong shape
    let g = dir.join("G/Final_Training/Images/00000");
    std::fs::create_dir_all(&g).unwrap();
    std::fs::write(
        g.join("GT-00000.csv"),
        "Filename;Width\n\u{0}\u{0};-1;99999999999999999999\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("g.toml"),
        "[backbone]\nweights = \"random\"\n[dataset]\nkind = \"gtsrb\"\npath = \"G\"\n[run]\ndevice = \"cpu\"\n",
    )
    .unwrap();
    let out = run_in(dir, &["run", "g.toml"]);
    refused_naming(&out, "GT-00000.csv", "run over a GTSRB tree");
    // predict with a finished run's head: a damaged image is named
    std::fs::write(
        dir.join("ok.toml"),
        "name = \"ok\"\n[backbone]\nweights = \"random\"\noutput = \"pool1\"\npool = \"avg\"\ninput_size = 64\n[dataset]\nkind = \"synthetic\"\nper_class = 1\nval_fraction = 0.3\n[train]\nepochs = 1\n[run]\ndevice = \"cpu\"\n",
    )
    .unwrap();
    assert!(run_in(dir, &["-q", "run", "ok.toml"]).status.success());
    let run = std::fs::read_dir(dir.join("results/ok"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("summary.json").is_file())
        .unwrap();
    let run = run.to_string_lossy().to_string();
    for (name, _) in images {
        let img = dir.join(format!("folder-{name}/a/{name}"));
        let out = run_in(dir, &["predict", &run, &img.to_string_lossy()]);
        refused_naming(&out, name, &format!("predict {name}"));
    }
    // a spec that is not TOML
    std::fs::write(dir.join("bad.toml"), "[backbone\nweights = \u{0}").unwrap();
    let out = run_in(dir, &["check", "bad.toml"]);
    refused_naming(&out, "bad.toml", "check");
}
