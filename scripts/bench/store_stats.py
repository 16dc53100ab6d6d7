"""What the store-reading benchmark scripts share: a node's summary metadata through `rmdistill show`, and the paired
statistics computed with scipy and statsmodels — libraries of the field, so that these scripts check the report's own
Rust statistics (stages/src/stats.rs) rather than repeat them.

Needs scipy and statsmodels (`pip install scipy statsmodels`); the binary is $RMDISTILL (default
target/debug/rmdistill), run from the repository root.
"""
import json
import os
import subprocess

from scipy import stats
from statsmodels.stats.multitest import multipletests

BIN = os.environ.get("RMDISTILL", "target/debug/rmdistill")


def metadata(manifest: str, node: str) -> dict:
    """The key-value metadata of a stored Parquet artifact, e.g. `eval_dpo@rho=0.2,seed=0.summary`."""
    out = subprocess.run([BIN, "show", manifest, node, "--json"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["metadata"]


def holm(ps):
    """Holm-adjusted p-values, in the order given."""
    return list(multipletests(ps, method="holm")[1])


def paired(d):
    """Mean of the per-seed paired differences `d`, the half-width of its 95% Student-t interval (len(d) − 1 df) and
    the two-sided p of a one-sample t-test against 0."""
    n = len(d)
    res = stats.ttest_1samp(d, 0.0)
    half = stats.t.ppf(0.975, n - 1) * stats.sem(d)
    return sum(d) / n, half, res.pvalue
