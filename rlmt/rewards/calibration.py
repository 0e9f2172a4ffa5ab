"""The fit behind a ``length_debiased`` reward: the base reward's least-squares line in answer length.

Rule ``reward_calibration`` (``rlmt train reward-calibration``) writes
``results/rewards/<name>/calibration.json``::

    {slope, intercept, mean_length, n, pearson_before, pearson_after, reward, base, tokenizer_model, ...}

1. The calibration prompts are the first ``n_prompts`` of a mixture's ``train`` or ``tune`` split. They
   must share nothing with an evaluation set: a prompt whose id, or the normalised text of any of its
   user turns (case-folded, whitespace collapsed; compared by SHA-256), appears in a benchmark's items
   or in any mixture's ``val`` split (the win rate's prompts) stops the job with an error naming them.
   The correction is fitted on prompts the evaluation never sees, so an evaluation cannot be tuned to.
2. The calibration ``policy`` (normally a cell's start policy) answers them, sampled as in rollouts,
   resumably (``answers.jsonl`` beside the output).
3. The base reward scores each answer (extracted by the policy's format, as in training); answers the
   format cannot split (``well_formed`` false) are left out of the fit and counted: their ``[NULL]``
   or empty answer is no sample of the policy's answer lengths.
4. ``slope``, ``intercept``: ordinary least squares of reward on answer tokens; ``mean_length``: the
   mean answer tokens. ``pearson_before``/``pearson_after``: reward-length correlation of the base and
   of the corrected reward ``score - slope * (length - mean_length)`` on the same answers (after: 0 up
   to rounding, by construction of least squares; None when the corrected scores are all equal).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

from rlmt.rewards.length import CALIBRATION_FILE, AnswerTokens, LengthDebiasedSpec, calibration_file, debias
from rlmt.stats.correlation import least_squares_line, pearson

Messages = list[dict]


class CalibrationOverlapError(ValueError):
    """Calibration prompts that are evaluation prompts."""


# ---------------------------------------------------------------------- the fit


def fit_length_line(scores: Sequence[float], lengths: Sequence[int]) -> dict[str, Any]:
    """The least-squares line of `scores` on `lengths`, and the correlation before and after removing it."""
    if len(scores) != len(lengths):
        raise ValueError(f"{len(scores)} scores but {len(lengths)} lengths")
    if len(scores) < 2:
        raise ValueError(f"a length calibration needs at least 2 answers, got {len(scores)}")
    if len(set(lengths)) < 2:
        raise ValueError(f"every calibration answer has {lengths[0]} tokens: the reward's length trend is undefined")
    slope, intercept = least_squares_line(lengths, scores)
    mean_length = sum(lengths) / len(lengths)
    corrected = [debias(s, n, slope, mean_length) for s, n in zip(scores, lengths)]
    return {"slope": slope, "intercept": intercept, "mean_length": mean_length, "n": len(scores),
            "pearson_before": pearson(lengths, scores), "pearson_after": pearson(lengths, corrected)}


# ---------------------------------------------------------------------- never on evaluation prompts


def _normalise(text: str) -> str:
    from rlmt.data.rm_pairs import normalise  # the one rule for "the same prompt text" (rm_pairs excludes by it)

    return normalise(text)


def user_turn_hashes(messages: Messages) -> set[str]:
    """SHA-256 of the normalised text of each user turn."""
    return {hashlib.sha256(_normalise(m["content"]).encode("utf-8")).hexdigest()
            for m in messages if m.get("role") == "user"}


def check_disjoint(items: Sequence[tuple[str, Messages]], evaluation_files: Sequence[str | Path]) -> None:
    """Raise :class:`CalibrationOverlapError` when a calibration prompt is an evaluation prompt, by id or by text."""
    from rlmt.generation.files import read_prompts

    ids: dict[str, str] = {}
    texts: dict[str, str] = {}
    for path in evaluation_files:
        for rid, messages in read_prompts(path):
            ids.setdefault(rid, str(path))
            for h in user_turn_hashes(messages):
                texts.setdefault(h, str(path))
    shared = []
    for rid, messages in items:
        if rid in ids:
            shared.append(f"{rid!r} (its id is in {ids[rid]})")
        else:
            found = sorted(texts[h] for h in user_turn_hashes(messages) if h in texts)
            if found:
                shared.append(f"{rid!r} (its text is in {found[0]})")
    if shared:
        raise CalibrationOverlapError(
            f"{len(shared)} of {len(items)} calibration prompts are evaluation prompts: {', '.join(shared[:5])}"
            f"{' ...' if len(shared) > 5 else ''}. Calibrate on a split no evaluation uses (a mixture's train or "
            "tune split).")


# ---------------------------------------------------------------------- the job


def calibrate(name: str, spec: LengthDebiasedSpec, *, prompts: str | Path, policy_dir: str | Path,
              evaluation_files: Sequence[str | Path], build_base: Callable[[Any], Any], tokens: AnswerTokens,
              out: str | Path, generator_options: dict | None = None) -> dict[str, Any]:
    """Fit and write calibration.json for ``reward_models.<name>`` (a ``length_debiased`` entry).

    `build_base(fmt)` builds the base reward with the policy's thinking format; it is called after
    generation, so the policy and the reward model are never in memory together. `tokens` counts
    answer tokens in the spec's ``tokenizer_model``.
    """
    from rlmt.generation.base import SamplingParams
    from rlmt.generation.files import generate_file, read_generations, read_prompts
    from rlmt.thinking import ThinkingFormat

    cal, out = spec.calibration, Path(out)
    items = read_prompts(prompts)
    if cal.n_prompts is not None:
        items = items[: cal.n_prompts]
    if len(items) < 2:
        raise ValueError(f"{prompts}: {len(items)} calibration prompts; a fit needs at least 2")
    check_disjoint(items, evaluation_files)

    out.parent.mkdir(parents=True, exist_ok=True)
    answers_file = out.with_name("answers.jsonl")
    params = SamplingParams(temperature=cal.temperature, top_p=1.0, max_new_tokens=cal.max_new_tokens, seed=cal.seed)
    generate_file(policy_dir, items, answers_file, params, **(generator_options or {}))
    wanted = {rid for rid, _ in items}
    rows = [r for r in read_generations(answers_file) if r["id"] in wanted]

    reward = build_base(ThinkingFormat.load(policy_dir))
    try:
        extractions = [reward.extract(r["output"]) for r in rows]
        usable = [r for r, e in zip(rows, extractions) if e.well_formed]
        batch = reward.score([r["prompt"] for r in usable], [r["output"] for r in usable])
    finally:
        reward.close()
    lengths = tokens.lengths([e.answer for e in batch.extractions])
    fit = fit_length_line(batch.scores, lengths)
    result = {**fit, "reward": name, "base": spec.base, "tokenizer_model": spec.tokenizer_model,
              "policy": cal.policy, "mixture": cal.mixture, "split": cal.split, "n_prompts": len(items),
              "n_malformed_excluded": len(rows) - len(usable), "length_unit": "answer tokens (tokenizer_model)",
              "evaluation_files": [str(p) for p in evaluation_files]}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    return result


# ---------------------------------------------------------------------- the plan (rule reward_calibration)


def calibrated_rewards(cfg) -> list[str]:
    """The ``length_debiased`` entries of a config: one calibration job each."""
    return sorted(n for n, s in cfg.reward_models.items() if getattr(s, "kind", None) == "length_debiased")


def calibration_inputs(plan, name: str) -> dict[str, Any]:
    """The files rule ``reward_calibration`` reads for `name`, as paths under the plan's root.

    ``evaluation``: every mixture's val split and every benchmark's items (checked disjoint from the
    calibration prompts); ``reward_inputs``: the base reward's own inputs by key
    (:func:`rlmt.rewards.reward_inputs`).
    """
    from rlmt.rewards import reward_inputs

    cfg = plan.cfg
    spec = cfg.reward_models[name]
    cal = spec.calibration
    where = f"reward_models.{name}"
    if cal.mixture not in cfg.mixtures:
        raise ValueError(f"{where}.calibration.mixture: {cal.mixture!r} is not defined; "
                         f"allowed: {sorted(cfg.mixtures)}")
    if cal.split == "tune" and getattr(cfg.mixtures[cal.mixture], "n_tune", 1) == 0:
        raise ValueError(f"{where}.calibration.split: 'tune', but mixtures.{cal.mixture}.n_tune is 0")
    if spec.tokenizer_model not in cfg.models:
        raise ValueError(f"{where}.tokenizer_model: {spec.tokenizer_model!r} is not defined; "
                         f"allowed: {sorted(cfg.models)}")
    policies = sorted({*cfg.models, *plan.zero_policies(), *plan.sft_policies()})
    if cal.policy not in policies:
        raise ValueError(f"{where}.calibration.policy: {cal.policy!r} is neither a `models` entry nor a start policy "
                         f"of the grid; allowed: {policies}")
    mixtures = f"{plan.root}/data/mixtures"
    evaluation = [f"{mixtures}/{m}/val.parquet" for m in sorted(cfg.mixtures)]
    evaluation += [plan.items_file(b) for b in plan.benchmarks]
    base = {key: f"{plan.root}/{path}" for key, path in reward_inputs(spec.base, cfg.reward_models).items()}
    return {"prompts": f"{mixtures}/{cal.mixture}/{cal.split}.parquet", "policy": plan.model_dir(cal.policy),
            "tokenizer": plan.model_dir(spec.tokenizer_model), "evaluation": evaluation, "base_inputs": base,
            "out": f"{plan.root}/{calibration_file(name)}"}


__all__ = ["CALIBRATION_FILE", "CalibrationOverlapError", "calibrate", "calibrated_rewards", "calibration_inputs",
           "check_disjoint", "fit_length_line", "user_turn_hashes"]
