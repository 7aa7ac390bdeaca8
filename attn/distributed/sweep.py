"""Sweep: Ray Tune runs the trials of an experiment's ``sweep:`` section, Optuna proposes them, ASHA
stops the weak ones early, and MLflow records one parent run per sweep with a child run per trial.

    runs/<experiment>/<sweep name>/attn_run.json     sweep name, MLflow parent run id, config
    runs/<experiment>/<sweep name>/tune/             Tune's experiment state (what --resume restores)
    runs/<experiment>/<sweep name>/tune-2/, ...      the trials a resumed sweep added (sweep.num_trials raised)
    runs/<experiment>/<sweep name>/trials/           one Ray Train run per trial (its checkpoints)
    runs/<experiment>/<sweep name>/trials.csv        the summary table (also an MLflow artifact)
    runs/<experiment>/<sweep name>/best_config.yaml  the best trial's config, ready to run

The layers: :func:`run_sweep` (here) builds the Tuner; :func:`attn.distributed.trial.run_trial` is the
per-trial driver; :func:`attn.distributed.worker.train_loop_per_worker` runs on every DDP rank.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from ray.tune import Callback

from attn.config import ExperimentConfig, SweepConfig, dump_config
from attn.distributed.lifecycle import cluster_capacity, plan_run, ray_session, tracked
from attn.distributed.trial import find_child_run, run_trial, trial_config
from attn.errors import ConfigError, Interrupted
from attn.tracking import (
    child_runs,
    end_killed,
    end_run,
    ensure_experiment,
    log_artifact,
    log_metric,
    reopen_run,
    set_tags,
    start_run,
    ui_link,
)

TUNE_DIR = "tune"


class SearchSpace:
    """Optuna define-by-run sampling of a sweep's space (picklable, so Tune can save the searcher).

    Unconditional keys are drawn first; a key with ``when`` only when the keys it names took one of
    the listed values (otherwise it keeps the base config's value).
    """

    def __init__(self, sweep: SweepConfig):
        self.dims = {k: d.model_dump(by_alias=True, exclude_none=True) for k, d in sweep.space.items()}

    def __call__(self, trial) -> None:
        drawn: dict[str, Any] = {}
        for key, dim in sorted(self.dims.items(), key=lambda kv: "when" in kv[1]):
            if any(drawn.get(k) not in allowed for k, allowed in dim.get("when", {}).items()):
                continue
            if "choice" in dim:
                drawn[key] = trial.suggest_categorical(key, dim["choice"])
            elif "int" in dim:
                low, high = dim["int"]
                drawn[key] = trial.suggest_int(key, low, high, step=dim.get("step", 1))
            else:
                log = "loguniform" in dim
                low, high = dim["loguniform" if log else "uniform"]
                drawn[key] = trial.suggest_float(key, low, high, log=log)


def _top_quarter(n: int) -> int:
    """TPE's "good" trials among ``n``: a quarter (Optuna's default, a tenth, leaves a short sweep one)."""
    return min(max(1, math.ceil(0.25 * n)), 25)


def optuna_sampler(sweep: SweepConfig):
    """The sweep's Optuna sampler. TPE starts from a quarter of the trials drawn at random (2 to 10),
    models the best quarter of the trials against the rest, the keys jointly (``multivariate``) and
    each conditional branch apart (``group``: a key with ``when`` is only modelled on the trials that
    drew it), and gives trials that are still running a pessimistic value (``constant_liar``) so that
    parallel trials do not propose the same point."""
    import warnings

    import optuna

    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=sweep.seed)
    with warnings.catch_warnings():  # multivariate, group, constant_liar: "experimental"; gamma: deprecated in 4.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return optuna.samplers.TPESampler(
            seed=sweep.seed, n_startup_trials=max(2, min(10, sweep.num_trials // 4)), gamma=_top_quarter,
            multivariate=True, group=True, constant_liar=True,
        )


@dataclass
class SweepResult:
    name: str
    dir: Path
    parent_run_id: str
    tracking_uri: str
    rows: list[dict[str, Any]]
    best: Optional[dict[str, Any]]
    best_config: Optional[Path]


def concurrency(cfg: ExperimentConfig, total: dict[str, float]) -> int:
    """Trials that fit side by side: each needs its driver's CPUs plus its Train workers' CPUs and GPUs."""
    sw, r = cfg.sweep, cfg.ray
    need_cpu = sw.trial_driver_cpus + r.num_workers * r.cpus_per_worker
    need_gpu = r.num_workers * r.gpus_per_worker
    fits = math.floor(total.get("CPU", 0.0) / need_cpu + 1e-9)
    if need_gpu > 0:
        fits = min(fits, math.floor(total.get("GPU", 0.0) / need_gpu + 1e-9))
    if fits < 1:
        raise ConfigError(
            f"sweep: one trial needs {need_cpu:g} CPUs (sweep.trial_driver_cpus {sw.trial_driver_cpus:g} + "
            f"{r.num_workers} worker(s) x ray.cpus_per_worker {r.cpus_per_worker:g}) and {need_gpu:g} GPUs, but "
            f"the cluster holds at most {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs; lower ray.num_workers, "
            "ray.cpus_per_worker or ray.gpus_per_worker"
        )
    if sw.max_concurrent_trials is not None:
        fits = min(fits, sw.max_concurrent_trials)
    return min(fits, sw.num_trials)


class _TrialEvents(Callback):
    """In the sweep's driver: a console line per trial event, and the trial's MLflow run closed with
    how the trial ended (FINISHED; KILLED and tagged stopped_early when ASHA stopped it; FAILED)."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, metric: str = "best_val_error",
                 mode: str = "min", every_s: float = 60.0):
        self.uri, self.experiment_id, self.parent = uri, experiment_id, parent_run_id
        self.metric, self.mode, self.every_s = metric, mode, every_s
        self.started = self.last_status = time.monotonic()

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self.last_status >= self.every_s:
            self.last_status = time.monotonic()
            print(status_line(trials, self.metric, self.mode, self.last_status - self.started), flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        print(f"sweep: trial {trial.trial_id} started: {_short(trial.config)}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        finished = "test_error" in r
        how = "finished" if finished else f"stopped early after {r.get('training_iteration', '?')} epoch(s)"
        val = r.get("best_val_error")
        shown = f", best val error {val:.2f}%" if isinstance(val, (int, float)) else ""
        print(f"sweep: trial {trial.trial_id} {how}{shown}", flush=True)
        self._close(trial.trial_id, "finished" if finished else "stopped")

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"sweep: trial {trial.trial_id} failed (its log is above)", flush=True)
        self._close(trial.trial_id, "error")

    def _close(self, trial_id: str, how: str) -> None:
        try:
            run = find_child_run(self.uri, self.experiment_id, self.parent, trial_id)
            if run is not None:
                close_trial_run(self.uri, run.run_id, how)
        except Exception as exc:  # noqa: BLE001 - a tracking hiccup must not stop the sweep
            print(f"sweep: could not close the MLflow run of trial {trial_id} ({exc})", flush=True)


def status_line(trials, metric: str, mode: str, elapsed_s: float) -> str:
    """``sweep: 2 running, 3 finished, 1 stopped, 0 errored | best best_val_error 4.2 | 12m30s``:
    the sweep at a glance (``trials``: Tune's trials; a stopped trial ended without its test)."""
    counts = {"running": 0, "finished": 0, "stopped": 0, "errored": 0}
    values = []
    for t in trials:
        r = t.last_result or {}
        if t.status == "ERROR":
            counts["errored"] += 1
        elif t.status == "TERMINATED":
            counts["finished" if "test_error" in r else "stopped"] += 1
        elif t.status == "RUNNING":
            counts["running"] += 1
        if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric]):
            values.append(r[metric])
    best = f"{(min if mode == 'min' else max)(values):.4g}" if values else "-"
    minutes, seconds = divmod(int(elapsed_s), 60)
    return (f"sweep: {', '.join(f'{n} {k}' for k, n in counts.items())} | best {metric} {best} | "
            f"{minutes}m{seconds:02d}s")


