"""The report's "Rewards" section: what each cell's reward is, in one line per reward.

Every ``reward_models`` entry a cell trains on (and the win rate's judge model, if the plan has the
``reward-winrate`` benchmark) with its kind, its own one-line description (the spec's ``describe``:
the kind owns what it says; a ``length_debiased`` entry adds its fitted line and the reward-length
correlation before and after the correction, from ``results/rewards/<name>/calibration.json``) and
the cells that use it. A length correction chosen in config is thereby visible beside the numbers it
produced.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from rlmt.report.figures import short_cell_label


@dataclass
class RewardRow:
    name: str
    kind: str
    description: str
    cells: list[str]


def reward_rows(plan) -> list[RewardRow]:
    """One row per reward the plan uses: the cells' rewards in config order, then the win rate's judge."""
    used: dict[str, list[str]] = {}
    for cell in plan.cells:
        used.setdefault(cell.rm, []).append(cell.name)
    if "reward-winrate" in plan.benchmarks:
        used.setdefault(plan.winrate_reward_model(), [])
    rows = []
    for name in sorted(used, key=list(plan.cfg.reward_models).index):
        spec = plan.cfg.reward_models[name]
        describe = getattr(spec, "describe", None)  # optional for a kind (rlmt.rewards.registry)
        text = describe(name, plan.root) if describe else f"a `{spec.kind}` reward (its kind describes nothing more)"
        rows.append(RewardRow(name, spec.kind, text, used[name]))
    return rows


def _used_by(row: RewardRow, winrate_model: str | None) -> str:
    parts = [short_cell_label(c) for c in row.cells]
    if row.name == winrate_model:
        parts.append("the reward win rate (judge)")
    return "; ".join(parts)


def markdown(plan) -> list[str]:
    """The section as Markdown lines."""
    rows = reward_rows(plan)
    judge = plan.winrate_reward_model() if "reward-winrate" in plan.benchmarks else None
    lines = ["## Rewards", "", "What each cell was trained on (`reward_models` in the config; kinds: docs/rewards.md, "
             "length corrections: docs/length-bias.md).", "", "| reward | kind | what it is | used by |",
             "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.name} | {row.kind} | {row.description} | {_used_by(row, judge)} |")
    return [*lines, ""]


def html_section(plan) -> str:
    """The same section as HTML."""
    esc = html.escape
    judge = plan.winrate_reward_model() if "reward-winrate" in plan.benchmarks else None
    parts = ["<h2>Rewards</h2>", "<p>What each cell was trained on (<code>reward_models</code> in the config).</p>",
             "<table><tr><th>reward</th><th>kind</th><th>what it is</th><th>used by</th></tr>"]
    for row in reward_rows(plan):
        parts.append("<tr>" + "".join(f"<td style='text-align:left'>{esc(v)}</td>" for v in
                                      (row.name, row.kind, row.description, _used_by(row, judge))) + "</tr>")
    parts.append("</table>")
    return "\n".join(parts)
