# Per sample: predict-slide at the spots or over the tissue, then a gene map.
# Two prediction rules that differ only in their outputs: at spots the aux CSV is written, over tiles it is
# not (19 699 columns a tile); the sample's name picks the rule.


rule predict_spots:
    input:
        slide=lambda w: SAMPLES[w.sample]["slide"],
        spots=lambda w: SAMPLES[w.sample]["spots"],
        weights=lambda w: absolute(config["weights"]),
    output:
        **PRED,
        aux_csv=AUX_CSV,
    log:
        out_path("{sample}", "predict.log"),
    benchmark:
        out_path("{sample}", "benchmark.tsv")
    wildcard_constraints:
        sample=one_of(SPOT_SAMPLES),
    params:
        args=lambda w: predict_args(w.sample),
        dir=lambda w: out_path(w.sample),
    threads: THREADS
    resources:
        **gpu_resources(mem_mb=8000, runtime=120),
    shell:
        # Temporary files of a killed run go first (the CLI renames its outputs into place at the end).
        "rm -f {params.dir:q}/.*.tmp-*; " + run_cli("{log:q}", "{params.args}")


rule predict_tiles:
    input:
        slide=lambda w: SAMPLES[w.sample]["slide"],
        weights=lambda w: absolute(config["weights"]),
    output:
        **PRED,
    log:
        out_path("{sample}", "predict.log"),
    benchmark:
        out_path("{sample}", "benchmark.tsv")
    wildcard_constraints:
        sample=one_of(TILE_SAMPLES),
    params:
        args=lambda w: predict_args(w.sample),
        dir=lambda w: out_path(w.sample),
    threads: THREADS
    resources:
        **gpu_resources(mem_mb=8000, runtime=240),
    shell:
        "rm -f {params.dir:q}/.*.tmp-*; " + run_cli("{log:q}", "{params.args}")


rule gene_map:
    """The configured genes and the tumour probability over a thumbnail of the slide."""
    input:
        npz=PRED["npz"],
        slide=lambda w: SAMPLES[w.sample]["slide"],
    output:
        GENE_MAP,
    log:
        out_path("{sample}", "gene_map.log"),
    params:
        npz=lambda w, input: absolute(input.npz),
        png=lambda w, output: absolute(output[0]),
        genes=",".join(GENES),
        size=int(cfg("map_size", 512)),
    resources:
        **cpu_resources(mem_mb=4000, runtime=30),
    shell:
        "rm -f {output:q}.tmp-*; "
        + run_cli(
            "{log:q}",
            "visualize {params.npz:q} --gene {params.genes:q} --slide {input.slide:q} --out {params.png:q} "
            "--size {params.size}",
        )
