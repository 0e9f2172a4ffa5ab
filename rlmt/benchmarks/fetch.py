"""``rlmt data fetch-benchmarks``: download the rule-based benchmarks from their official sources.

Run once on a networked machine; the result is a data directory the loaders read (point
``data_dir`` / ``$RLMT_DATA_DIR`` at it). Never run in tests: they read ``../shared/data`` and
small fixtures. Each benchmark lands in the folder and file name its loader looks for first among
the upstream names, and nltk's ``punkt_tab`` (two IFEval checkers) and the perceptron tagger (one
IFBench checker) land in ``<out>/nltk_data``, which the IFEval/IFBench loaders add to nltk's path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm


@dataclass(frozen=True)
class Source:
    """One Hugging Face dataset split and where it lands under the data directory."""

    repo: str
    split: str
    target: str  # relative path of the JSON-lines file written
    config: str | None = None
    all_configs: bool = False  # MMLU-Redux: one config per subject, concatenated with `category`


SOURCES: dict[str, Source] = {
    "ifeval": Source("google/IFEval", "train", "benchmarks/ifeval/input_data.jsonl"),
    "ifbench": Source("allenai/IFBench_test", "train", "benchmarks/ifbench/IFBench_test.jsonl"),
    "mmlu-redux": Source("edinburgh-dawg/mmlu-redux-2.0", "test", "benchmarks/mmlu_redux/data.jsonl", all_configs=True),
    "math-500": Source("HuggingFaceH4/MATH-500", "test", "benchmarks/math_500/test.jsonl"),
    "zebralogic": Source("WildEval/ZebraLogic", "test", "benchmarks/zebra_logic/grid_mode.jsonl", config="grid_mode"),
    "popqa": Source("akariasai/PopQA", "test", "benchmarks/popqa/test.jsonl"),
}
NLTK_RESOURCES = ("punkt_tab", "averaged_perceptron_tagger_eng", "stopwords")


def fetch_benchmarks(out: str | Path, only: list[str] | None = None, *, nltk_data: bool = True) -> dict[str, Path]:
    """Download the benchmarks (all, or ``only``) into ``out``; returns name -> written path."""
    unknown = sorted(set(only or []) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; fetchable: {sorted(SOURCES)}")
    import datasets

    out = Path(out)
    written: dict[str, Path] = {}
    for name in tqdm(only or list(SOURCES), desc="benchmarks"):
        source = SOURCES[name]
        configs = datasets.get_dataset_config_names(source.repo) if source.all_configs else [source.config]
        target = out / source.target
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", encoding="utf-8") as fh:
            for config in configs:
                split = datasets.load_dataset(source.repo, config, split=source.split)
                for row in split:
                    if source.all_configs:
                        row = {**row, "category": config}
                    fh.write(json.dumps(row, default=str) + "\n")
        written[name] = target
    if nltk_data:
        import nltk

        nltk_dir = out / "nltk_data"
        for resource in NLTK_RESOURCES:
            if not nltk.download(resource, download_dir=str(nltk_dir), quiet=True):
                raise RuntimeError(f"nltk could not download {resource!r} into {nltk_dir}")
        written["nltk_data"] = nltk_dir
    return written
