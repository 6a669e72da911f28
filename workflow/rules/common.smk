# Configuration, the sample sheet and the he2gene command lines (no rules here).

import csv
import hashlib
import json
import os
import re
import shlex
import struct


REPO = os.path.dirname(os.path.abspath(workflow.basedir))


def cfg(key, default=None):
    """A config value, with None / "" read as absent."""
    v = config.get(key, default)
    return default if v is None or v == "" else v


def fail(message):
    raise WorkflowError(f"he2gene workflow: {message}")


def absolute(path):
    """Paths handed to the CLI are absolute: `deno task` runs in the repository, not in the working directory."""
    return os.path.abspath(os.path.expanduser(str(path)))


def words(v):
    """A comma-separated string or a YAML list → list of stripped, non-empty strings."""
    items = v if isinstance(v, (list, tuple)) else str(v).split(",")
    return [str(x).strip() for x in items if str(x).strip()]


def flag(v):
    """A YAML / --config boolean (true, 1, yes)."""
    return v is True or str(v).strip().lower() in ("true", "1", "yes", "on")


def default_he2gene():
    """The compiled executable (`deno task compile` → ./he2gene) if present, else `deno task he2gene`."""
    exe = os.path.join(REPO, "he2gene")
    if os.path.isfile(exe) and os.access(exe, os.X_OK):
        return shlex.quote(exe)
    return f"deno task -q --config {shlex.quote(os.path.join(REPO, 'deno.json'))} he2gene"


HE2GENE = str(cfg("he2gene") or default_he2gene())
OUT = os.path.normpath(str(cfg("outdir", "results")))
TTA = str(cfg("tta", "tta"))
STAIN = str(cfg("stain", "none"))
TUNE = str(cfg("tune", "cached"))
BACKEND = cfg("backend")
THREADS = int(cfg("threads", 4))
if TTA not in ("single", "tta", "grid", "grid_tta"):
    fail(f"tta must be single, tta, grid or grid_tta, current value is {TTA}")
if STAIN not in ("none", "macenko", "reinhard"):
    fail(f"stain must be none, macenko or reinhard, current value is {STAIN}")
if STAIN == "reinhard" and not cfg("stain_ref"):
    fail("stain=reinhard needs stain_ref=IMAGE")
if TUNE not in ("cached", "auto", "off"):
    fail(f"tune must be cached, auto or off, current value is {TUNE}")
if BACKEND is not None and BACKEND not in ("vulkan", "gl", "metal", "dx12"):
    fail(f"backend must be vulkan, gl, metal or dx12, current value is {BACKEND}")

# The environment of every he2gene job: the WebGPU backend, when configured.
ENV = f"export HE2GENE_BACKEND={shlex.quote(BACKEND)}; " if BACKEND else ""

# Sbatch flags of GPU jobs: the slurm profile passes resources.slurm_extra to sbatch (Snakemake 8's slurm
# executor plugin reads the same resource).
GPU_FLAGS = str(cfg("slurm_gpu", "--gres=gpu:1"))


def gpu_resources(mem_mb, runtime):
    return dict(gpu=1, mem_mb=mem_mb, runtime=runtime, slurm_extra=GPU_FLAGS)


def cpu_resources(mem_mb, runtime):
    return dict(gpu=0, mem_mb=mem_mb, runtime=runtime, slurm_extra="")


def run_cli(log, command, template=True):
    """
    Shell lines that run `command` (he2gene's arguments) with its output in `log`; on failure the end of the
    log (the CLI's message) is repeated on stderr and the CLI's exit code kept. `template`: the text goes into
    a `shell:` directive, which Snakemake formats (`{input}`, `{log:q}`), so literal braces are doubled.
    """
    cli = f"{ENV}{HE2GENE}"
    fail_block = f'rc=$?; echo "he2gene failed (exit $rc); the end of its log:" >&2; tail -n 5 {log} >&2; exit $rc;'
    if template:
        cli = cli.replace("{", "{{").replace("}", "}}")
        return f"{cli} {command} > {log} 2>&1 || {{{{ {fail_block} }}}}"
    return f"{cli} {command} > {log} 2>&1 || {{ {fail_block} }}"


def out_path(*parts):
    """A path under the output folder (as Snakemake sees it: relative to the working directory if outdir is)."""
    return os.path.join(OUT, *parts)


# ------------------------------------------------------------------------------------------- the samples

SAMPLE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"


