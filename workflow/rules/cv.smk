# Leave-one-section-out cross-validation (target `cv`). One fold per section of cv_sections: that section is
# held out (train --test-sections); with cv_val=next (the default) the next section of the list validates
# and the others train, with cv_val=split a seeded 10 % of the training spots validates. `train` writes the
# best model's predictions of the held-out spots, their truth and the mean-expression baseline; `evaluate`
# scores the model and the baseline; the scores of all folds make scores.tsv and scores_mean.tsv.


rule cv:
    """scores.tsv (one row per fold) and scores_mean.tsv."""
    input:
        cv_outputs,


rule cv_train:
    output:
        pred=out_path("cv", "{section}", "train", "test_predictions.npz"),
        truth=out_path("cv", "{section}", "train", "test_truth.npz"),
        baseline=out_path("cv", "{section}", "train", "test_baseline.npz"),
    log:
        out_path("cv", "{section}", "train.log"),
    params:
        shell=lambda w: cv_train_shell(w.section),
    threads: THREADS
    resources:
        **gpu_resources(mem_mb=32000, runtime=1440),
    shell:
        "{params.shell}"


rule cv_evaluate:
    input:
        pred=rules.cv_train.output.pred,
        truth=rules.cv_train.output.truth,
        baseline=rules.cv_train.output.baseline,
    output:
        model=out_path("cv", "{section}", "metrics.json"),
        baseline=out_path("cv", "{section}", "baseline", "metrics.json"),
    log:
        model=out_path("cv", "{section}", "evaluate.log"),
        baseline=out_path("cv", "{section}", "baseline", "evaluate.log"),
    params:
        pred=lambda w, input: absolute(input.pred),
        truth=lambda w, input: absolute(input.truth),
        baseline=lambda w, input: absolute(input.baseline),
        genes=lambda w: f"--genes {shlex.quote(absolute(cfg('cv_genes')))}" if cfg("cv_genes") else "",
        dir=lambda w: absolute(out_path("cv", w.section)),
    resources:
        **cpu_resources(mem_mb=4000, runtime=30),
    shell:
        run_cli(
            "{log.model:q}",
            "evaluate {params.pred:q} --truth {params.truth:q} {params.genes} --out {params.dir:q} --quiet",
        )
        + "; "
        + run_cli(
            "{log.baseline:q}",
            "evaluate {params.baseline:q} --truth {params.truth:q} {params.genes} --out {params.dir:q}/baseline "
            "--quiet",
        )


rule cv_scores:
    input:
        model=lambda w: [out_path("cv", s, "metrics.json") for s in CV_SECTIONS],
        baseline=lambda w: [out_path("cv", s, "baseline", "metrics.json") for s in CV_SECTIONS],
    output:
        scores=out_path("cv", "scores.tsv"),
        mean=out_path("cv", "scores_mean.tsv"),
    log:
        out_path("cv", "scores.log"),
    params:
        sections=CV_SECTIONS,
        genes=lambda w: absolute(cfg("cv_genes")) if cfg("cv_genes") else None,
    script:
        "../scripts/cv_scores.py"
