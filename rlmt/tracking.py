"""MLflow tracking: one run per job, nested under one parent run per cell.

The default store is SQLite in the working directory (``sqlite:///mlruns.db``; browse it with
``mlflow ui --backend-store-uri sqlite:///mlruns.db``); ``MLFLOW_TRACKING_URI`` (or the config's
``tracking.tracking_uri``) points elsewhere, e.g. a server on a cluster.

Every job opens its run with :func:`stage_run`. Runs carry the tags ``rlmt.cell``, ``rlmt.stage``,
``rlmt.rule`` and ``rlmt.input.<name>`` (digests of the inputs); output digests are added with
:func:`log_outputs`. Several jobs may start at once (Snakemake runs them in parallel): creating
the shared parent run and first touching a SQLite store happen under a file lock.

A job killed outright (``kill -9``, an out-of-memory kill) cannot end its own run.
Every run records ``rlmt.host``, ``rlmt.pid`` and ``rlmt.pid_namespace``; each new job ends as
KILLED (tag ``rlmt.ended``) the RUNNING runs of its host and pid namespace whose process is gone,
so a resumed job's tree shows the dead attempt for what it was. Runs of other hosts are left
alone: their processes cannot be checked from here.

Beyond tags, runs record what they consumed and made in MLflow's own terms: data files as dataset
inputs (:func:`log_dataset_input`: source = the file, digest = its sha256, profile = rows/columns),
checkpoints as external logged models (:func:`log_checkpoint_model`: the directory's path and
:func:`model_digest`, no copy of the weights; ``eval collect`` links a model's scores to it), and,
on training and generation runs, system metrics (``stage_run(system_metrics=<seconds>)``).

The job's log tells the same story (:mod:`rlmt.joblog`): :func:`stage_run` logs the run it opened
with its inputs' digests, :func:`log_params` the settings, :func:`log_outputs` records what the job
wrote for the log's last line, and the run's end is logged with its status and duration.

Secrets never reach MLflow: :func:`redact` drops parameters whose name looks like a credential and
masks any value equal to a credential found in the environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rlmt import joblog

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlruns.db"
DEFAULT_EXPERIMENT = "rlmt"
# MLflow 3's UI opens an experiment by its kind: a model-training one on its runs table (an
# unmarked one on the GenAI traces overview). The value is one the UI bundle knows.
TAG_EXPERIMENT_KIND, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
CELL_AXES = ("algo", "base", "start", "think", "rm", "mixture")
TAG_CELL, TAG_STAGE, TAG_RULE, TAG_PARENT = "rlmt.cell", "rlmt.stage", "rlmt.rule", "rlmt.is_parent"
TAG_HOST, TAG_PID, TAG_PID_NS, TAG_ENDED = "rlmt.host", "rlmt.pid", "rlmt.pid_namespace", "rlmt.ended"
# Credential-like names: "token" alone is not one (max_new_tokens is a setting), an access token is.
SECRET_NAME = re.compile(
    r"(api[_-]?key|secret|password|passwd|authorization|credential|bearer|"
    r"(access|auth|api|hf|hub|bearer|session|refresh)[_-]?token|(^|[_.-])token$)", re.I)
MAX_PARAM_LEN = 6000


# ---------------------------------------------------------------------- digests


# A file's sha256 and line count, by (path, size, mtime, ctime, inode): a job that tags an input and
# then logs it as a dataset (or logs it twice) reads it once. A file changed in the last second is not
# cached (a rewrite within one timestamp tick would keep its key: git's "racy" case).
_FILE_FACTS: dict[tuple, tuple[str, int]] = {}
_RACY_NS = 1_000_000_000


def _hash_file(path: Path, chunk: int = 1 << 20) -> tuple[str, int]:
    """(sha256 hex, number of newline bytes) of a file, read once in chunks."""
    h, lines = hashlib.sha256(), 0
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
            lines += block.count(b"\n")
    return h.hexdigest(), lines


def _file_facts(path: Path, chunk: int = 1 << 20) -> tuple[str, int]:
    """:func:`_hash_file`, computed once per version of the file in this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    facts = _FILE_FACTS.get(key)
    if facts is None:
        facts = _hash_file(path, chunk)
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS:
            _FILE_FACTS[key] = facts
    return facts


def digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, or of a directory's files (names and contents, sorted); 'missing' if absent."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        return _file_facts(path, chunk)[0]
    elif path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode())
            h.update(digest(p).encode())
    else:
        return "missing"
    return h.hexdigest()


MODEL_DIGEST_WHOLE = 4 << 20  # files up to this size are hashed whole (configs, tokenizer, index)
MODEL_DIGEST_SAMPLE = 1 << 20  # of a larger file (a weight shard): its first and last MiB


SNAKEMAKE_TIMESTAMP = ".snakemake_timestamp"


def model_digest(path: str | Path) -> str:
    """sha256 of a model directory that does not read its weights whole; 'missing' if absent.

    Covers every file's relative name and size, the whole content of the files up to 4 MiB
    (config.json, the safetensors index, tokenizer files, selected.json) and, of each larger file,
    its first and last MiB: the safetensors header (names, shapes, dtypes) and tensor values, which
    training changes everywhere. A file is hashed whole when `path` is one.
    """
    path = Path(path)
    if path.is_file():
        return digest(path)
    if not path.is_dir():
        return "missing"
    h = hashlib.sha256()
    # Snakemake marks a finished directory() output with .snakemake_timestamp after the job: not the model's
    for p in sorted(q for q in path.rglob("*") if q.is_file() and q.name != SNAKEMAKE_TIMESTAMP):
        size = p.stat().st_size
        h.update(f"{p.relative_to(path)}\0{size}\0".encode())
        if size <= MODEL_DIGEST_WHOLE:
            h.update(_file_facts(p)[0].encode())
            continue
        with p.open("rb") as f:
            h.update(f.read(MODEL_DIGEST_SAMPLE))
            f.seek(size - MODEL_DIGEST_SAMPLE)
            h.update(f.read(MODEL_DIGEST_SAMPLE))
    return h.hexdigest()


# ---------------------------------------------------------------------- secrets


def _secret_values() -> set[str]:
    return {v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 8}