def read_sheet(path):
    """`sample<TAB>slide<TAB>spots` (spots empty: tile the tissue); paths relative to the sheet's folder."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
            header = rows[0].keys() if rows else []
    except OSError as e:
        fail(f"cannot read the sample sheet {path}: {e.strerror}")
    missing = [c for c in ("sample", "slide", "spots") if c not in header]
    if missing:
        fail(
            f"the sample sheet {path} needs the header sample, slide, spots (tab-separated); "
            f"missing: {', '.join(missing)}"
        )
    base = os.path.dirname(os.path.abspath(path))
    where = lambda p: os.path.normpath(os.path.join(base, os.path.expanduser(p)))
    samples = {}
    for i, r in enumerate(rows, start=2):
        name, slide, spots = ((r[k] or "").strip() for k in ("sample", "slide", "spots"))
        if not re.fullmatch(SAMPLE_NAME, name) or name in ("cohort", "cv"):
            fail(
                f"{path} line {i}: sample name {name!r} must be letters, digits, '.', '_' or '-' (not starting "
                f"with '.', '_' or '-') and not 'cohort' or 'cv' (the folders of the cohort and "
                f"cross-validation outputs)"
            )
        if name in samples:
            fail(f"{path} line {i}: sample {name} is listed twice")
        if not slide:
            fail(f"{path} line {i}: sample {name} has no slide")
        samples[name] = {"slide": where(slide), "spots": where(spots) if spots else None}
    if not samples:
        fail(f"the sample sheet {path} lists no samples")
    return samples


SAMPLES = read_sheet(absolute(config["samples"])) if cfg("samples") else {}
SPOT_SAMPLES = [s for s, v in SAMPLES.items() if v["spots"]]
TILE_SAMPLES = [s for s, v in SAMPLES.items() if not v["spots"]]


def one_of(names):
    """A wildcard regex matching exactly these names (none: matches nothing)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def safetensors_genes(path):
    """The target gene names in a safetensors checkpoint's metadata, or None."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            meta = json.loads(f.read(n)).get("__metadata__", {})
        return json.loads(meta["target_genes"])
    except (OSError, KeyError, ValueError, struct.error):
        return None


def default_genes():
    """The first two target genes: of target_genes=FILE, else the checkpoint's names, else the CLI's target_0, …"""
    if cfg("target_genes"):
        try:
            with open(absolute(cfg("target_genes"))) as f:
                names = [l.strip() for l in f if l.strip()]
            if names:
                return names[:2]
        except OSError:
            pass  # the CLI names the file when it cannot read it
    if cfg("weights") and str(cfg("weights")).endswith(".safetensors"):
        names = safetensors_genes(absolute(cfg("weights")))
        if names:
            return names[:2]
    return ["target_0", "target_1"]


# Genes of the gene maps and of the summary's mean expression.
GENES = words(cfg("genes", "")) or default_genes()


def predict_options():
    o = ["--tta", TTA, "--stain", STAIN, "--tune", TUNE, "--h5ad", "--quiet"]
    for key, opt in (("stain_ref", "--stain-ref"), ("target_genes", "--target-genes"), ("aux_genes", "--aux-genes")):
        if cfg(key):
            o += [opt, absolute(cfg(key))]
    if cfg("batch_size"):
        o += ["--batch-size", str(cfg("batch_size"))]
    return o


def mode_options(sample):
    """Where to predict: at the sample's spots (crop) or over its tissue (tiles; no aux CSV)."""
    if SAMPLES[sample]["spots"]:
        o = ["--spots", SAMPLES[sample]["spots"]]
        keys = (("crop_size", "--crop-size"), ("crop_um", "--crop-um"))
    else:
        o = ["--tile", "--no-aux-csv"]
        keys = (("tile_um", "--tile-um"), ("tile_px", "--tile-px"), ("min_tissue", "--min-tissue"), ("max_tiles", "--max-tiles"))
    for key, opt in keys:
        if cfg(key):
            o += [opt, str(cfg(key))]
    return o


def predict_args(sample):
    """The whole predict-slide command line of one sample (what a user would type by hand)."""
    s = SAMPLES[sample]
    args = ["predict-slide", s["slide"], *mode_options(sample), "--weights", absolute(config["weights"])]
    args += ["--out", absolute(out_path(sample)), *predict_options(), *shlex.split(str(cfg("predict_args", "")))]
    return " ".join(shlex.quote(a) for a in args)


# Per-sample outputs (the CLI writes them together, atomically, into OUT/{sample}/).
PRED = {
    "npz": out_path("{sample}", "predictions.npz"),
    "h5ad": out_path("{sample}", "predictions.h5ad"),
    "h5ad_aux": out_path("{sample}", "predictions_aux.h5ad"),
    "target_csv": out_path("{sample}", "target_count_pred.csv"),
    "tumor_csv": out_path("{sample}", "tumor_pred.csv"),
}
AUX_CSV = out_path("{sample}", "aux_count_pred.csv")
GENE_MAP = out_path("{sample}", "gene_map.png")
COHORT = {
    "summary": out_path("cohort", "summary.tsv"),
    "h5ad": out_path("cohort", "cohort.h5ad"),
    "report": out_path("cohort", "report.html"),
}


