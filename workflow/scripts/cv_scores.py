"""
DIR/cv/scores.tsv (one row per held-out section) and DIR/cv/scores_mean.tsv (their mean), from the
`evaluate` metrics.json of each fold's model and of its mean-expression baseline (run by Snakemake's
`script:`).

Columns: section; spots (held-out spots scored); hvg_r (mean Pearson r over the gene list `cv_genes`, NA
without one); top{k}_r (mean r over the k genes of highest mean true expression); tumor_auc; mse and
mse_baseline (over all genes scored: the model and the training-mean baseline); hvg_mse and
hvg_mse_baseline (over the listed genes).
"""
import csv
import json
import math
import os
import sys

import numpy as np


def num(x):
    return math.nan if x is None else float(x)


def read_genes(path):
    if path.endswith(".npy"):
        return {str(g) for g in np.load(path, allow_pickle=False)}
    with open(path) as f:
        return {line.strip() for line in f if line.strip()}


def list_mse(metrics, genes):
    """Mean per-gene MSE over the listed genes that were scored (NaN without a list)."""
    if genes is None:
        return math.nan
    per = metrics["perGene"]
    v = [num(m) for g, m in zip(per["gene"], per["mse"]) if g in genes]
    v = [x for x in v if not math.isnan(x)]
    return sum(v) / len(v) if v else math.nan


def fmt(x):
    return "NA" if isinstance(x, float) and math.isnan(x) else (f"{x:.6g}" if isinstance(x, float) else str(x))


def write_tsv(path, header, rows):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows([[fmt(c) for c in r] for r in rows])
    os.replace(tmp, path)


def main(sm):
    genes = read_genes(sm.params.genes) if sm.params.genes else None
    rows, k = [], 50
    for section, model_json, base_json in zip(sm.params.sections, sm.input.model, sm.input.baseline):
        with open(model_json) as f:
            m = json.load(f)
        with open(base_json) as f:
            b = json.load(f)
        s = m["summary"]["all"]
        k = (s.get("topK") or {}).get("k", k)
        rows.append(
            [
                section,
                int(m["spots"]["joined"]),
                num((s.get("list") or {}).get("mean")) if genes is not None else math.nan,
                num((s.get("topK") or {}).get("mean")),
                num((m.get("tumor") or {}).get("auc")),
                num(s["mse"]),
                num(b["summary"]["all"]["mse"]),
                list_mse(m, genes),
                list_mse(b, genes),
            ]
        )
    header = ["section", "spots", "hvg_r", f"top{k}_r", "tumor_auc", "mse", "mse_baseline", "hvg_mse", "hvg_mse_baseline"]
    write_tsv(sm.output.scores, header, rows)
    mean = ["mean"]
    for j in range(1, len(header)):
        v = [float(r[j]) for r in rows if not math.isnan(float(r[j]))]
        mean.append(sum(v) / len(v) if v else math.nan)
    write_tsv(sm.output.mean, ["folds", *header], [[len(rows), *mean]])


# Errors (a Python traceback) go to the rule's log, as the CLI's messages go to theirs.
with open(snakemake.log[0], "w") as log:  # noqa: F821 (Snakemake defines `snakemake`)
    sys.stderr = log
    main(snakemake)  # noqa: F821