def redact(params: Mapping[str, Any]) -> dict[str, Any]:
    """Drop credential-like names and mask credential values taken from the environment."""
    secrets = _secret_values()
    out: dict[str, Any] = {}
    for key, value in params.items():
        if SECRET_NAME.search(key) and not key.endswith("_env"):
            continue
        text = str(value)
        for s in secrets:
            if s in text:
                text = text.replace(s, "***")
                value = text
        out[key] = value
    return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> dotted keys (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ---------------------------------------------------------------------- store


def tracking_uri(configured: str | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_URI


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """A cross-process lock beside a local SQLite store (no-op for servers)."""
    if uri.startswith("sqlite:///"):
        lock_path = Path(uri[len("sqlite:///"):]).with_suffix(".lock")
    else:
        lock_path = Path(tempfile.gettempdir()) / f"rlmt-mlflow-{hashlib.sha1(uri.encode()).hexdigest()[:12]}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _retry(fn, *args, attempts: int = 8, **kwargs):
    """SQLite under concurrent writers can report 'database is locked': back off and retry."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # mlflow wraps sqlalchemy errors in MlflowException
            if "locked" not in str(err).lower() or i == attempts - 1:
                raise
            time.sleep(0.2 * 2**i)
    return None


def _setup(uri: str, experiment: str):
    import mlflow
    from mlflow.tracking import MlflowClient

    # mlflow.set_tracking_uri also writes $MLFLOW_TRACKING_URI (for its child processes); the store is
    # this call's choice, not the process's: put the variable back, so that a later run in the same
    # process (a test session, a notebook) still resolves its own uri through tracking_uri().
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    with _store_lock(uri):
        client = MlflowClient(uri)
        exp = _retry(client.get_experiment_by_name, experiment)
        if exp is None:
            exp_id = _retry(client.create_experiment, experiment, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
        else:
            exp_id = exp.experiment_id
            if exp.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND:  # a store made before the mark
                _retry(client.set_experiment_tag, exp_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    return client, exp_id


def parent_run_id(cell: str, *, uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """The id of the cell's parent run, creating it (once, even under concurrency)."""
    uri = tracking_uri(uri)
    client, exp_id = _setup(uri, experiment)
    with _store_lock(uri):
        found = _retry(client.search_runs, [exp_id],
                       filter_string=f"tags.`{TAG_CELL}` = '{cell}' and tags.`{TAG_PARENT}` = 'true'", max_results=1)
        if found:
            return found[0].info.run_id
        run = _retry(client.create_run, exp_id, run_name=cell, tags={TAG_CELL: cell, TAG_PARENT: "true"})
        _retry(client.set_terminated, run.info.run_id, "FINISHED")
        return run.info.run_id


@contextlib.contextmanager
def stage_run(
    stage: str,
    *,
    cell: str | None = None,
    rule: str | None = None,
    run_name: str | None = None,
    inputs: Mapping[str, str | Path] | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    system_metrics: float | None = None,
):
    """Open the MLflow run of one job; nested under the cell's parent run when `cell` is given.

    Yields the active ``mlflow.ActiveRun``; metrics and artifacts go through ``mlflow.log_*`` as
    usual. A failing job ends its run as FAILED and re-raises.

    Under a launcher (``accelerate launch``, torchrun: ``RANK`` set) the job is all its processes
    and has one run: the main process (rank 0) opens it and computes the input digests; every
    other rank yields None, has no active run and so logs nothing (the trainers' MLflow calls
    all check for an active run).

    `system_metrics`: the sampling interval in seconds of MLflow's system metrics (``system/*``:
    CPU, memory, disk, network, GPU when there is one) for this run, or None for none (the
    training and generation commands pass ``tracking.system_metrics_interval_s``). The sampling
    thread is stopped and flushed before the run ends; a run shorter than one interval has none.
    ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` has no effect here: this argument decides.
    """
    import mlflow

    if not is_main_process():
        yield None
        return
    uri = tracking_uri(uri)
    _, exp_id = _setup(uri, experiment)
    all_tags = {TAG_STAGE: stage, TAG_RULE: rule or stage, TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid()),
                TAG_PID_NS: _pid_namespace(), **(tags or {})}
    parent = None
    if cell:
        all_tags[TAG_CELL] = cell
        parent = parent_run_id(cell, uri=uri, experiment=experiment)
    for name, path in (inputs or {}).items():
        # model_digest: a model directory is identified without reading its weights whole
        all_tags[f"rlmt.input.{name}"] = f"{path}@{model_digest(path)[:16]}"
    with _store_lock(uri):
        end_orphaned_runs(uri=uri, experiment=experiment)
        run = _retry(mlflow.start_run, experiment_id=exp_id, run_name=run_name or stage,
                     parent_run_id=parent, nested=parent is not None, tags=all_tags, log_system_metrics=False)
    started = time.monotonic()
    joblog.adopt_library_loggers()
    log.info("stage %s, cell %s: MLflow run %s (%s) in experiment %s of %s; inputs: %s", stage, cell or "-",
             run_name or stage, run.info.run_id, experiment, uri,
             ", ".join(f"{n}={all_tags[f'rlmt.input.{n}']}" for n in (inputs or {})) or "none")
    monitor = _start_system_metrics(run.info.run_id, system_metrics, uri) if system_metrics else None
    try:
        if params:
            log_params(params)
        yield run
    except BaseException:
        _stop_system_metrics(monitor)
        _retry(mlflow.end_run, "FAILED")
        _extend_parent(uri, parent)
        log.error("MLflow run %s ended FAILED after %.1f s", run.info.run_id, time.monotonic() - started)
        raise
    else:
        _stop_system_metrics(monitor)
        _retry(mlflow.end_run, "FINISHED")
        _extend_parent(uri, parent)
        log.info("MLflow run %s ended FINISHED after %.1f s", run.info.run_id, time.monotonic() - started)


def _start_system_metrics(run_id: str, interval: float, uri: str):
    """MLflow's system-metrics sampler for `run_id` (a daemon thread), or None where it cannot start.

    ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``, when set, overrides `interval` (MLflow's rule).
    """
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=float(interval), tracking_uri=uri)
        monitor.start()
    except Exception as err:  # psutil missing, a monitor failing to initialise: the job runs on without
        log.warning("system metrics not logged for run %s: %s", run_id, err)
        return None
    return monitor