def need_samples():
    if not SAMPLES:
        fail("config samples=SHEET.tsv is required (a TSV with the header sample, slide, spots)")
    if not cfg("weights"):
        fail("config weights=CKPT is required (model_base.pt / model_spat.pt or a .safetensors)")


def sample_outputs(wildcards=None):
    need_samples()
    files = []
    for s in SAMPLES:
        files += [p.format(sample=s) for p in PRED.values()] + [GENE_MAP.format(sample=s)]
        if s in SPOT_SAMPLES:
            files.append(AUX_CSV.format(sample=s))
    return files


def cohort_outputs(wildcards=None):
    need_samples()
    return list(COHORT.values())


def per_sample(pattern):
    """An input function: `pattern` for every sample of the sheet."""
    return lambda wildcards: [pattern.format(sample=s) for s in SAMPLES]


def cohort_params():
    return {
        "samples": list(SAMPLES),
        "slides": [SAMPLES[s]["slide"] for s in SAMPLES],
        "modes": ["spots" if SAMPLES[s]["spots"] else "tiles" for s in SAMPLES],
    }


# -------------------------------------------------------------------------------------- cross-validation

CV_SECTIONS = words(cfg("cv_sections", ""))
CV_VAL = str(cfg("cv_val", "next"))
CV_RESERVED = {"--dataset", "--root", "--out", "--train-sections", "--val-sections", "--test-sections", "--resume", "--force"}


def need_cv():
    for key in ("cv_dataset", "cv_root", "cv_sections"):
        if not cfg(key):
            fail(f"the cv target needs config {key} (cv_dataset=her2st|hbcis|visium cv_root=DIR cv_sections=A,B,C)")
    if str(cfg("cv_dataset")) not in ("her2st", "hbcis", "visium"):
        fail(f"cv_dataset must be her2st, hbcis or visium, current value is {cfg('cv_dataset')}")
    if len(set(CV_SECTIONS)) != len(CV_SECTIONS):
        fail(f"cv_sections lists a section twice: {','.join(CV_SECTIONS)}")
    if CV_VAL not in ("next", "split"):
        fail(f"cv_val must be next (the next section validates) or split (a seeded split), current value is {CV_VAL}")
    least = 3 if CV_VAL == "next" else 2
    if len(CV_SECTIONS) < least:
        fail(f"cv_val={CV_VAL} needs at least {least} sections in cv_sections, current value is {','.join(CV_SECTIONS)}")
    taken = [a.split("=")[0] for a in shlex.split(str(cfg("cv_train_args", ""))) if a.split("=")[0] in CV_RESERVED]
    if taken:
        fail(f"cv_train_args may not set {', '.join(taken)}: the cv target chooses the sections and folders")


def cv_outputs(wildcards=None):
    need_cv()
    return [out_path("cv", "scores.tsv"), out_path("cv", "scores_mean.tsv")]


def cv_train_args(section):
    """The `train` command line of one fold (without --out and --resume / --force)."""
    i = CV_SECTIONS.index(section)
    rest = [s for s in CV_SECTIONS if s != section]
    args = ["train", "--dataset", str(cfg("cv_dataset")), "--root", absolute(cfg("cv_root")), "--test-sections", section]
    if CV_VAL == "next":
        val = CV_SECTIONS[(i + 1) % len(CV_SECTIONS)]
        args += ["--val-sections", val, "--train-sections", ",".join(s for s in rest if s != val)]
    else:
        args += ["--train-sections", ",".join(rest)]
    return args + ["--tune", TUNE, "--quiet", *shlex.split(str(cfg("cv_train_args", "")))]


def cv_train_shell(section):
    """
    Resume the fold's run from its checkpoint when one was left by the same command line (a killed job);
    otherwise start it afresh. The run's lock is removed first: Snakemake's own lock on the outputs already
    keeps a second workflow away, and a lock left by a killed job would hold the rerun off for two minutes.
    """
    args = cv_train_args(section)
    key = hashlib.sha256("\0".join(args).encode()).hexdigest()
    q = shlex.quote
    run = q(absolute(out_path("cv", section, "train")))
    log = q(out_path("cv", section, "train.log"))
    return (
        f"mkdir -p {run}; rm -f {run}/.lock {run}/*.tmp-* {run}/.*.tmp-*; "
        f'if [ -f {run}/checkpoint.safetensors ] && [ "$(cat {run}/.workflow-run 2>/dev/null)" = {key} ]; '
        f"then how=--resume; else how=--force; fi; "
        f"echo {key} > {run}/.workflow-run; "
        + run_cli(log, " ".join(q(a) for a in args) + f" --out {run} $how", template=False)
    )