def close_trial_run(uri: str, run_id: str, how: str) -> None:
    """how: finished | stopped (by ASHA) | error | interrupted (reopened when the sweep resumes)."""
    if how == "finished":
        end_run(uri, run_id, "FINISHED")
    elif how == "error":
        end_run(uri, run_id, "FAILED")
    elif how == "stopped":
        end_killed(uri, run_id, {"attn.stopped_by": "asha", "attn.status": "stopped_early"})
    else:
        end_killed(uri, run_id, {"attn.status": "interrupted"})


def _short(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def run_sweep(
    cfg: ExperimentConfig,
    *,
    config_file: Optional[str] = None,
    resume: bool = False,
    resume_name: Optional[str] = None,
    overrides: Optional[list[str]] = None,
) -> SweepResult:
    """Run (or continue) the sweep of ``cfg``; return its summary rows and the best trial."""
    plan = plan_run(cfg, "sweep", resume=resume, resume_name=resume_name, overrides=overrides)
    cfg, uri, name, sweep_dir = plan.cfg, plan.uri, plan.name, plan.dir
    with ray_session(cfg, uri), _sigterm_as_sigint(), tracked(uri) as parent:
        limit = concurrency(cfg, cluster_capacity())
        exp_id = ensure_experiment(uri, cfg.tracking.experiment_name or "default", cfg.tracking.artifact_location)
        if plan.resumed:
            parent.run_id = plan.mlflow_run_id
            reopen_run(uri, parent.run_id)
            print(f"resuming sweep {name} (MLflow run {parent.run_id})", flush=True)
        else:
            plan.create_folder()
            parent.run_id = start_run(uri, exp_id, cfg, name, config_file=config_file, extra_tags={"attn.kind": "sweep"})
            plan.write_record(parent.run_id)
            print(f"sweep {name}: {cfg.sweep.num_trials} trials, up to {limit} at a time; MLflow run {parent.run_id} in {uri}", flush=True)
        print(f"MLflow UI: {ui_link(uri, parent.run_id)}", flush=True)
        info = {"name": name, "dir": str(sweep_dir), "uri": uri, "experiment_id": exp_id, "parent_run_id": parent.run_id}
        results = _run_segments(cfg, sweep_dir, info, limit, plan)
        finished = sum(r.num_terminated + r.num_errors for r in results)
        if finished < cfg.sweep.num_trials:
            parent.status = "KILLED"
            _close_interrupted(uri, exp_id, parent.run_id)
            raise Interrupted(
                f"sweep {name} was interrupted after {finished} of {cfg.sweep.num_trials} trials; continue it "
                f"with --resume {name} (finished trials are not run again)"
            )
        rows = _rows([r for grid in results for r in grid], cfg, uri, exp_id, parent.run_id)
        best, best_path = _summarise(cfg, sweep_dir, uri, parent.run_id, rows)
        parent.status = "FINISHED"
        return SweepResult(name, sweep_dir, parent.run_id, uri, rows, best, best_path)


@contextmanager
def _sigterm_as_sigint() -> Iterator[None]:
    """Tune stops gracefully on SIGINT (saving its state for --resume); SIGTERM does the same while
    the sweep runs. Set once Ray runs: ray.init installs a SIGTERM handler of its own that aborts."""
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _segments(sweep_dir: Path) -> list[Path]:
    """The sweep's Tune experiments in order: ``tune/``, then ``tune-2/``, ... (one more each time a
    finished sweep is resumed with a larger ``sweep.num_trials``)."""
    found = [d for d in sweep_dir.glob(f"{TUNE_DIR}*") if d.name == TUNE_DIR or d.name[len(TUNE_DIR) + 1:].isdigit()]
    return sorted(found, key=lambda d: 1 if d.name == TUNE_DIR else int(d.name[len(TUNE_DIR) + 1:]))


def _run_segments(cfg: ExperimentConfig, sweep_dir: Path, info: dict[str, Any], limit: int, plan) -> list:
    """Every segment's results, after running what is left: the newest segment is continued if it was
    cut; if all are done and ``sweep.num_trials`` asks for more trials, a new segment runs them, its
    sampler seeded with every trial so far."""
    from ray import tune

    trainable = _trainable(cfg, info)
    done = _segments(sweep_dir) if plan.resumed else []
    if plan.resumed and not done:
        raise ConfigError(f"--resume: {sweep_dir / TUNE_DIR} holds no Tune state to continue; start the sweep anew")
    grids = []
    for i, path in enumerate(done):
        if not tune.Tuner.can_restore(str(path)):
            raise ConfigError(f"--resume: {path} holds no Tune state to continue; start the sweep anew")
        if i == len(done) - 1:
            tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True).fit()
        grids.append(_saved_results(path, trainable))
    so_far = sum(len(g) for g in grids)
    if grids and so_far >= cfg.sweep.num_trials:
        return grids
    if grids and grids[-1].num_terminated + grids[-1].num_errors < len(grids[-1]):
        return grids  # the newest segment was cut again: nothing new starts before it is done
    name = TUNE_DIR if not done else f"{TUNE_DIR}-{len(done) + 1}"
    if done:
        print(f"sweep {info['name']}: {so_far} trials done, running {cfg.sweep.num_trials - so_far} more", flush=True)
        plan.write_record(info["parent_run_id"])  # the larger sweep.num_trials is the sweep's from now on
    previous = done[-1] if done else None
    grids.append(_tune(cfg, sweep_dir, info, trainable, limit, name, cfg.sweep.num_trials - so_far, previous))
    return grids