def _stop_system_metrics(monitor) -> None:
    """Stop the sampler and flush what it buffered, while the run is still open (joins the thread)."""
    if monitor is None:
        return
    try:
        monitor.finish()
        # MLflow publishes only whole sampling intervals: what the sampler collected in the last, cut-short one
        # (all of a job shorter than one interval) would be dropped; publish it, and take one sample for a job
        # that ended before the sampler's first
        rest = monitor.aggregate_metrics()
        if not rest and getattr(monitor, "_logging_step", 1) == 0:
            monitor.collect_metrics()
            rest = monitor.aggregate_metrics()
        if rest:
            monitor.publish_metrics(rest)
            monitor.mlflow_logger.flush()
    except Exception as err:
        log.warning("system metrics: stopping the sampler failed: %s", err)


def _extend_parent(uri: str, parent: str | None) -> None:
    """Stretch the cell's parent run to end when its latest child ended (it started before the first).

    The parent is created, FINISHED, by its first child job; each child that ends moves the
    parent's end time to its own end, so the parent's duration in the UI spans all its children.
    """
    if parent is None:
        return
    from mlflow.tracking import MlflowClient

    with _store_lock(uri):
        client = MlflowClient(uri)
        info = _retry(client.get_run, parent).info
        now = int(time.time() * 1000)
        if info.end_time is None or info.end_time < now:
            _retry(client.set_terminated, parent, "FINISHED", end_time=now)


def cell_axes(cell: Any) -> dict[str, str]:
    """The grid axes of a cell (an ``rlmt.config.Cell``) as MLflow params; think is 'think'/'nothink'."""
    axes = {k: getattr(cell, k) for k in CELL_AXES}
    axes["think"] = "think" if axes["think"] else "nothink"
    return {k: str(v) for k, v in axes.items()}


