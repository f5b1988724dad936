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

    /// An experiment file: validation, then sweep expansion.
    pub fn spec_text(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let path = Path::new("fuzz.toml");
        let _ = runner::spec::load_str(path, text, &[], Vec::<(String, String)>::new());
        let _ = runner::spec::sweep::expand_str(path, text, &[], Vec::new());
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
