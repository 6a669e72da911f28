"""
DIR/cohort/cohort.h5ad: every spot and tile of every sample (run by Snakemake's `script:`).

X = the target genes (with `aux`: target then aux genes, `var['head']` says which), obs = sample, spot name,
mode, tumour probability and call; obsm = `spatial` (level-0 pixel centre x, y of each sample's slide) and
`grid` (array x, y or tile column, row); uns['samples'] = each sample's slide and mode. obs_names are
`{sample}:{spot}`, unique across the cohort.
"""
import os
import sys

import anndata
import numpy as np
import pandas as pd


def main(sm):
    aux = bool(sm.params.aux)
    xs, obs, spatial, grid = [], [], [], []
    var_names = None
    for sample, mode, npz in zip(sm.params.samples, sm.params.modes, sm.input.npz):
        with np.load(npz) as z:
            genes = list(z["target_genes"]) + (list(z["aux_genes"]) if aux else [])
            if var_names is None:
                var_names, n_target = genes, len(z["target_genes"])
            elif genes != var_names:
                raise ValueError(
                    f"{npz}: its genes differ from the first sample's ({len(genes)} vs {len(var_names)}); "
                    f"all samples must come from one checkpoint and gene list"
                )
            x = z["target"].astype(np.float32)
            xs.append(np.concatenate([x, z["aux"].astype(np.float32)], axis=1) if aux else x)
            names = [str(n) for n in z["names"]]
            obs.append(
                pd.DataFrame(
                    {
                        "sample": sample,
                        "spot": names,
                        "mode": mode,
                        "tumor_prob": z["tumor_prob"].astype(np.float32),
                        "tumor": z["tumor_prob"] > 0.5,
                    },
                    index=[f"{sample}:{n}" for n in names],
                )
            )
            spatial.append(z["pixel"].astype(np.float64))
            grid.append(z["grid"].astype(np.int32))
    o = pd.concat(obs)
    o["sample"] = pd.Categorical(o["sample"], categories=list(sm.params.samples))
    o["mode"] = pd.Categorical(o["mode"], categories=["spots", "tiles"])
    var = pd.DataFrame(
        {"head": pd.Categorical(["target"] * n_target + ["aux"] * (len(var_names) - n_target))},
        index=var_names,
    )
    adata = anndata.AnnData(
        X=np.concatenate(xs, axis=0),
        obs=o,
        var=var,
        obsm={"spatial": np.concatenate(spatial), "grid": np.concatenate(grid)},
        uns={
            "samples": {
                s: {"slide": slide, "mode": mode}
                for s, slide, mode in zip(sm.params.samples, sm.params.slides, sm.params.modes)
            }
        },
    )
    out = sm.output[0]
    tmp = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.tmp-{os.getpid()}.h5ad")
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# Errors (a Python traceback) go to the rule's log, as the CLI's messages go to theirs.
with open(snakemake.log[0], "w") as log:  # noqa: F821 (Snakemake defines `snakemake`)
    sys.stderr = log
    main(snakemake)  # noqa: F821