def update_cell_parent(cell: Any, metrics: Mapping[str, float | None], *, uri: str | None = None,
                       experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Put a cell's axes (params) and final scores (metrics) on its parent run; returns the run id.

    Called by the report job, so that the runs table sorts and compares cells by their scores
    without opening a child run. A metric that is None (a benchmark the cell lacks) is left out;
    params are logged once (MLflow params are immutable; the axes of a cell never change).
    """
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(uri)
    run_id = parent_run_id(cell.name, uri=uri, experiment=experiment)
    client = MlflowClient(uri)
    have = _retry(client.get_run, run_id).data.params
    params = [Param(k, v) for k, v in cell_axes(cell).items() if k not in have]
    now = int(time.time() * 1000)
    values = [Metric(k, float(v), now, 0) for k, v in metrics.items()
              if v is not None and not (isinstance(v, float) and v != v)]
    with _store_lock(uri):
        _retry(client.log_batch, run_id, metrics=values, params=params)
    return run_id


def is_main_process() -> bool:
    """True unless a launcher started this process as a rank other than 0 (``RANK``)."""
    return os.environ.get("RANK", "0") in ("", "0")


def end_orphaned_runs(*, uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT) -> list[str]:
    """End as KILLED the RUNNING runs started on this host by a process that no longer exists.

    Returns their run ids. A pid that is alive again (reused by another process) keeps its run
    RUNNING: only a certainly dead job is ended.
    """
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(uri)
    client = MlflowClient(uri)
    exp = _retry(client.get_experiment_by_name, experiment)
    if exp is None:
        return []
    host = socket.gethostname()
    # Same host *and* same pid namespace: containers on one node can share a hostname while
    # their pids mean different processes.
    running = _retry(client.search_runs, [exp.experiment_id],
                     filter_string=f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}' "
                                   f"and tags.`{TAG_PID_NS}` = '{_pid_namespace()}'")
    ended = []
    for run in running:
        pid = run.data.tags.get(TAG_PID, "")
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        _retry(client.set_tag, run.info.run_id, TAG_ENDED,
               f"process {pid} on {host} was gone when a later job started; marked KILLED")
        _retry(client.set_terminated, run.info.run_id, "KILLED")
        ended.append(run.info.run_id)
    return ended


def _pid_namespace() -> str:
    """The pid namespace this process lives in (Linux), "-" where there is none to read."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def log_params(params: Mapping[str, Any]) -> None:
    """Log (flattened, redacted, length-capped) parameters to the active run."""
    import mlflow

    flat = redact(flatten(params))
    clean = {k: (json.dumps(v) if isinstance(v, (list, tuple)) else v) for k, v in flat.items()}
    clean = {k: str(v)[:MAX_PARAM_LEN] for k, v in clean.items()}
    log.info("settings: %s", ", ".join(f"{k}={v}" for k, v in clean.items() if flat[k] is not None) or "none")
    log.debug("settings left unset: %s", ", ".join(k for k in clean if flat[k] is None) or "none")
    items = list(clean.items())
    for i in range(0, len(items), 90):  # MLflow accepts at most 100 params per batch
        _retry(mlflow.log_params, dict(items[i:i + 90]))


def log_outputs(outputs: Mapping[str, str | Path]) -> None:
    """Tag the active run with the digests of its outputs (large files are referenced, not copied).

    Without an active run (a rank other than the main one) nothing is hashed or logged.
    """
    import mlflow

    if mlflow.active_run() is None:
        return
    tags = {f"rlmt.output.{n}": f"{p}@{model_digest(p)[:16]}" for n, p in outputs.items()}
    _retry(mlflow.set_tags, tags)
    joblog.record_outputs({n: tags[f"rlmt.output.{n}"] for n in outputs})


# ---------------------------------------------------------------------- datasets and checkpoints

DATASET_DIGEST_LEN = 16  # MLflow stores a dataset digest in 36 characters; the rlmt.input tags show 16 too
TAG_CKPT_PATH, TAG_CKPT_DIGEST = "rlmt.checkpoint.path", "rlmt.checkpoint.digest"
CHECKPOINT_MODEL_TYPE = "rlmt-checkpoint"


def _warn(msg: str, *args) -> None:
    log.warning(msg, *args)


def dataset_profile(path: str | Path) -> dict[str, Any]:
    """What a data file holds, read cheaply: bytes; rows and columns of a parquet file (its footer);
    lines and the first row's keys of a JSONL file. A JSON file is not parsed (it can be large)."""
    path = Path(path)
    size = path.stat().st_size
    profile: dict[str, Any] = {"num_bytes": size, "format": path.suffix.lstrip(".").lower() or "file"}
    if profile["format"] == "parquet":
        import pyarrow.parquet as pq

        meta = pq.read_metadata(path)
        profile["num_rows"] = meta.num_rows
        profile["columns"] = {f.name: str(f.type) for f in meta.schema.to_arrow_schema()}
    elif profile["format"] == "jsonl":
        lines = _file_facts(path)[1]
        if size:
            with path.open("rb") as f:
                f.seek(size - 1)
                lines += f.read(1) != b"\n"  # a last line without its newline
            with path.open("rb") as f:
                first = f.readline(1 << 20)
            with contextlib.suppress(ValueError):
                row = json.loads(first)
                if isinstance(row, dict):
                    profile["columns"] = sorted(row)
        profile["num_lines"] = lines
    return profile


def log_dataset_input(path: str | Path | None, name: str | None = None, context: str = "training",
                      *, tags: Mapping[str, str] | None = None) -> str | None:
    """Log a data file (parquet, JSONL, JSON) the active run consumes as an MLflow dataset input.

    The dataset's source is the file's absolute path (nothing is copied); its digest is the first
    16 hex digits of the file's sha256 (the same value as the run's ``rlmt.input.*`` tag, computed
    once per process and file version); its profile is :func:`dataset_profile`. `name` defaults
    to ``<parent dir>-<stem>`` (``results/data/mixtures/demo/train.parquet`` -> ``demo-train``,
    the name the curate run gives it). `context`: ``training``, ``validation``, ``evaluation``...

    Returns the digest, or None where nothing was logged: no active run (a rank other than the
    main one, a library call), no path (an optional input), or a file that cannot be read (a
    warning: logging never fails the job).
    """
    import mlflow

    if path is None or mlflow.active_run() is None:
        return None
    path = Path(path)
    try:
        if not path.is_file():
            raise FileNotFoundError(f"not a file: {path}")
        sha = digest(path)[:DATASET_DIGEST_LEN]
        profile = dataset_profile(path)
    except Exception as err:  # unreadable, a corrupt parquet footer: record nothing, say so
        _warn("dataset input %s not logged: %s", path, err)
        return None
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.data.meta_dataset import MetaDataset

    class FileDataset(MetaDataset):
        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(profile)}

    source = get_dataset_source_from_json(json.dumps({"uri": str(path.resolve())}), "local")
    dataset = FileDataset(source, name=name or f"{path.parent.name}-{path.stem}", digest=sha)
    _retry(mlflow.log_input, dataset, context=context, tags=dict(tags) if tags else None)
    return sha


