"""The evaluation's outputs: rich tables on the console, ``results.json``, and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hatac.evaluation.budgets import label

METHOD_STYLE = {
    "dense": ("black", "-"),
    "oracle": ("tab:gray", "--"),
    "hatac-learned": ("tab:red", "-"),
    "hatac-random": ("tab:orange", "-"),
    "quest": ("tab:blue", "-."),
    "loki": ("tab:green", "-."),
    "streaming": ("tab:purple", ":"),
}


def _fmt(v, digits=2, pct=False):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.0f}%" if pct else f"{v:.{digits}f}"


def _budget_table(title: str, budgets: list[str]) -> Table:
    """A table with a method column and one right-aligned column per budget."""
    t = Table(title=title)
    t.add_column("method")
    for b in budgets:
        t.add_column(b, justify="right")
    return t


def tables(results: dict) -> list[Table]:
    budgets = results["settings"]["budget_labels"]
    out = []
    ppl = results.get("perplexity") or {}
    if ppl:
        dense = ppl.get("dense", {}).get("ppl")
        t = _budget_table(f"Perplexity (top-k at every position, loss over positions >= {results['settings']['loss_from']}); dense {_fmt(dense)}", budgets)
        for name, per in ppl.items():
            if name == "dense":
                continue
            cells = []
            for b in budgets:
                v = per.get(b, {}).get("ppl")
                cells.append(f"{_fmt(v)} ({100 * (v / dense - 1):+.0f}%)" if v is not None and dense else "-")
            t.add_row(name, *cells)
        out.append(t)
    main_r = str(results["settings"]["main_rbits"])
    for key, title, digits in (
        ("recall", f"Recall@k of the exact top-k (mean over hashed layers; hatac at each r)", 3),
        ("attention_mass", "Dense attention mass on the selected tokens (mean over hashed layers)", 3),
    ):
        rec = results.get(key) or {}
        if not rec:
            continue
        t = _budget_table(title, budgets)
        for name, per in rec.items():
            if name.startswith("hatac-"):
                for r, by_b in per.items():
                    t.add_row(f"{name} r={r}" + (" *" if r == main_r else ""), *[_fmt(by_b.get(b), digits) for b in budgets])
            else:
                t.add_row(name, *[_fmt(per.get(b), digits) for b in budgets])
        out.append(t)
    pk = results.get("passkey") or {}
    if pk:
        s = results["settings"]
        t = _budget_table(f"Passkey retrieval ({pk['dense']['trials']} trials, haystack {s['passkey_length']} tokens, depths {s['passkey_depths']}); dense {_fmt(pk['dense']['acc'], pct=True)}", budgets)
        for name, per in pk.items():
            if name == "dense":
                continue
            t.add_row(name, *[_fmt(per.get(b, {}).get("acc"), pct=True) for b in budgets])
        out.append(t)
    for task, res in (results.get("tasks") or {}).items():
        t = _budget_table(f"Task {task} (RULER-style string match, {res['dense']['trials']} trials, prompts of ~{res['prompt_tokens']:.0f} tokens); dense {_fmt(res['dense']['acc'], pct=True)}", budgets)
        for name, per in res.items():
            if name in ("dense", "prompt_tokens"):
                continue
            t.add_row(name, *[_fmt(per.get(b, {}).get("acc"), pct=True) for b in budgets])
        out.append(t)
    tg = results.get("targets") or {}
    if tg.get("checks"):
        t = Table(title=f"Targets (budgets {', '.join(tg['budgets'])}, r={tg['rbits']})")
        for col in ("target", "value", "met"):
            t.add_column(col)
        for c in tg["checks"]:
            t.add_row(c["target"], c["value"], {True: "yes", False: "NO", None: "n/a"}[c["met"]])
        out.append(t)
    return out


def markdown(results: dict) -> str:
    """The tables as GitHub markdown (``results.md``)."""
    lines = []
    for t in tables(results):
        lines += [f"**{t.title}**", "", "| " + " | ".join(str(c.header) for c in t.columns) + " |", "|" + "---|" * len(t.columns)]
        cols = [list(c._cells) for c in t.columns]
        for row in zip(*cols):
            lines.append("| " + " | ".join(str(x) for x in row) + " |")
        lines.append("")
    return "\n".join(lines)


def print_tables(results: dict, console: Console | None = None) -> None:
    console = console or Console()
    for t in tables(results):
        console.print(t)


def write_json(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")


def _budget_panels(results: dict):
    s = results["settings"]
    fr = [label(b) for b in s["fractions"]]
    ct = [label(b) for b in s["counts"]]
    return [(fr, "budget (fraction of context)"), (ct, "budget (tokens)")]


def plot_metric(results: dict, key: str, value: str, path: Path, ylabel: str, logy: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = results.get(key) or {}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=80, sharey=True)
    for ax, (labels, xlabel) in zip(axes, _budget_panels(results)):
        x = range(len(labels))
        for name, per in data.items():
            color, ls = METHOD_STYLE.get(name, METHOD_STYLE.get(name.split(" ")[0], (None, "-")))
            if " " in name:  # a variant (forced sink/recent): the base method's colour, dotted
                ls = ":"
            if name == "dense":
                v = per.get(value)
                if v is not None:
                    ax.axhline(v, color=color, ls=ls, lw=1, label="dense")
                continue
            ys = [per.get(b, {}).get(value) for b in labels]
            ys = [float("nan") if y is None else y for y in ys]
            ax.plot(list(x), ys, marker="o", color=color, ls=ls, label=name)
        ax.set_xticks(list(x), labels)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if logy:
            ax.set_yscale("log")
    axes[0].set_ylabel(ylabel)
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_recall_vs_bits(results: dict, path: Path) -> None:
    """Top row recall@k, bottom row attention mass, against hash bits; one column per budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = results["settings"]["budget_labels"]
    rbits = results["settings"]["rbits"]
    rows = [(k, lab) for k, lab in (("recall", "recall@k"), ("attention_mass", "attention mass")) if results.get(k)]
    fig, axes = plt.subplots(len(rows), len(budgets), figsize=(2.2 * len(budgets), 2.6 * len(rows)), dpi=80, sharey="row", squeeze=False)
    for row, (key, ylabel) in zip(axes, rows):
        for ax, b in zip(row, budgets):
            for name, per in results[key].items():
                color, ls = METHOD_STYLE.get(name, (None, "-"))
                if name.startswith("hatac-"):
                    ys = [per.get(str(r), {}).get(b, float("nan")) for r in rbits]
                    ax.plot(rbits, ys, marker="o", color=color, ls=ls, label=name)
                elif per.get(b) is not None:
                    ax.axhline(per[b], color=color, ls=ls, lw=1, label=name)
            ax.set_xscale("log", base=2)
            ax.set_xticks(rbits, [str(r) for r in rbits])
            ax.set_title(f"budget {b}", fontsize=9)
            ax.grid(alpha=0.3)
        row[0].set_ylabel(ylabel)
    for ax in axes[-1]:
        ax.set_xlabel("hash bits r")
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plots(results: dict, out_dir: Path) -> list[Path]:
    paths = []
    if results.get("recall"):
        p = out_dir / "recall_vs_bits.png"
        plot_recall_vs_bits(results, p)
        paths.append(p)
    if results.get("perplexity"):
        p = out_dir / "perplexity_vs_budget.png"
        plot_metric(results, "perplexity", "ppl", p, "perplexity", logy=True)
        paths.append(p)
    if results.get("passkey"):
        p = out_dir / "passkey_vs_budget.png"
        plot_metric(results, "passkey", "acc", p, "passkey accuracy")
        paths.append(p)
    return paths
