"""
DIR/cohort/report.html: one page with the cohort's summary table and every sample's gene map side by side
(run by Snakemake's `script:`). The maps are linked relative to the report (the report stays in
DIR/cohort/), or embedded as data URIs with `embed` (one self-contained file).
"""
import base64
import csv
import html
import os
import sys


def main(sm):
    out = sm.output[0]
    with open(sm.input.summary, newline="") as f:
        table = list(csv.reader(f, delimiter="\t"))
    head, rows = table[0], table[1:]
    esc = html.escape
    cards = []
    for sample, png, row in zip(sm.params.samples, sm.input.maps, rows):
        if sm.params.embed:
            with open(png, "rb") as f:
                src = "data:image/png;base64," + base64.b64encode(f.read()).decode()
        else:
            src = os.path.relpath(png, os.path.dirname(out))
        info = dict(zip(head, row))
        caption = f"{info['mode']}: {info['n']}, tumour fraction {info['tumor_fraction']}"
        cards.append(
            f'<figure><a href="{esc(src)}"><img src="{esc(src)}" alt="gene map of {esc(sample)}"></a>'
            f"<figcaption><b>{esc(sample)}</b><br>{esc(caption)}<br><small>{esc(info['slide'])}</small>"
            f"</figcaption></figure>"
        )
    cells = lambda r, tag: "".join(f"<{tag}>{esc(c)}</{tag}>" for c in r)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>he2gene cohort report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }}
th:nth-child(-n+3), td:nth-child(-n+3) {{ text-align: left; }}
.maps {{ display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }}
figure {{ margin: 0; max-width: 320px; }}
figure img {{ width: 100%; border: 1px solid #ddd; }}
figcaption {{ font-size: 0.85em; overflow-wrap: anywhere; }}
</style></head><body>
<h1>he2gene cohort report</h1>
<p>{len(rows)} samples; weights {esc(sm.params.weights)}; test-time augmentation {esc(sm.params.tta)};
maps of {esc(", ".join(sm.params.genes))} and the tumour probability.</p>
<table><thead><tr>{cells(head, "th")}</tr></thead><tbody>
{"".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)}
</tbody></table>
<h2>Gene maps</h2>
<div class="maps">
{"".join(cards)}
</div>
</body></html>
"""
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(page)
    os.replace(tmp, out)


# Errors (a Python traceback) go to the rule's log, as the CLI's messages go to theirs.
with open(snakemake.log[0], "w") as log:  # noqa: F821 (Snakemake defines `snakemake`)
    sys.stderr = log
    main(snakemake)  # noqa: F821