HEAD_RESOURCE = "attn_head"
"""The custom resource the cluster files' on-demand head declares (``ray start --resources``)."""


def trial_driver_resources(cfg: ExperimentConfig, total: dict[str, float]) -> dict[str, float]:
    """What each trial's driver asks Ray for: its CPUs, and on a cluster whose head declares
    :data:`HEAD_RESOURCE` a sliver of it, so that drivers run on the head and a spot worker's reclaim
    never kills one (their Ray Train workers still go to the GPU nodes)."""
    resources = {"cpu": cfg.sweep.trial_driver_cpus}
    if total.get(HEAD_RESOURCE, 0.0) > 0:
        resources[HEAD_RESOURCE] = 0.001
    return resources


def _trainable(cfg: ExperimentConfig, info: dict[str, Any]):
    from ray import tune

    resources = trial_driver_resources(cfg, cluster_capacity())
    if HEAD_RESOURCE in resources:
        print(f"sweep: trial drivers stay on the head (Ray resource {HEAD_RESOURCE})", flush=True)
    return tune.with_resources(tune.with_parameters(run_trial, base=cfg.to_dict(), sweep=info), resources)


def _tune(cfg: ExperimentConfig, sweep_dir: Path, info: dict[str, Any], trainable, limit: int, name: str,
          trials: int, previous: Optional[Path]):
    """A new Tune experiment ``name`` of ``trials`` trials, run to the end or to an interruption; its
    searcher starts from ``previous`` segment's (all the trials it has seen) when there is one."""
    from ray import tune
    from ray.tune.schedulers import AsyncHyperBandScheduler
    from ray.tune.search.optuna import OptunaSearch

    sw = cfg.sweep
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = OptunaSearch(space=SearchSpace(sw), metric=sw.metric, mode=sw.mode, sampler=optuna_sampler(sw))
    if previous is not None:
        search.restore_from_dir(str(previous))
    scheduler = None
    if sw.asha is not None:
        # One Tune result per epoch, plus the final (test) report: max_t leaves room for it, so a trial
        # that trains to the end is never cut before its test evaluation.
        scheduler = AsyncHyperBandScheduler(
            time_attr="training_iteration",
            metric=sw.metric,
            mode=sw.mode,
            max_t=cfg.train.epochs + 1,
            grace_period=sw.asha.grace_period,
            reduction_factor=sw.asha.reduction_factor,
        )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search,
            scheduler=scheduler,
            num_samples=trials,
            max_concurrent_trials=min(limit, trials),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(sweep_dir),
            callbacks=[_TrialEvents(info["uri"], info["experiment_id"], info["parent_run_id"], sw.metric, sw.mode)],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=sw.trial_retries or 0),
        ),
    )
    tuner.fit()
    return _saved_results(sweep_dir / name, trainable)


