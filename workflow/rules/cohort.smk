# The cohort: one summary table, one AnnData file and one HTML report over every sample (Python scripts
# reading the per-sample outputs; local rules).


rule cohort_summary:
    """One row per sample: slide, mode, spots or tiles, tumour fraction, mean of the genes, seconds."""
    input:
        npz=per_sample(PRED["npz"]),
        benchmark=per_sample(out_path("{sample}", "benchmark.tsv")),
    output:
        COHORT["summary"],
    log:
        out_path("cohort", "summary.log"),
    params:
        **cohort_params(),
        genes=GENES,
    script:
        "../scripts/cohort_summary.py"


rule cohort_h5ad:
    """All spots and tiles of all samples in one AnnData file (aux genes with cohort_aux=true)."""
    input:
        npz=per_sample(PRED["npz"]),
    output:
        COHORT["h5ad"],
    log:
        out_path("cohort", "cohort_h5ad.log"),
    params:
        **cohort_params(),
        aux=flag(cfg("cohort_aux", False)),
    script:
        "../scripts/cohort_h5ad.py"


rule cohort_report:
    """One HTML page: the summary table and every sample's gene map side by side."""
    input:
        summary=COHORT["summary"],
        maps=per_sample(GENE_MAP),
    output:
        COHORT["report"],
    log:
        out_path("cohort", "report.log"),
    params:
        **cohort_params(),
        genes=GENES,
        embed=flag(cfg("report_embed", False)),
        weights=lambda w: absolute(config["weights"]),
        tta=TTA,
    script:
        "../scripts/cohort_report.py"
