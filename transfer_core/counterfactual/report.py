"""The report of a counterfactual plan on its run: tables, the accuracy-vs-k plot, the paired contrasts, the selection.

Reporting shows the plan's results on the selection half, so it is a *look* at that half: the
first report records it in the look ledger and on the run
(:func:`~transfer_core.counterfactual.looks.record_look`), and the selection uses the level that
look may spend (see :mod:`~transfer_core.counterfactual.summary`).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from transfer_core.counterfactual.gate import read_plan
from transfer_core.counterfactual.looks import LookLedger, record_look
from transfer_core.counterfactual.settings import FULL, ORDERS
from transfer_core.counterfactual.summary import EvidenceRule, Selection, contrasts, select, summarize
from transfer_core.track import describe_step, log_metrics, set_tags

TABLE_ARTIFACT = "counterfactual_runs.csv"
SUMMARY_ARTIFACT = "counterfactual_summary.csv"
PLOT_ARTIFACT = "counterfactual_accuracy.png"
SELECTION_ARTIFACT = "selection.json"
CONTRASTS_ARTIFACT = "counterfactual_contrasts.csv"


def plot_accuracy(summary: pd.DataFrame, path) -> None:
    """Target test accuracy against k for each order, with two-sided 95% CI bands; k = 0 is shared."""
    full = summary[summary.order == FULL]
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    colours = {"bottom": "tab:green", "top": "tab:red", "random": "tab:gray"}
    labels = {"bottom": "remove most detrimental (bottom)", "top": "remove most helpful (top)",
              "random": "remove random"}
    for order in ORDERS:
        part = pd.concat([full, summary[summary.order == order]]).sort_values("k")
        if len(part) <= len(full):
            continue
        ax.plot(part.k, part.test_mean, "o-", color=colours[order], label=labels[order])
        ax.fill_between(part.k, part.test_ci_low, part.test_ci_high, color=colours[order], alpha=0.15)
    ax.axhline(float(full.test_mean.iloc[0]), color="black", lw=0.8, ls="--", label="full source")
    ax.set_xlabel("k = number of source classes removed")
    ax.set_ylabel("target test accuracy")
    ax.set_title(f"Counterfactual retraining (mean, two-sided 95% CI over {int(full.n_seeds.iloc[0])} seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report_note(table: pd.DataFrame, selection: Selection) -> str:
    """The plan's description in the MLflow UI: what was retrained, where the figures are, the pick."""
    orders = ", ".join(o for o in ORDERS if o in set(table.order))
    ks = ", ".join(str(k) for k in sorted(set(table.k)))
    earlier = (f"; earlier looks at the same selection half: {', '.join(f'`{r}`' for r in selection.earlier_looks)}"
               if selection.earlier_looks else "")
    return (f"Counterfactual plan (tag `analysis_run_id`: the ranking it checks; tag `plan`: what it asked for): "
            f"{len(table)} runs retrained on the full source minus k classes (orders {orders}; k = {ks}; "
            f"{table.seed.nunique()} seeds; points another plan of the same grid trained first stay that plan's "
            f"children), each with params `order`, `k`, `seed`. Figure: `{PLOT_ARTIFACT}`; tables: "
            f"`{SUMMARY_ARTIFACT}`, `{TABLE_ARTIFACT}`, paired tests `{CONTRASTS_ARTIFACT}`; the pick, chosen on "
            f"the validation selection half (`{SELECTION_ARTIFACT}`, look {selection.look}{earlier}): "
            f"{selection.describe()}. To chart it from the runs table: Chart view, group by params `order` and `k`, "
            "add a scatter chart of `target_test_acc` against param `k`: one point per (order, k), the mean over "
            "seeds.")


def log_report(client, parent_run_id: str, table: pd.DataFrame, finish: bool = True,
               rule: EvidenceRule = EvidenceRule(), ranking_split_half: float = float("nan"),
               name: str | None = None, invocation_run_id: str | None = None, *,
               ledger: LookLedger | str) -> Selection:
    """Write the tables, plot, contrasts, selection and description to the plan's run; end it FINISHED if ``finish``.

    The run must carry its plan record (as :func:`~transfer_core.counterfactual.step.run_counterfactual`
    writes it). Its first report is a look at its selection half, recorded in ``ledger`` (a
    :class:`LookLedger` or its file's path: ``Context.ledger``). ``name`` renames the run; an
    ``invocation_run_id`` (the ``mlflow run`` run, when it is another run) gets the same name and a
    pointer to it (:func:`describe_step`).
    """
    run = client.get_run(parent_run_id)
    record = read_plan(run)
    ledger = ledger if isinstance(ledger, LookLedger) else LookLedger(ledger)
    look, earlier = record_look(client, ledger, run, record["look_key"], record["selection_half_digest"])
    summary = summarize(table)
    selection = select(table, rule, look, earlier)
    selection.ranking_split_half = ranking_split_half
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table.to_csv(tmp / TABLE_ARTIFACT, index=False)
        summary.to_csv(tmp / SUMMARY_ARTIFACT, index=False)
        contrasts(table).to_csv(tmp / CONTRASTS_ARTIFACT, index=False)
        plot_accuracy(summary, tmp / PLOT_ARTIFACT)
        (tmp / SELECTION_ARTIFACT).write_text(selection.to_json())
        client.log_artifacts(parent_run_id, str(tmp))
    values = {"selected_k": selection.k, "selected_val_acc": selection.val_acc,
              "selected_test_acc": selection.test_acc, "full_val_acc": selection.full_val_acc,
              "full_test_acc": selection.full_test_acc, "test_diff": selection.test_diff,
              "test_diff_ci_low": selection.diff_ci_low, "test_diff_ci_high": selection.diff_ci_high,
              "select_diff": selection.select_diff, "select_diff_ci_low": selection.select_diff_ci_low,
              "select_diff_ci_high": selection.select_diff_ci_high, "pruned_is_champion": float(selection.is_champion),
              "look": selection.look}
    log_metrics(client, parent_run_id, values)
    # a batch, not set_tag: two commands that share a plan report on one run, and MLflow's sqlite store retries
    # a batch whose tag another process inserted at the same moment (set_tag fails on that collision)
    set_tags(client, parent_run_id, {"selection": selection.describe()[:4900]})
    describe_step(client, parent_run_id, report_note(table, selection), name, invocation_run_id)
    if finish:
        client.set_terminated(parent_run_id, status="FINISHED")
    return selection
