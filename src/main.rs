//! maskflow: a folder of labelled images → a deployable CNN classifier, as a chain of reproducible,
//! cached pipeline stages. See README.md.

mod fanout_cmd;
mod detect_cmd;
mod predict_cmd;
mod ranks_cmd;
mod runner;
mod runs_cmd;
mod session;
mod weights_cmd;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use maskflow_core::alloc;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "maskflow",
    version,
    about = "Folder of labelled images → deployable CNN classifier, as reproducible cached pipeline stages",
    long_about = "maskflow runs the stages of an image-classification pipeline (index → prep → train → eval → export, or any \
graph of named instances of them) declared in a TOML pipeline file. Each stage's output is stored under artifacts/<stage>/<key>/, where the key is a \
hash of the stage's parameters, its version and its inputs: a stage whose key exists and verifies is \
skipped (\"cached\"), so nothing is recomputed unless its inputs changed.\n\n\
Typical use:\n  maskflow run pipelines/demo.toml       run every stage (cached ones are skipped)\n  \
maskflow status pipelines/demo.toml    which stages are cached, stale (and why) or missing\n  \
maskflow graph pipelines/demo.toml     the declared graph with keys and states (--dot for Graphviz)\n  \
maskflow run pipelines/demo.toml -S train.frozen_lr=1e-3   a variant, keyed as if written in the file\n  \
maskflow run pipelines/demo.toml --sweep lr --jobs 2       the file's [sweep.lr], points side by side\n  \
maskflow runs demo                     the runs: params that differ, metrics (--html: runs.html)\n  \
maskflow diff RUN_A RUN_B              two runs' params, metrics and differing stages\n  \
maskflow stage eval --input model=DIR --input data=DIR --out DIR   one stage kind alone\n  \
maskflow synth --out data/synth        write the synthetic demo dataset"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline file's stages (its graph, upstream first), reusing cached artifacts.
    Run {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// The artifact store.
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        /// Rebuild even when cached: every stage (no value or `all`), an instance (`train.resnet`) or
        /// every instance of a kind (`prep`).
        #[arg(long, num_args = 0..=1, default_missing_value = "all", value_name = "STAGE")]
        force: Option<String>,
        /// Run only this instance (or every instance of this kind) and what it needs.
        #[arg(long, value_name = "STAGE")]
        until: Option<String>,
        #[command(flatten)]
        vary: VaryArgs,
        /// Build up to N instances at once, each as soon as its inputs are ready (e.g. a sweep's
        /// trainings), each in its own process (libtorch's random generator and thread count are
        /// per process: so each stays repeatable). Each uses --threads threads (give N × threads ≤
        /// cores) and its own memory (a training of the real data peaks near 6 GB in bf16-mixed:
        /// see --job-memory). Never part of a key.
        #[arg(long, value_name = "N", default_value_t = 1)]
        jobs: usize,
        /// With --jobs: the memory one instance may need, in GB. A second or later instance starts
        /// only while the machine has this much available (MemAvailable); one always runs.
        #[arg(long, value_name = "GB", default_value_t = 4.0)]
        job_memory: f64,
        #[command(flatten)]
        compute: ComputeArgs,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        fanout: fanout_cmd::FanoutArgs,
        /// Train with N data-parallel ranks on this machine: this process is rank 0 and starts the
        /// others (give each its share with --threads). Sets every train instance's `world_size`
        /// (part of its key). Under torchrun (`torchrun --nproc-per-node N --no-python maskflow
        /// run …`) the ranks come from its environment instead.
        #[arg(long, value_name = "N")]
        world_size: Option<usize>,
    },
    /// One instance of a pipeline built for `run --jobs N` in its own process, its inputs cached
    /// (not for direct use): no run record; prints only that instance's lines.
    #[command(hide = true)]
    BuildInstance {
        pipeline: PathBuf,
        #[arg(long)]
        instance: String,
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        #[command(flatten)]
        vary: VaryArgs,
        #[command(flatten)]
        compute: ComputeArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// A data-parallel rank started by `run --world-size` (not for direct use).
    #[command(hide = true)]
    RankWorker {
        #[arg(long)]
        rendezvous_file: PathBuf,
        #[arg(long)]
        rank: usize,
        #[arg(long)]
        world_size: usize,
        #[command(flatten)]
        compute: ComputeArgs,
    },
    /// Plan a splittable stage (index, prep) of a pipeline as tasks in the shared store, for an
    /// executor of your own (a Slurm array, a Kubernetes Indexed Job): prints the plan's URL and
    /// task count. Its inputs must be published. Then `maskflow task` for each index, then
    /// `maskflow commit`. (`maskflow run --executor local|ray` does all three.)
    Plan {
        pipeline: PathBuf,
        /// The instance to plan (`index`, `prep`, `prep.street`).
        #[arg(long, value_name = "STAGE")]
        stage: String,
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// About how many items (files, images) one task takes (never part of a key).
        #[arg(long, value_name = "N")]
        task_items: Option<usize>,
        /// One JSON object ({instance, key, plan, tasks, done, created} or {committed: true}).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        compute: ComputeArgs,
    },
    /// Run one task of a plan (idempotent: a task already done, or of a committed plan, does
    /// nothing; one killed midway is simply run again). The index comes from --index, else
    /// $SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX.
    Task {
        /// The plan's URL, as `maskflow plan` prints it (<store URL>/plans/<kind>/<key>).
        #[arg(long)]
        plan: String,
        /// The task's index, 0-based (default: $SLURM_ARRAY_TASK_ID, else $JOB_COMPLETION_INDEX).
        #[arg(long)]
        index: Option<usize>,
        /// This machine's local store (inputs are pulled into it).
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        /// The labelled folder on this machine, when not at the path the planning machine had.
        #[arg(long, value_name = "DIR")]
        dataset_root: Option<PathBuf>,
        /// No progress bars (one line at the end).
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        compute: ComputeArgs,
    },
    /// Commit a plan whose tasks are all done: the artifact's remaining files and its manifest,
    /// create-only — the artifact a single machine would have made, under the same key.
    Commit {
        #[arg(long)]
        plan: String,
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        #[arg(long, value_name = "DIR")]
        dataset_root: Option<PathBuf>,
        #[command(flatten)]
        compute: ComputeArgs,
    },
    /// List suspected label problems of a pipeline's data for a human to decide on: groups of copies
    /// labelled differently, and images whose label out-of-fold probes (k linear models on the
    /// pretrained body's features, folds by duplicate group) find unlikely. Writes review.csv,
    /// review.html (thumbnails, given vs suspected label, evidence) and overrides-draft.csv (to
    /// uncomment and name in `[dataset] overrides`). A cached stage (`[review]` params, or defaults).
    Review {
        pipeline: PathBuf,
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        #[command(flatten)]
        compute: ComputeArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Upload this machine's artifacts of a pipeline to the shared store (those it lacks).
    Push(ShareArgs),
    /// Download a pipeline's published artifacts from the shared store into the local one (each
    /// blob checked), without running anything.
    Pull(ShareArgs),
    /// Collect garbage in the shared store: blobs no manifest (or live checkpoint) references and
    /// older than the grace period; with --keep-runs N, also artifacts that no pipeline's last N
    /// run records name. Dry run unless --apply.
    Gc {
        #[command(flatten)]
        store: StoreArgs,
        /// Nothing younger than this is deleted (s, m, h or d suffix; e.g. 30m, 24h).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        grace: std::time::Duration,
        /// Keep only the artifacts named by each pipeline's newest N run records (and young ones);
        /// older run records beyond those N go too.
        #[arg(long, value_name = "N")]
        keep_runs: Option<usize>,
        /// A fan-out plan not committed within this long is abandoned: its plan, task files and
        /// records go (and so do publish intents this old, left by processes that died).
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        plan_ttl: std::time::Duration,
        /// Delete what would be swept (otherwise only report it). Takes the store's gc lock:
        /// publishers wait while it runs, so nothing they reuse is swept under them.
        #[arg(long)]
        apply: bool,
    },
    /// Print the pipeline's graph: every instance with its kind, key, state (cached / stale /
    /// missing / corrupt) and inputs. Runs nothing (but generates a [dataset.synth] folder).
    Graph {
        pipeline: PathBuf,
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        /// Graphviz DOT instead of text (`maskflow graph FILE --dot | dot -Tpng > graph.png`).
        #[arg(long)]
        dot: bool,
        #[command(flatten)]
        vary: VaryArgs,
    },
    /// The runs of a pipeline (every pipeline without one) as a table: when, commit (+dirty),
    /// which instances were built or cached, the params that differ between the runs listed, and
    /// the headline metrics (eval accuracy, log loss, mean corruption accuracy; train seconds). A
    /// sweep's run is a row per point. Filter and sort by any metric or param; --html writes
    /// runs.html (curves overlaid, confusion matrices side by side, links to each report).
    Runs {
        /// A pipeline file, or a pipeline's name (artifacts/runs/<name>/).
        pipeline: Option<String>,
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        /// Keep the runs where NAME OP VALUE holds (OP: < <= > >= = !=), e.g. eval.accuracy>=0.95 or
        /// train.frozen_lr=0.003 (repeat: all must hold).
        #[arg(long, value_name = "NAME OP VALUE")]
        filter: Vec<String>,
        /// Order by a metric or param (ascending; --desc for descending) instead of time.
        #[arg(long, value_name = "NAME")]
        sort: Option<String>,
        #[arg(long)]
        desc: bool,
        /// Only the last N rows (after filter and sort).
        #[arg(long, value_name = "N")]
        last: Option<usize>,
        /// Every row as one JSON object per line (all params and metrics).
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// The table as CSV.
        #[arg(long)]
        csv: bool,
        /// Also write the runs page (default: artifacts/runs/<pipeline>/runs.html, or
        /// artifacts/runs/runs.html for every pipeline).
        #[arg(long, num_args = 0..=1, value_name = "PATH")]
        html: Option<Option<PathBuf>>,
    },
    /// Compare two runs, or two points of a sweep, as `dvc params diff` and `dvc metrics diff` do:
    /// the params that differ, the metrics with deltas, and which instances made different
    /// artifacts and why (a param, an input from another instance, the dataset, the stage's
    /// version). A run is its id from `maskflow runs` or a unique part of it (`150102Z/lr-2`), or
    /// `latest`.
    Diff {
        a: String,
        b: String,
        /// Only the runs of this pipeline (a file or a name).
        #[arg(long)]
        pipeline: Option<String>,
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        /// The diff as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Run one stage kind on artifact folders, outside any pipeline: e.g.
    /// `maskflow stage eval --input model=DIR --input data=DIR --out DIR`. Its params come from
    /// --params (a TOML file holding the kind's table, without the [KIND] header) or the defaults.
    Stage {
        /// The stage kind (index, prep, train, eval, export).
        kind: String,
        /// An input artifact: SLOT=DIR (repeat for each slot).
        #[arg(long = "input", value_name = "SLOT=DIR")]
        inputs: Vec<String>,
        /// The labelled folder, for kinds that read one (index).
        #[arg(long)]
        dataset: Option<PathBuf>,
        /// The kind's params as a TOML file.
        #[arg(long)]
        params: Option<PathBuf>,
        /// Output folder (created; must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Where imported pretrained weights are kept.
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        #[command(flatten)]
        compute: ComputeArgs,
    },
    /// Evaluate the pipeline's model (trained first if needed) on every good image of a labelled
    /// folder: the same as adding `[eval.NAME] data = "FOLDER"` to the file. The folder is indexed
    /// and prepped with the pipeline's parameters; metrics, confusion matrices, top losses and
    /// report.html are written (all cached like stages).
    Eval {
        pipeline: PathBuf,
        /// A labelled folder (one sub-folder per class; class names must be among the model's).
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        #[command(flatten)]
        compute: ComputeArgs,
    },
    /// Classify images with an exported bundle (artifacts/export/<key>/): files, folders (recursive)
    /// and globs, through the same decode/resize code as training. A bad file gets its own line with
    /// the reason and the rest go on; the exit code is 2 when any input failed.
    Predict {
        #[command(flatten)]
        classify: ClassifyArgs,
        /// Image files, folders or glob patterns.
        #[arg(required = true)]
        inputs: Vec<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: predict_cmd::Format,
        /// Test-time augmentation: none, flip (the image and its mirror, 2 passes) or fastai
        /// (fastai's TTA(): 0.4 × plain + 0.6 × mean of 4 corner zooms × mirror, 9 passes).
        #[arg(long, value_enum, default_value = "none")]
        tta: TtaArg,
        #[command(flatten)]
        compute: ComputeArgs,
    },
    /// Find faces in whole photos (--detector: the face-mask SSD, or MTCNN; by default the bundle's
    /// own fine-tuned detector if it ships one, else the SSD), cut each out with a
    /// margin, classify it with an exported bundle (its own resize and crop), and write into --out
    /// per photo NAME.json (each face: box, detector score, MTCNN's five landmarks or the SSD's own
    /// mask scores, label, probabilities) and
    /// NAME.annotated.jpg (boxes coloured by class, label and probability), plus detections.jsonl
    /// with every photo. A photo with no face says so; a bad file gets its reason and the rest go on;
    /// the exit code is 2 when any input failed.
    Detect {
        #[command(flatten)]
        classify: ClassifyArgs,
        /// Photo files, folders (recursive) or glob patterns.
        #[arg(required = true)]
        inputs: Vec<String>,
        /// Output folder for the JSON files and annotated photos.
        #[arg(long, default_value = "detections")]
        out: PathBuf,
        /// The store whose weights/ holds (or receives) the imported detector weights.
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        /// Context around each face box given to the classifier, per side, as a fraction of the
        /// box's longer side (default 0: the face-mask pictures are about the size of the box).
        #[arg(long, default_value_t = maskflow_predict::detect::DEFAULT_MARGIN)]
        margin: f32,
        #[command(flatten)]
        detector: DetectorArgs,
        /// Write no annotated copies (JSON only).
        #[arg(long)]
        no_annotate: bool,
        /// Print each photo's JSON record on stdout instead of a summary line.
        #[arg(long)]
        jsonl: bool,
        /// Who labels each face: the bundle's classifier (default), or the SSD's own mask scores
        /// (`detector`: no classifier runs; the bundle still names the classes and may carry the
        /// detector).
        #[arg(long, default_value = "classifier", value_parser = ["classifier", "detector"])]
        labels: String,
        /// Photos of one size per detector batch (default: 8 for MTCNN, whose pyramid levels run
        /// once per batch; 1 for the SSD, whose memory grows with the batch and speed does not).
        #[arg(long, value_name = "N")]
        group: Option<usize>,
        #[command(flatten)]
        compute: ComputeArgs,
    },
    /// Run fastai's learning-rate finder on a pipeline's data and model (index and prep run first,
    /// cached): writes lr_find.csv and lr_find.png with the suggestions marked.
    LrFind {
        pipeline: PathBuf,
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        /// Output folder for the CSV and the plot.
        #[arg(long, default_value = "artifacts/lr_find")]
        out: PathBuf,
        #[command(flatten)]
        compute: ComputeArgs,
    },
    /// Tell, without running any stage, which stages are cached, stale (and why) or missing (a
    /// [dataset.synth] folder is generated first, as run and graph do: keys need its fingerprint).
    Status {
        pipeline: PathBuf,
        #[arg(long, default_value = "artifacts")]
        artifacts: PathBuf,
        /// With a shared store, each stage also says whether it is shared, or being built and by whom.
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        vary: VaryArgs,
    },
    /// Write a deterministic synthetic dataset of drawn faces with and without masks.
    Synth {
        /// Output folder (class sub-folders are created in it).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Images drawn per class (duplicates and bad files come on top).
        #[arg(long, default_value_t = 150)]
        per_class: usize,
        /// Leave out the planted bad files.
        #[arg(long)]
        no_bad_files: bool,
    },
    /// Pretrained weights: list the registry, import a checkpoint into safetensors, verify imports.
    Weights {
        #[command(subcommand)]
        action: WeightsAction,
        /// The artifact store (imports go to <artifacts>/weights/<sha256>/).
        #[arg(long, default_value = "artifacts", global = true)]
        artifacts: PathBuf,
    },
    /// List the stage kinds this binary knows: name, code version, the artifact kind each writes,
    /// and its input slots.
    Stages {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the toolchain: libtorch, threads, CUDA, allocator settings.
    Info,
}

/// Where training and inference run.
#[derive(clap::Args, Clone)]
pub struct ComputeArgs {
    /// cpu, cuda, cuda:N, or auto (CUDA when available).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Threads for libtorch and for the image work (decoding, resizing, hashing); not part of any
    /// key (default: all cores). Give each of several processes sharing a machine its share.
    #[arg(long, env = "MASKFLOW_THREADS")]
    threads: Option<usize>,
}

impl ComputeArgs {
    /// As command-line arguments again (for a child process).
    fn to_args(&self) -> Vec<String> {
        let mut a = vec!["--device".to_string(), self.device.clone()];
        if let Some(t) = self.threads {
            a.extend(["--threads".to_string(), t.to_string()]);
        }
        a
    }

    fn options(&self) -> Result<session::Compute> {
        let threads = self.threads.unwrap_or_else(rayon_threads);
        anyhow::ensure!(threads >= 1, "--threads must be at least 1");
        // This process's share of the machine for the image work too (libtorch's threads are set
        // per stage). The pool is built once per process: a second call changes nothing.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
        Ok(session::Compute { device: session::parse_device(&self.device)?, threads })
    }
}

/// A pipeline file varied without editing it.
#[derive(clap::Args, Clone)]
pub struct VaryArgs {
    /// Set a param as if it were written in the pipeline file, keyed and checked the same way:
    /// STAGE.PARAM=VALUE, or INSTANCE.PARAM (train.resnet.frozen_lr=1e-3), or a table's field
    /// (train.augment.flip=false). VALUE is TOML (1e-3, [1e-5, 1e-4], true, "text"; a bare word
    /// is a string). Repeat for more; recorded in the run record.
    #[arg(short = 'S', long = "set", value_name = "STAGE.PARAM=VALUE")]
    set: Vec<String>,
    /// Expand the file's [sweep.NAME] (lists of values per param, as a grid or a list) into
    /// named instances, one per point (train.NAME-1, eval.NAME-1, …), sharing every upstream
    /// artifact; run compares them at the end.
    #[arg(long, value_name = "NAME")]
    sweep: Option<String>,
}

impl VaryArgs {
    /// As command-line arguments again (for a child process).
    fn to_args(&self) -> Vec<String> {
        let mut a: Vec<String> = self.set.iter().flat_map(|s| ["-S".to_string(), s.clone()]).collect();
        if let Some(sw) = &self.sweep {
            a.extend(["--sweep".to_string(), sw.clone()]);
        }
        a
    }

    fn variation(&self) -> Result<maskflow_pipeline::variation::Variation> {
        let overrides = self.set.iter().map(|a| maskflow_pipeline::variation::Override::parse(a).map_err(anyhow::Error::msg)).collect::<Result<_>>()?;
        Ok(maskflow_pipeline::variation::Variation { overrides, sweep: self.sweep.clone() })
    }
}

/// A bundle and its decision rule (predict, detect).
#[derive(clap::Args)]
struct ClassifyArgs {
    /// The bundle directory (model.pt, model_card.json).
    #[arg(long)]
    bundle: PathBuf,
    /// Label an image (detect: a face) with the positive class when its probability is at least this.
    #[arg(long)]
    threshold: Option<f64>,
    /// The positive class for --threshold (default: the last class).
    #[arg(long)]
    positive: Option<String>,
    /// Images (detect: faces) per classifier forward pass. Default: predict 64; detect 16 (faces of
    /// whole photos: the same speed as 64 at a third of the peak memory, docs/BENCHMARKS.md).
    #[arg(long)]
    batch: Option<usize>,
}

impl ClassifyArgs {
    fn classifier(&self, compute: &ComputeArgs, default_batch: usize) -> Result<predict_cmd::Classifier<'_>> {
        Ok(predict_cmd::Classifier {
            bundle: &self.bundle,
            threshold: self.threshold,
            positive: self.positive.as_deref(),
            batch: self.batch.unwrap_or(default_batch).max(1),
            compute: compute.options()?,
        })
    }
}

/// The face detector and its knobs (each detector's published defaults).
#[derive(clap::Args)]
struct DetectorArgs {
    /// ssd: AIZOOTech's face-mask SSD-lite at 360² (trained on faces with and without masks;
    /// weights shipped in third_party/); ssd260: the same at 260²; mtcnn: MTCNN (facenet-pytorch's
    /// nets, trained on faces without masks; gives five landmarks). docs/DETECT.md has the figures.
    /// Default: the bundle's own fine-tuned detector when it has one (`dettrain` + `export`), else ssd.
    #[arg(long, value_parser = ["ssd", "ssd260", "mtcnn"])]
    detector: Option<String>,
    /// SSD: boxes whose larger class score is at most this are dropped (the repository's 0.5).
    #[arg(long, default_value_t = 0.5)]
    conf_threshold: f32,
    /// SSD: NMS IoU threshold (the repository's 0.4).
    #[arg(long, default_value_t = 0.4)]
    iou_threshold: f32,
    /// MTCNN: smallest face searched for, in pixels (facenet-pytorch: 20).
    #[arg(long, default_value_t = 20.0)]
    min_face_size: f64,
    /// MTCNN: the P-, R- and O-Net score thresholds (facenet-pytorch: 0.6,0.7,0.7).
    #[arg(long, value_delimiter = ',', num_args = 1, default_values_t = [0.6, 0.7, 0.7])]
    thresholds: Vec<f64>,
    /// MTCNN: scale step of the image pyramid (facenet-pytorch: 0.709).
    #[arg(long, default_value_t = 0.709)]
    factor: f64,
}

impl DetectorArgs {
    fn params(&self) -> Result<maskflow_models::detector::DetectorParams> {
        let [t1, t2, t3] = self.thresholds[..] else {
            anyhow::bail!("--thresholds takes three values (P-, R-, O-Net), got {}", self.thresholds.len());
        };
        let p = maskflow_models::detector::DetectorParams {
            kind: self.detector.as_deref().unwrap_or("ssd").parse().map_err(anyhow::Error::msg)?,
            min_face_size: self.min_face_size,
            thresholds: [t1, t2, t3],
            factor: self.factor,
            conf_threshold: self.conf_threshold,
            iou_threshold: self.iou_threshold,
        };
        p.validate().map_err(|e| anyhow::anyhow!("detector: {e}"))?;
        Ok(p)
    }
}

#[derive(Subcommand)]
enum WeightsAction {
    /// The known weights, and whether each is imported or where its source was found.
    List,
    /// Find NAME's checkpoint (--from, the torch hub cache, or a Python package in the project .venv),
    /// check its sha256, read it (legacy or zip torch.save format, no Python) and write
    /// model.safetensors. Cached by the source's sha256.
    Import {
        /// A registry name: mobilenet_v2, resnet18, resnet34, resnet50, mtcnn_pnet, mtcnn_rnet, mtcnn_onet, ssd360, ssd260.
        name: String,
        /// The checkpoint file to use instead of searching.
        #[arg(long, value_name = "PATH")]
        from: Option<PathBuf>,
    },
    /// Re-hash every imported safetensors file (and its source, when still present).
    Verify,
}

/// What `push` and `pull` take.
#[derive(clap::Args)]
struct ShareArgs {
    /// The pipeline file (TOML).
    pipeline: PathBuf,
    /// The local store.
    #[arg(long, default_value = "artifacts")]
    artifacts: PathBuf,
    /// Only this instance (or kind) and what it needs.
    #[arg(long, value_name = "STAGE")]
    until: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

/// A shared store: the local --artifacts folder then caches it.
#[derive(clap::Args, Clone)]
pub struct StoreArgs {
    /// Shared store the local artifacts cache: s3://bucket/prefix (endpoint, region and credentials
    /// from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or
    /// file:///shared/path. Published artifacts are pulled instead of rebuilt; what is built is
    /// published. s3:// needs a binary built with the `s3` feature (`maskflow info` says).
    #[arg(long = "store", env = "MASKFLOW_STORE", value_name = "URL")]
    url: Option<String>,
    /// Only read the shared store: pull, never publish, lease or checkpoint.
    #[arg(long)]
    read_only: bool,
    /// Seconds a build's lease on a key lasts unless renewed (it is renewed every third of that);
    /// another machine waits this long at most for a builder that died.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    lease_ttl: u64,
    /// Stop with an error when the shared store holds an artifact that a newer maskflow published
    /// (a record format this one cannot read). By default it is built here and not published over
    /// theirs; either way their record is never replaced or deleted.
    #[arg(long)]
    strict_versions: bool,
}

impl StoreArgs {
    /// As command-line arguments again (for a child process).
    fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(u) = &self.url {
            a.extend(["--store".to_string(), u.clone()]);
        }
        if self.read_only {
            a.push("--read-only".into());
        }
        a.extend(["--lease-ttl".to_string(), self.lease_ttl.to_string()]);
        if self.strict_versions {
            a.push("--strict-versions".into());
        }
        a
    }

    fn options(&self) -> session::StoreOptions {
        session::StoreOptions {
            url: self.url.clone(),
            read_only: self.read_only,
            lease_ttl: std::time::Duration::from_secs(self.lease_ttl.max(1)),
            strict_versions: self.strict_versions,
        }
    }
}

/// `90`, `90s`, `30m`, `24h`, `7d`.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a number with s, m, h or d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    Ok(std::time::Duration::from_secs(n * mult))
}

/// `--tta` of predict.
#[derive(Clone, Copy, clap::ValueEnum)]
enum TtaArg {
    None,
    Flip,
    Fastai,
}

impl From<TtaArg> for maskflow_predict::Tta {
    fn from(t: TtaArg) -> Self {
        match t {
            TtaArg::None => maskflow_predict::Tta::None,
            TtaArg::Flip => maskflow_predict::Tta::Flip,
            TtaArg::Fastai => maskflow_predict::Tta::Fastai,
        }
    }
}

fn main() {
    alloc::tune_malloc();
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { pipeline, artifacts, force, until, vary, jobs, job_memory, compute, store, fanout, world_size } => {
            let compute_args = compute.clone();
            let compute = compute.options()?;
            let variation = vary.variation()?;
            anyhow::ensure!(jobs >= 1, "--jobs must be at least 1");
            anyhow::ensure!(job_memory.is_finite() && job_memory >= 0.0, "--job-memory must be a number of GB (0: no check)");
            anyhow::ensure!(jobs == 1 || world_size.is_none(), "--jobs {jobs} with --world-size: the ranks train one instance at a time; use one or the other");
            anyhow::ensure!(jobs == 1 || fanout.executor.is_none(), "--jobs {jobs} with --executor: fan-out runs one instance's tasks at a time; use one or the other");
            let launcher = runner::ChildLauncher::new(&pipeline, &artifacts, &vary, &compute_args, &store);
            match ranks_cmd::role(world_size, &artifacts, &compute)? {
                ranks_cmd::Role::Worker { group } => ranks_cmd::work(group, &compute),
                role => {
                    let ranks = match &role {
                        ranks_cmd::Role::Root { group, world, .. } => Some((group.clone(), *world)),
                        _ => None,
                    };
                    let cmd = runner::RunCmd {
                        pipeline: &pipeline,
                        artifacts: &artifacts,
                        force: force.as_deref(),
                        until: until.as_deref(),
                        variation: &variation,
                        jobs,
                        job_memory: (job_memory > 0.0).then(|| (job_memory * 1e9) as u64),
                        launcher: &launcher,
                    };
                    let outcome = runner::run(&cmd, &compute, &store.options(), &fanout, ranks);
                    ranks_cmd::finish(role, outcome)
                }
            }
        }
        Command::BuildInstance { pipeline, instance, force, artifacts, vary, compute, store } => {
            runner::build_instance(&pipeline, &instance, force, &artifacts, &vary.variation()?, &compute.options()?, &store.options())
        }
        Command::RankWorker { rendezvous_file, rank, world_size, compute } => {
            ranks_cmd::rank_worker(&rendezvous_file, rank, world_size, &compute.options()?)
        }
        Command::Plan { pipeline, stage, artifacts, store, task_items, json, compute } => fanout_cmd::plan(
            &pipeline,
            &stage,
            &artifacts,
            &store.options(),
            &maskflow_pipeline::fanout::SplitHint { items_per_task: task_items },
            &compute.options()?,
            json,
        ),
        Command::Task { plan, index, artifacts, dataset_root, quiet, compute } => {
            fanout_cmd::task(&plan, index, &artifacts, dataset_root.as_deref(), &compute.options()?, quiet)
        }
        Command::Commit { plan, artifacts, dataset_root, compute } => {
            fanout_cmd::commit(&plan, &artifacts, dataset_root.as_deref(), &compute.options()?)
        }
        Command::Review { pipeline, artifacts, compute, store } => {
            runner::review(&pipeline, &artifacts, &compute.options()?, &store.options())
        }
        Command::Push(a) => runner::push_pull(&a.pipeline, &a.artifacts, a.until.as_deref(), &a.store.options(), true),
        Command::Pull(a) => runner::push_pull(&a.pipeline, &a.artifacts, a.until.as_deref(), &a.store.options(), false),
        Command::Gc { store, grace, keep_runs, plan_ttl, apply } => {
            runner::gc(&store.options(), &maskflow_remote::GcOptions { grace, keep_runs, plan_ttl, apply })
        }
        Command::Graph { pipeline, artifacts, dot, vary } => runner::graph(&pipeline, &artifacts, dot, &vary.variation()?),
        Command::Runs { pipeline, artifacts, filter, sort, desc, last, json, csv, html } => {
            let format = if json { runs_cmd::Format::Json } else if csv { runs_cmd::Format::Csv } else { runs_cmd::Format::Text };
            runs_cmd::runs(&runs_cmd::RunsArgs { pipeline: pipeline.as_deref(), artifacts: &artifacts, filters: &filter, sort, desc, last, format, html })
        }
        Command::Diff { a, b, pipeline, artifacts, json } => runs_cmd::diff(&artifacts, pipeline.as_deref(), &a, &b, json),
        Command::Stage { kind, inputs, dataset, params, out, artifacts, compute } => runner::stage_alone(
            &runner::StageArgs {
                kind: &kind,
                inputs: &inputs,
                dataset: dataset.as_deref(),
                params: params.as_deref(),
                artifacts: &artifacts,
                out: &out,
            },
            &compute.options()?,
        ),
        Command::Predict { classify, inputs, format, tta, compute } => {
            let bad = predict_cmd::run(&predict_cmd::Options {
                classifier: classify.classifier(&compute, 64)?,
                inputs: &inputs,
                format,
                tta: tta.into(),
            })?;
            if bad > 0 {
                std::process::exit(2);
            }
            Ok(())
        }
        Command::Detect { classify, inputs, out, artifacts, margin, detector, labels, no_annotate, jsonl, group, compute } => {
            let bad = detect_cmd::run(&detect_cmd::Options {
                classifier: classify.classifier(&compute, 16)?,
                inputs: &inputs,
                out: &out,
                artifacts: &artifacts,
                detector: detector.params()?,
                bundled_detector: detector.detector.is_none(),
                own_labels: labels == "detector",
                margin,
                annotate: !no_annotate,
                jsonl,
                group,
            })?;
            if bad > 0 {
                std::process::exit(2);
            }
            Ok(())
        }
        Command::Eval { pipeline, data, artifacts, compute } => {
            runner::eval_folder(&pipeline, &artifacts, &data, &compute.options()?)
        }
        Command::LrFind { pipeline, artifacts, out, compute } => {
            runner::lr_find(&pipeline, &artifacts, &compute.options()?, &out)
        }
        Command::Status { pipeline, artifacts, store, vary } => runner::status(&pipeline, &artifacts, &store.options(), &vary.variation()?),
        Command::Synth { out, seed, per_class, no_bad_files } => {
            let params =
                maskflow_synth::SynthParams { seed, per_class, bad_files: !no_bad_files, ..Default::default() };
            let s = maskflow_synth::generate(&params, &out).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "synth: {} files in {} ({} drawn, {} exact copies, {} near copies, {} bad files)",
                s.files,
                out.display(),
                s.images,
                s.exact_duplicates,
                s.near_duplicates,
                s.bad_files.len()
            );
            Ok(())
        }
        Command::Weights { action, artifacts } => match action {
            WeightsAction::List => weights_cmd::list(&artifacts),
            WeightsAction::Import { name, from } => weights_cmd::import(&name, from.as_deref(), &artifacts),
            WeightsAction::Verify => weights_cmd::verify(&artifacts),
        },
        Command::Stages { json } => runner::list_stages(json),
        Command::Info => {
            info();
            Ok(())
        }
    }
}

fn info() {
    println!("{}", maskflow_core::TOOL_VERSION);
    println!("libtorch: torch 2.13.0 via tch 0.26 (linked from the project venv)");
    println!("torch threads: {} intra-op, {} inter-op", tch::get_num_threads(), tch::get_num_interop_threads());
    println!("rayon threads: {}", rayon_threads());
    let backend = maskflow_core::cuda::load_backend();
    let cuda = tch::Cuda::is_available();
    println!(
        "cuda: {}",
        match (&backend, cuda) {
            (_, true) => format!("available, {} device(s)", tch::Cuda::device_count()),
            (Ok(()), false) => "not available (backend loaded, no device)".into(),
            (Err(e), false) => format!("not available ({e})"),
        }
    );
    println!("malloc: {}", alloc::describe());
    println!(
        "shared stores: file://{}",
        if maskflow_remote::S3_BUILT { ", s3:// (the `s3` feature)" } else { " only (built without the `s3` feature)" }
    );
    let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    println!("self-check: sum([1, 2, 3]) = {}", t.sum(tch::Kind::Float).double_value(&[]));
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
