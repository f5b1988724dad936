//! Which implementation each operation runs on, chosen once per run and carried as a value
//! (`Spec::backends`): layers, preprocessing and the training step receive it and read no
//! environment. `Backends::from_env` is the one place that reads the switches `RUNNER_CONV`
//! (CPU convolutions, for A/B benchmarks) and `RUNNER_GPU_FUSED` (the opt-in GPU paths).

/// How frozen f32 convolutions run on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvPath {
    /// runner's tiled direct kernel, Winograd F(2x2, 3x3) for 3x3 stride 1 with 16 or more
    /// input channels per group
    #[default]
    Auto,
    /// runner's direct kernel everywhere (`RUNNER_CONV=direct`)
    Direct,
    /// candle's convolution (`RUNNER_CONV=candle`)
    Candle,
}

/// The opt-in GPU paths, by the names `RUNNER_GPU_FUSED` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuPath {
    /// pinned, double-buffered uploads (`gpu::pinned`)
    Upload,
    /// preprocessing in one pass (`data::fused_input`)
    Resize,
    /// runner's own cuDNN convolutions, in a `cudnn` build (`gpu::conv`)
    Conv,
    /// LRN + max pooling in one pass (`gpu::fused`)
    LrnPool,
    /// the head step's softmax cross-entropy gradient in one kernel (`train::step`)
    Xent,
    /// the optimizer step in one kernel per parameter (`train::optim`)
    Optim,
    /// features copied back asynchronously into page-locked memory, handed on one batch later
    /// (`gpu::download_f32`, `features::Extractor::for_range`)
    Download,
}

impl GpuPath {
    pub const ALL: [GpuPath; 7] = [
        GpuPath::Upload,
        GpuPath::Resize,
        GpuPath::Conv,
        GpuPath::LrnPool,
        GpuPath::Xent,
        GpuPath::Optim,
        GpuPath::Download,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GpuPath::Upload => "upload",
            GpuPath::Resize => "resize",
            GpuPath::Conv => "conv",
            GpuPath::LrnPool => "lrn",
            GpuPath::Xent => "xent",
            GpuPath::Optim => "optim",
            GpuPath::Download => "download",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// `RUNNER_GPU_FUSED`'s value: `1` or `all` for every path, `0` or nothing for none, or names
/// separated by commas (`conv,lrn`), so that one path can be checked or timed alone.
pub fn parse_gpu_paths(v: &str) -> std::result::Result<Vec<GpuPath>, String> {
    match v.trim() {
        "" | "0" => return Ok(Vec::new()),
        "1" | "all" => return Ok(GpuPath::ALL.to_vec()),
        _ => {}
    }
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match GpuPath::ALL.iter().find(|g| g.name() == part) {
            Some(g) if !out.contains(g) => out.push(*g),
            Some(_) => {}
            None => {
                let names: Vec<_> = GpuPath::ALL.iter().map(|g| g.name()).collect();
                return Err(format!(
                    "RUNNER_GPU_FUSED: unknown path `{part}`; expected 1, all, 0, or some of {}",
                    names.join(", ")
                ));
            }
        }
    }
    Ok(out)
}

/// The implementations one run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backends {
    pub conv: ConvPath,
    /// The opt-in GPU paths that are on, one bit each.
    fused: u8,
}

impl Backends {
    /// From the switches' values (`RUNNER_CONV`, `RUNNER_GPU_FUSED`); an unknown
    /// `RUNNER_CONV` value is the default, an unknown path name is an error.
    pub fn parse(conv: Option<&str>, fused: Option<&str>) -> std::result::Result<Backends, String> {
        let conv = match conv {
            Some("candle") => ConvPath::Candle,
            Some("direct") => ConvPath::Direct,
            _ => ConvPath::Auto,
        };
        let paths = parse_gpu_paths(fused.unwrap_or(""))?;
        Ok(Backends {
            conv,
            fused: paths.iter().fold(0, |acc, p| acc | p.bit()),
        })
    }

    /// The switches as this process's environment sets them: the one place they are read
    /// (once per process; a bad `RUNNER_GPU_FUSED` turns no path on, and says why once). The
    /// opt-in GPU paths stay off by default until `scripts/gpu-check.sh` has passed with them on
    /// a GPU.
    pub fn from_env() -> Backends {
        static ONCE: std::sync::OnceLock<Backends> = std::sync::OnceLock::new();
        *ONCE.get_or_init(|| {
            let conv = std::env::var("RUNNER_CONV").ok();
            let fused = std::env::var("RUNNER_GPU_FUSED").ok();
            Backends::parse(conv.as_deref(), fused.as_deref()).unwrap_or_else(|e| {
                tracing::error!("{e}; no opt-in GPU path is on");
                Backends::parse(conv.as_deref(), None).unwrap_or_default()
            })
        })
    }

    /// Whether the opt-in GPU path `p` is on.
    pub fn fused(&self, p: GpuPath) -> bool {
        self.fused & p.bit() != 0
    }

    /// The opt-in GPU paths that are on, in `GpuPath::ALL`'s order.
    pub fn fused_paths(&self) -> Vec<GpuPath> {
        GpuPath::ALL
            .into_iter()
            .filter(|p| self.fused(*p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_parse_into_one_value() {
        let b = Backends::parse(Some("direct"), Some("conv, lrn")).unwrap();
        assert_eq!(b.conv, ConvPath::Direct);
        assert_eq!(b.fused_paths(), vec![GpuPath::Conv, GpuPath::LrnPool]);
        assert!(b.fused(GpuPath::LrnPool) && !b.fused(GpuPath::Optim));
        let all = Backends::parse(Some("candle"), Some("1")).unwrap();
        assert_eq!((all.conv, all.fused_paths().len()), (ConvPath::Candle, 7));
        let none = Backends::parse(None, Some("0")).unwrap();
        assert_eq!(none, Backends::default());
        assert!(Backends::parse(None, Some("conv,warp"))
            .unwrap_err()
            .contains("warp"));
    }
}
