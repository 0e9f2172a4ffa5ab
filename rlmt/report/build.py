"""Build ``results/report/``: main table, think deltas, figures, report.md and report.html.

Every number in the HTML report links to the MLflow run that produced it (the cell's parent
run for trained policies, the collect run for initial policies), so a reader can go from the
table to the training curves, parameters and sample generations behind it.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path


from rlmt.report.arena_joint import joint_leaderboards, joint_table, with_joint_headline
from rlmt.report.arena_joint import markdown as arena_markdown
from rlmt.report.banner import banner_text
from rlmt.report.banner import markdown_lines as banner_markdown
from rlmt.report import head_to_head as h2h
from rlmt.report import length_figures as lf
from rlmt.report import rewards_section
from rlmt.report.figures import plot_benchmark_bars, plot_deltas, plot_training_curves, training_histories
from rlmt.report.tables import COLUMNS, SIDE_METRICS, load_rows, main_table, think_deltas, to_markdown
from rlmt.workflow import Plan


@dataclass
class ReportConfig:
    out_dir: str = "results/report"
    eval_root: str = "results/eval"
    tracking_uri: str | None = None
    experiment: str = "rlmt"
    ui_url: str | None = None


def ui_base(uri: str, ui_url: str | None) -> str:
    """Where the runs of the tracking URI in use are browsed.

    A tracking server (http/https URI) serves its own UI, so links go to it; a local store
    (``sqlite:///...``, a directory) has no UI until one is started on it: links go to
    `ui_url` (``tracking.ui_url``) if set, else to the address ``mlflow ui`` serves by default,
    and the report says which store and the command that serves it there.
    """
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return (ui_url or "http://127.0.0.1:5000").rstrip("/")


def browse_command(uri: str) -> str:
    """The command that serves the UI of a local store (empty for a tracking server)."""
    if uri.startswith(("http://", "https://")):
        return ""
    return f"mlflow ui --backend-store-uri {uri}"


def run_links(models: list[str], *, uri: str | None, experiment: str, ui_url: str | None) -> dict[str, str]:
    """model -> URL of its MLflow run in the UI (parent run of a cell, else its collect run)."""
    from mlflow.tracking import MlflowClient

    from rlmt.tracking import TAG_CELL, TAG_PARENT, tracking_uri

    resolved = tracking_uri(uri)
    base = ui_base(resolved, ui_url)
    client = MlflowClient(resolved)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    links = {}
    for model in models:
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_CELL}` = '{model}' and tags.`{TAG_PARENT}` = 'true'",
                                  max_results=1)
        if not runs:
            runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`rlmt.model` = '{model}'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            links[model] = f"{base}/#/experiments/{exp.experiment_id}/runs/{runs[0].info.run_id}"
    return links


def build_report(plan: Plan, cfg: ReportConfig) -> dict[str, Path]:
    out = Path(cfg.out_dir)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    rows = load_rows(plan, cfg.eval_root)
    benchmarks = plan.benchmarks
    sections: list[str] = []
    if "arenahard-v2" in benchmarks:  # the official style control needs every model at once
        arena = joint_table(joint_leaderboards([r.model for r in rows], cfg.eval_root))
        arena.write_csv(out / "arenahard_style_control.csv")
        sections = arena_markdown(arena)
        rows = with_joint_headline(rows, arena)
    table = main_table(rows, benchmarks)
    deltas = think_deltas(rows, benchmarks)
    table.write_csv(out / "main_table.csv")
    deltas.write_csv(out / "think_deltas.csv")
    pairs = h2h.head_to_head(plan, rows)
    pairs.write_csv(out / "head_to_head.csv")
    shown = [c for c in table.columns if not c.endswith(" CI") and c not in ("model", "avg_over")] if rows else []
    (out / "main_table.md").write_text(to_markdown(table.select(shown)) if rows else "_(no scores)_\n")
    histories = training_histories(plan.cell_names, uri=cfg.tracking_uri, experiment=cfg.experiment)
    fig_paths = plot_training_curves(histories, figures)
    labels = [COLUMNS.get(b, b) for b in benchmarks]
    fig_paths += plot_benchmark_bars(table, labels + ["Avg"], figures) if rows else []
    fig_paths += plot_deltas(deltas, figures)
    lengths = lf.cell_lengths(plan)  # each cell's rollouts and length verdict (rlmt.diagnostics)
    fig_paths += lf.plot_reward_vs_length(lengths, figures) + lf.plot_length_correlation(lengths, figures)
    fig_paths += lf.plot_winrate_pareto(rows, benchmarks, cfg.eval_root, figures)
    (out / "training_curves.json").write_text(json.dumps(histories, indent=1))
    log_cell_scores(plan, table, uri=cfg.tracking_uri, experiment=cfg.experiment)
    h2h.log_head_to_head(plan, pairs, uri=cfg.tracking_uri, experiment=cfg.experiment)
    links = run_links([r.model for r in rows], uri=cfg.tracking_uri, experiment=cfg.experiment, ui_url=cfg.ui_url)

    from rlmt.tracking import tracking_uri

    store = tracking_uri(cfg.tracking_uri)
    md = _markdown(plan, table, deltas, shown, fig_paths, links, out, sections, store=store, pairs=pairs,
                   lengths=lengths)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(_html(plan, table, deltas, shown, fig_paths, links, out, store=store, pairs=pairs,
                                           lengths=lengths))
    return {"report": out / "report.md", "html": out / "report.html", "table": out / "main_table.csv",
            "head_to_head": out / "head_to_head.csv", "figures": figures}


def cell_metrics(row: dict, benchmarks: list[str]) -> dict[str, float | None]:
    """One main-table row -> the metrics of its cell's parent run: score.<benchmark>, score.avg, score.avg_chat."""
    metrics = {f"score.{b}": row.get(COLUMNS.get(b, b)) for b in benchmarks}
    for b in benchmarks:  # the side columns (score.reward-winrate.both, score.reward-winrate.lc)
        for suffix, _ in SIDE_METRICS.get(b, ()):
            metrics[f"score.{b}.{suffix.lower()}"] = row.get(f"{COLUMNS.get(b, b)} {suffix}")
    metrics["score.avg"] = row.get("Avg")
    metrics["score.avg_chat"] = row.get("AvgChat")
    return metrics


def log_cell_scores(plan: Plan, table, *, uri: str | None, experiment: str) -> dict[str, str]:
    """Put every scored cell's axes and final scores on its MLflow parent run (cell -> run id)."""
    from rlmt.tracking import update_cell_parent

    if table.is_empty():
        return {}
    done = {}
    for row in table.iter_rows(named=True):
        cell = plan.cell_by_name.get(row["model"])
        if cell is not None:
            done[cell.name] = update_cell_parent(cell, cell_metrics(row, plan.benchmarks), uri=uri, experiment=experiment)
    return done


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def _markdown(plan, table, deltas, shown, fig_paths, links, out: Path, sections: list[str] = (), *, store: str = "",
              pairs=None, lengths=None) -> str:
    lines = ["# RLMT report", "", *banner_markdown(plan.cfg),
             f"{len(plan.cells)} cells; benchmarks: {', '.join(plan.benchmarks)}. "
             "Scores are in points (0–100; WildBench −100..100) with 95 % bootstrap CIs in `main_table.csv`. "
             "Averages use only the benchmarks a row has (`avg_over`)."
             + (" RM-WR counts a policy without an answer as a loss; `RM-WR both` is the raw rate over the prompts "
                "both models answered and `RM-WR LC` the length-controlled rate over the same prompts (the win rate "
                "at equal answer length)." if "reward-winrate" in plan.benchmarks else ""), "",
             "## Main table (paper Table 1 layout)", ""]
    if not table.is_empty():
        md_table = table.select(shown)
        lines.append(to_markdown(md_table))
        serve = browse_command(store)
        lines += [f"MLflow runs behind each row (tracking URI `{store}`"
                  + (f"; serve it with `{serve}`" if serve else "") + "):", ""]
        for model in table["model"]:
            link = links.get(model)
            lines.append(f"- `{model}`: {f'[run]({link})' if link else 'no run found'}")
    else:
        lines.append("_(no scores yet)_")
    lines += ["", *sections, "## Thinking minus non-thinking (paired bootstrap over items)", "", to_markdown(deltas), ""]
    lines += h2h.markdown(pairs, links) if pairs is not None else []
    lines += lf.markdown(lengths) if lengths is not None else []
    lines += rewards_section.markdown(plan)
    lines += ["## Figures", ""]
    for p in fig_paths:
        lines.append(f"![{p.stem}]({p.relative_to(out)})")
        lines.append("")
    return "\n".join(lines)


def _html_banner(cfg) -> list[str]:
    """The plumbing-demo banner as an HTML paragraph (its `code` spans and bold kept), or nothing."""
    text = banner_text(cfg)
    if text is None:
        return []
    body = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))
    body = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", body)
    return [f"<p style='border:2px solid #c00;padding:6px'>{body}</p>"]


