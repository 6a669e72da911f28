"""DIR/cohort/summary.tsv: one row per sample (run by Snakemake's `script:`, which defines `snakemake`)."""
import csv
import math
import os
import sys

import numpy as np


def seconds(benchmark):
    """Wall-clock seconds of the prediction job (the `s` column of Snakemake's benchmark file)."""
    with open(benchmark, newline="") as f:
        row = next(csv.DictReader(f, delimiter="\t"))
    return float(row["s"])


def gene_means(z, genes):
    """Mean prediction of each gene over the sample's spots or tiles (target head first, then aux)."""
    out = []
    for g in genes:
        for head in ("target", "aux"):
            names = list(z[f"{head}_genes"])
            if g in names:
                out.append(float(np.mean(z[head][:, names.index(g)], dtype=np.float64)))
                break
        else:
            out.append(math.nan)  # NaN: the gene is in neither head
    return out


def main(sm):
    genes = list(sm.params.genes)
    header = ["sample", "slide", "mode", "n", "tumor_fraction", *[f"mean_{g}" for g in genes], "seconds"]
    rows = []
    for sample, slide, mode, npz, bench in zip(
        sm.params.samples, sm.params.slides, sm.params.modes, sm.input.npz, sm.input.benchmark
    ):
        with np.load(npz) as z:
            tumor = z["tumor_prob"]
            rows.append(
                [
                    sample,
                    slide,
                    mode,
                    str(len(tumor)),
                    f"{float(np.mean(tumor > 0.5)):.6g}",
                    *[f"{m:.6g}" for m in gene_means(z, genes)],
                    f"{seconds(bench):.2f}",
                ]
            )
    tmp = f"{sm.output[0]}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, sm.output[0])


# Errors (a Python traceback) go to the rule's log, as the CLI's messages go to theirs.
with open(snakemake.log[0], "w") as log:  # noqa: F821 (Snakemake defines `snakemake`)
    sys.stderr = log
    main(snakemake)  # noqa: F821