def _saved_results(path: Path, trainable):
    """The segment's results as Tune saved them last, which is what a resume continues from. Not the
    grid ``fit()`` returns: after an interruption Tune saves its state and then stops the trials still
    running, so that grid calls a trial cut mid-run (or started as the signal came) TERMINATED, as if it
    had finished."""
    from ray import tune

    return tune.Tuner.restore(str(path), trainable).get_results()


def _rows(results, cfg: ExperimentConfig, uri: str, exp_id: str, parent: str) -> list[dict[str, Any]]:
    """One summary row per trial: params, status, epochs, validation and test numbers, MLflow run."""
    keys = list(cfg.sweep.space)
    rows = []
    for result in results:
        m = result.metrics or {}
        trial_id = m.get("trial_id") or Path(result.path).name
        if result.error is not None:
            status = "error"
        elif "test_error" in m:
            status = "finished"
        else:
            status = "stopped"
        child = find_child_run(uri, exp_id, parent, trial_id)
        row = {"trial_id": trial_id, "status": status}
        row.update({k: result.config.get(k, "") for k in keys})
        row.update(
            epochs=(int(m["epoch"]) + 1) if "epoch" in m else 0,
            metric=m.get(cfg.sweep.metric),
            best_val_error=m.get("best_val_error"),
            test_error=m.get("test_error"),
            test_error_mc=m.get("test_error_mc"),
            mlflow_run_id=child.run_id if child is not None else "",
        )
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial_id"])