def _html(plan, table, deltas, shown, fig_paths, links, out: Path, *, store: str = "", pairs=None,
          lengths=None) -> str:
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>RLMT report</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%}</style></head><body>",
             "<h1>RLMT report</h1>",
             *_html_banner(plan.cfg),
             f"<p>{len(plan.cells)} cells; benchmarks: {esc(', '.join(plan.benchmarks))}. Each number links to its MLflow run "
             f"(tracking URI <code>{esc(store)}</code>"
             + (f"; serve it with <code>{esc(browse_command(store))}</code>" if browse_command(store) else "")
             + ").</p>",
             "<h2>Main table</h2>"]
    if not table.is_empty():
        parts.append("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in shown) + "</tr>")
        for row in table.iter_rows(named=True):
            link = links.get(row["model"])
            cells = []
            for c in shown:
                text = esc(_fmt(row[c]))
                ci = row.get(f"{c} CI")
                if ci:
                    text += f"<br><small>{esc(ci)}</small>"
                if link and c not in ("backbone", "start", "stage", "think"):
                    text = f"<a href='{esc(link)}'>{text}</a>"
                cells.append(f"<td>{text}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    parts.append("<h2>Thinking minus non-thinking</h2>")
    if not deltas.is_empty():
        parts.append("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in deltas.columns) + "</tr>")
        for row in deltas.iter_rows():
            parts.append("<tr>" + "".join(f"<td>{esc(_fmt(v))}</td>" for v in row) + "</tr>")
        parts.append("</table>")
    parts += h2h.html(pairs, links) if pairs is not None else []
    parts += [lf.html_section(lengths)] if lengths is not None else []
    parts.append(rewards_section.html_section(plan))
    parts.append("<h2>Figures</h2>")
    for p in fig_paths:
        parts.append(f"<figure><img src='{esc(str(p.relative_to(out)))}'><figcaption>{esc(p.stem)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
