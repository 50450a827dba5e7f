"""Run in bench/.venv-grn: GENIE3 and GRNBoost2 (arboreto) on an expression CSV (genes x cells).
Usage: python grn_peers_worker.py expression.csv out.json SEED [METHODS, default GRNBoost2,GENIE3]. Writes {method: {"edges": [[tf, target,
importance], ...], "seconds": s, "error": str | None}}."""

import json
import sys
import time
import traceback

import pandas as pd

expr_path, out_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
methods = (sys.argv[4] if len(sys.argv) > 4 else "GRNBoost2,GENIE3").split(",")
expr = pd.read_csv(expr_path, index_col=0).T  # cells x genes
out = {}
try:
    from arboreto.algo import genie3, grnboost2

    from distributed import Client, LocalCluster
except Exception as exc:  # noqa: BLE001 - record the exact error
    out["import_error"] = "".join(traceback.format_exception_only(type(exc), exc))
else:
    for name, fn in [m for m in (("GRNBoost2", grnboost2), ("GENIE3", genie3)) if m[0] in methods]:
        # a fresh in-process cluster per method (reusing one cancels the second method's graph)
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)
        client = Client(cluster)
        start = time.perf_counter()
        try:
            net = fn(expression_data=expr, gene_names=list(expr.columns), client_or_address=client, seed=seed)
            out[name] = {
                "edges": net[["TF", "target", "importance"]].values.tolist(),
                "seconds": time.perf_counter() - start,
                "error": None,
            }
        except Exception as exc:  # noqa: BLE001
            out[name] = {
                "edges": [],
                "seconds": time.perf_counter() - start,
                "error": "".join(traceback.format_exception_only(type(exc), exc)),
            }
        client.close()
        cluster.close()
with open(out_path, "w") as fh:
    json.dump(out, fh)
