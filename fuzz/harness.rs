// The fuzzed entry points, shared by the cargo-fuzz targets (fuzz/fuzz_targets/*.rs) and the
// corpus replay test (tests/fuzz_replay.rs), which `include!` this file. Each takes arbitrary
// bytes and must return without panicking, hanging or exhausting memory, whatever they hold.

#[allow(dead_code)]
mod harness {
    use std::path::{Path, PathBuf};

    use runner::weights::pickle::{unpickle, Limits};

    /// A scratch file for readers that take a path (one per process and name).
    fn scratch(name: &str, data: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("runner-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let p = dir.join(name);
        let _ = std::fs::write(&p, data);
        p
    }

    /// The safe unpickler, and the views the readers take of what it returns.
    pub fn unpickle_bytes(data: &[u8]) {
        if let Ok((v, _)) = unpickle(data, &Limits::default()) {
            let _ = v.type_name();
            let _ = v.as_str_dict();
            let _ = v.as_array();
            let _ = v.as_seq();
            let _ = v.as_text();
            let _ = v.unwrap_object_scalar();
        }
    }

    /// A `.npy` array and a `.npz` archive (both parsed from memory).
    pub fn npy_bytes(data: &[u8]) {
        let _ = runner::weights::npy::parse_npy(data, &Limits::default());
        let _ = runner::weights::npy::read_npz_from(std::io::Cursor::new(data), &Limits::default());
    }

    /// A weights file of any kind (pickled-dict `.npy`, `.npz`, `.safetensors`), through
    /// `runner weights inspect` and the AlexNet loader (sniffing, layout checks, conversion).
    pub fn weights_file(data: &[u8]) {
        let p = scratch("w.bin", data);
        let _ = runner::weights::inspect(&p);
        let _ = runner::weights::load(&p, runner::backbone::Arch::AlexNet);
    }

    /// A PyTorch checkpoint (zip or legacy `torch.save`): the pickle, every tensor's values,
    /// `weights inspect`, and the ResNet-18 loader (names, shapes, conversion).
    pub fn pth_bytes(data: &[u8]) {
        let p = scratch("w.pth", data);
        if let Ok(c) = runner::weights::pth::open(&p, data) {
            for n in c.names() {
                let _ = c.f32(&n);
            }
            let _ = c.infos();
        }
        let _ = runner::weights::inspect(&p);
        let _ = runner::weights::load(&p, runner::backbone::Arch::ResNet18);
    }

    /// An ONNX model: the protobuf reader, `weights inspect` and the VGG16 loader.
    pub fn onnx_bytes(data: &[u8]) {
        let p = scratch("w.onnx", data);
        let _ = runner::weights::onnx::inspect(&p, data);
        let _ = runner::weights::load(&p, runner::backbone::Arch::Vgg16);
    }

    /// IDX files: the first byte says where the images file ends and the labels file starts
    /// (as a share of the rest); each read plain and gzipped.
    pub fn idx_bytes(data: &[u8]) {
        let Some((&cut, rest)) = data.split_first() else {
            return;
        };
        let at = rest.len() * cut as usize / 255;
        let (images, labels) = rest.split_at(at);
        let gz = |b: &[u8]| {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = e.write_all(b);
            e.finish().unwrap_or_default()
        };
        for (im, lb) in [
            ("f-images-idx3-ubyte", "f-labels-idx1-ubyte"),
            ("g-images-idx3-ubyte.gz", "g-labels-idx1-ubyte.gz"),
        ] {
            let zipped = im.ends_with(".gz");
            let (i, l) = match zipped {
                true => (gz(images), gz(labels)),
                false => (images.to_vec(), labels.to_vec()),
            };
            let ip = scratch(im, &i);
            let lp = scratch(lb, &l);
            let _ = runner::data::idx::load(&ip, Some(&lp), None);
            let _ = runner::data::idx::load(&ip, None, Some(10));
        }
    }

    /// A feature-cache entry (header, checksum, shapes): opened, verified and read.
    pub fn cache_entry(data: &[u8]) {
        let digest = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let dir = scratch("cache/.keep", b"").parent().map(Path::to_path_buf);
        let Some(dir) = dir else { return };
        let cache = runner::cache::FeatureCache::new(&dir);
        let _ = std::fs::write(cache.path_for(digest), data);
        if let Ok(e) = cache.open(digest) {
            let _ = runner::cache::Features::Stored(e).to_host();
        }
    }

    /// An experiment file: validation, then sweep expansion.
    pub fn spec_text(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let path = Path::new("fuzz.toml");
        if let Ok(spec) = runner::spec::load_str(path, text, &[], Vec::<(String, String)>::new()) {
            // what a valid spec asks for is sized without overflow or allocation; one that
            // fits is built as far as sizes go: the head, and a small synthetic set
            let _ = runner::spec::budget::memory_needs(&spec);
            if runner::spec::budget::check_memory(&spec).is_ok() {
                size_checked_parts(&spec);
            }
        }
        let _ = runner::spec::sweep::expand_str(path, text, &[], Vec::new());
    }

    /// The parts of a run whose size a spec decides, where they are small enough for a fuzzer
    /// to build many times a second.
    fn size_checked_parts(spec: &runner::spec::Spec) {
        let total: u64 = runner::spec::budget::memory_needs(spec)
            .iter()
            .map(|n| n.bytes)
            .sum();
        if total > 64 << 20 {
            return;
        }
        let classes = spec.num_classes.unwrap_or(2);
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(spec.seed);
        let dev = candle_core::Device::Cpu;
        let _ = runner::train::head::Head::new(
            spec.head_input_dim(),
            classes,
            &spec.head,
            Some(1.0),
            &mut rng,
            &dev,
        );
        if spec.dataset_kind == runner::spec::DatasetKind::Synthetic && spec.per_class <= 2 {
            let _ = runner::data::synthetic::generate(spec.seed, spec.per_class);
        }
    }

    /// A GTSRB annotation CSV (`Filename;Width;Height;Roi.X1;...;ClassId`).
    pub fn gtsrb_csv(data: &[u8]) {
        let p = scratch("GT-00000.csv", data);
        let _ = runner::data::gtsrb::parse_annotations(&p, p.parent().unwrap_or(Path::new(".")));
    }

    /// An image file of any supported format.
    pub fn image_bytes(data: &[u8]) {
        let _ = runner::data::images::decode_bytes(data);
    }
}