def _close_interrupted(uri: str, exp_id: str, parent: str) -> None:
    """Trials cut by an interruption left their MLflow runs open: mark them (--resume reopens them)."""
    for run in child_runs(uri, exp_id, parent):
        if run.status == "RUNNING":
            close_trial_run(uri, run.run_id, "interrupted")


def _summarise(cfg: ExperimentConfig, sweep_dir: Path, uri: str, parent: str, rows: list[dict[str, Any]]):
    """Print and store the summary table, log the best trial on the parent run, write its config."""
    sw = cfg.sweep
    scored = [r for r in rows if isinstance(r["metric"], (int, float)) and math.isfinite(r["metric"])]
    best = (min if sw.mode == "min" else max)(scored, key=lambda r: r["metric"]) if scored else None
    columns = list(rows[0]) if rows else ["trial_id"]
    table = sweep_dir / "trials.csv"
    with open(table, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    _print_table(rows, columns, best, sw.metric)
    log_artifact(uri, parent, str(table))
    if scored:
        from attn.viz import parallel_coordinates

        picture = parallel_coordinates(
            scored, list(sw.space), "metric", sweep_dir / "trials_parallel.png", mode=sw.mode, metric_label=sw.metric
        )
        log_artifact(uri, parent, str(picture), "comparison")
    best_path = None
    if best is not None:
        params = {k: best[k] for k in sw.space if best[k] != ""}
        best_cfg = trial_config(copy.deepcopy(cfg.to_dict()), params, f"best-of-{sweep_dir.name}")
        best_cfg.tracking.run_name = None
        best_path = sweep_dir / "best_config.yaml"
        header = (
            f"# Best trial {best['trial_id']} of sweep {sweep_dir.name}: {sw.metric} = {best['metric']:.4g}\n"
            f"# {_short(params)}\n# python run.py {best_path}\n"
        )
        best_path.write_text(header + dump_config(best_cfg))
        log_artifact(uri, parent, str(best_path))
        log_metric(uri, parent, f"best_{sw.metric}", float(best["metric"]))
        tags = {"attn.best_trial": best["trial_id"], "attn.best_run_id": best["mlflow_run_id"]}
        set_tags(uri, parent, tags | {f"attn.best.{k}": str(v) for k, v in params.items()})
        print(f"best trial {best['trial_id']}: {sw.metric} {best['metric']:.4g} ({_short(params)}); config: {best_path}")
    return best, best_path


def _print_table(rows: list[dict[str, Any]], columns: list[str], best, metric: str) -> None:
    shown = [c for c in columns if c != "mlflow_run_id" and not (c == "metric" and metric in columns)]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "-" if v is None or v == "" else str(v)

    body = [[cell(r[c]) for c in shown] for r in rows]
    head = [c if c != "metric" else metric for c in shown]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r, b in zip(rows, body):
        mark = "  <- best" if best is not None and r["trial_id"] == best["trial_id"] else ""
        print("  ".join(x.ljust(w) for x, w in zip(b, widths)) + mark)