def _model_name(name: str) -> str:
    """A logged model's name: MLflow refuses / : . % and quotes in it."""
    return re.sub(r"[/:.%\"']", "-", name) or "checkpoint"


def find_checkpoint_model(path: str | Path, *, model_digest_hex: str | None = None,
                          experiment_id: str | None = None, uri: str | None = None):
    """The newest logged model recorded for this checkpoint directory (same path and digest), or None."""
    import mlflow
    from mlflow.tracking import MlflowClient

    path = Path(path).resolve()
    d = model_digest_hex or model_digest(path)
    client = MlflowClient(uri) if uri else MlflowClient()
    if experiment_id is None:
        run = mlflow.active_run()
        if run is None:
            return None
        experiment_id = run.info.experiment_id
    found = _retry(client.search_logged_models, [experiment_id],
                   filter_string=f"tags.`{TAG_CKPT_DIGEST}` = '{d}'",
                   order_by=[{"field_name": "creation_time", "ascending": False}])
    return next((m for m in found if m.tags.get(TAG_CKPT_PATH) == str(path)), None)


def log_checkpoint_model(path: str | Path, name: str, *, role: str = "output", step: int | None = None,
                         params: Mapping[str, Any] | None = None) -> str | None:
    """Record a checkpoint directory as an MLflow logged model of the active run; returns its model id.

    The model is *external*: MLflow keeps its metadata (tags ``rlmt.checkpoint.path`` = the
    directory's absolute path, ``rlmt.checkpoint.digest`` = :func:`model_digest`, model type
    ``rlmt-checkpoint``, `params`) and never copies the weights. ``role="output"`` (the job that
    made the checkpoint) links it as an output of the run, at `step`; ``role="input"`` (a job
    that evaluates it, e.g. ``eval collect``) reuses the model already recorded for that path and
    digest, creating one only if none exists, and links it as an input of the run. Metrics logged
    with ``model_id=`` the returned id appear on the model (the scores behind a table's number).

    None where nothing was recorded: no active run, or a path that is not a directory (a warning).
    """
    import mlflow
    from mlflow.entities import LoggedModelInput, LoggedModelOutput
    from mlflow.tracking import MlflowClient

    if role not in ("output", "input"):
        raise ValueError(f"role must be 'output' or 'input', got {role!r}")
    run = mlflow.active_run()
    if run is None:
        return None
    path = Path(path).resolve()
    if not path.is_dir():
        _warn("checkpoint %s not recorded as a logged model: not a directory", path)
        return None
    d = model_digest(path)
    client = MlflowClient()
    model = find_checkpoint_model(path, model_digest_hex=d, experiment_id=run.info.experiment_id) \
        if role == "input" else None
    if model is None:
        clean = {k: str(v)[:MAX_PARAM_LEN] for k, v in redact(flatten(params or {})).items()}
        model = _retry(mlflow.create_external_model, name=_model_name(name), source_run_id=run.info.run_id,
                       tags={TAG_CKPT_PATH: str(path), TAG_CKPT_DIGEST: d}, params=clean or None,
                       model_type=CHECKPOINT_MODEL_TYPE, experiment_id=run.info.experiment_id)
    if role == "output":
        _retry(client.log_outputs, run.info.run_id, [LoggedModelOutput(model.model_id, step=step or 0)])
    else:
        _retry(client.log_inputs, run.info.run_id, models=[LoggedModelInput(model.model_id)])
    return model.model_id
