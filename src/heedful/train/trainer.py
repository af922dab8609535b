"""The one trainer every task plugs into.

    task = get_task("translate")(cfg)
    history = Trainer(task, cfg).fit()          # or heedful.train.fit(cfg)
    history["val_loss"], history.best_epoch

What it does for every task: AdamW with decoupled weight decay (none on biases and norms; a
task may supply its own parameter groups with learning-rate scales), a warm-up + inverse-√ or
cosine schedule, gradient clipping and accumulation, bf16 autocast on CPU and GPU, an optional
weight average that is what gets validated and saved, seeded and deterministic runs, progress
bars, TensorBoard (and W&B), per-epoch validation, best-model saving, early stopping, atomic
checkpoints and exact resumption; steps whose loss or gradient is not finite are skipped (and
training stops after ``train.max_nonfinite_steps`` of them in a row); and data parallelism on
PyTorch's own engine when torchrun starts it (``heedful/train/distributed.py``, docs/DISTRIBUTED.md).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from heedful.config import RunConfig, TrainConfig, to_yaml
from heedful.device import autocast, keeping_torch_threads, move_to, resolve_device
from heedful.errors import ConfigError, UserError, note, warn
from heedful.explain.plots import plot_history
from heedful.nn.losses import SPARE_LOGITS
from heedful.tasks.base import Task
from heedful.tasks.registry import get_task
from heedful.train.checkpoint import list_checkpoints, load_latest_checkpoint, save_checkpoint
from heedful.train.compile import compile_model
from heedful.train.distributed import Dist, LossModule, peer_gone, peer_lost_error, rank_batches, rounds
from heedful.train.ema import WeightAverage
from heedful.train.history import History
from heedful.train.init_from import init_model_folder, load_initial_artifacts, load_initial_weights
from heedful.train.logging import RunLogger
from heedful.train.resume import changed_settings, nothing_left
from heedful.train.rundir import RunDirectory, RunDirectoryError, files_under
from heedful.train.schedules import lr_at
from heedful.train.stopping import SigtermHold, TrainingStopped, stop_on_signals


class TrainingDiverged(UserError):
    """The loss or the gradients stayed NaN or infinite for ``train.max_nonfinite_steps`` steps."""


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: biases, norms and 1-D parameters are left alone."""
    decay, no_decay, seen = [], [], set()
    for _, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (decay if param.dim() >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(groups: list[dict[str, Any]], tc: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """The trainer's optimizer over ``groups`` (:func:`parameter_groups`): AdamW with ``train.lr``,
    ``betas`` and ``weight_decay``. The fused kernel on CPU and CUDA — one pass over all parameters,
    5× faster than torch's default (a loop of small ops per parameter) on CPU here."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay, fused=fused)


class Trainer:
    """Trains ``task``'s model as ``cfg.train`` says, writing everything into the run directory."""

    def __init__(self, task: Task, cfg: RunConfig, run_dir: Path | None = None):
        self.task, self.cfg = task, cfg
        self.tc = cfg.train
        self.run_dir = Path(run_dir) if run_dir is not None else cfg.resolved_run_dir()
        self.device = resolve_device(cfg.device)
        self.dist = Dist(device=self.device)  # until fit() joins torchrun's process group, if any
        self.model: nn.Module | None = None
        self.ema: WeightAverage | None = None
        self.run: RunDirectory | None = None
        self._config_pending = False  # a resume writes its config.yaml at its first checkpoint

    # ------------------------------------------------------------------------------------- set-up
    def _save_model(self, model: nn.Module) -> None:
        """Replace run_dir/model with the current weights, atomically."""
        final, tmp = self.run_dir / "model", self.run_dir / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)  # type: ignore[operator]
        self.task.save_artifacts(tmp)
        old = self.run_dir / ".model.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    # -------------------------------------------------------------------------------------- train
    def fit(self, *, resume: bool = False, overwrite: bool = False) -> History:
        """Train in the run directory, which this holds locked until it returns. A start that fails
        before its first checkpoint leaves the directory as it found it (docs/RUN_DIRECTORY.md).
        Started by torchrun, every process trains its share and only rank 0 touches the directory;
        one whose peer process was lost raises a one-line UserError and leaves SIGTERM ignored (it
        is ending, and torchrun's SIGTERM must not cut that line short)."""
        dist = self.dist = Dist.start(self.cfg.device)
        self.device = dist.device
        # From a lost peer on, torchrun's SIGTERM must not end this process before it says why.
        self._sigterm = SigtermHold()
        # train.num_threads and train.deterministic are this training's: the caller's are set again after.
        deterministic = torch.are_deterministic_algorithms_enabled()
        warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        try:
            with keeping_torch_threads():
                if not dist.main:
                    dist.barrier()  # rank 0 claims the directory first (and clears what a kill left)
                    return self._fit(None, resume, overwrite)
                return self._fit_main(resume, overwrite)
        except UserError as exc:  # the others may be waiting for this process in a collective call
            dist.say_stopped(exc)
            raise
        except RuntimeError as exc:  # … or this one for another, which stopped
            if peer_gone(exc):
                self._sigterm.hold()
            if (error := peer_lost_error(exc, self.run_dir, dist)) is None:
                raise
            self._sigterm.keep()  # this process ends: torchrun's SIGTERM must not cut its line short
            raise error from None
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            dist.end()
            self._sigterm.release()
            SPARE_LOGITS.clear()  # the loss's kept (N, V) matrix: tens of MB a finished run holds no more

    def _fit_main(self, resume: bool, overwrite: bool) -> History:
        run = self.run = RunDirectory.claim(self.run_dir, resume=resume, overwrite=overwrite)
        try:
            self.dist.barrier()
            return self._fit(run, resume, overwrite)
        except OSError as exc:  # the run directory cannot be written (read-only, full, …)
            if not _inside(exc.filename, self.run_dir):
                raise
            if not resume and not list_checkpoints(self.run_dir / "checkpoints"):
                run.abandon()
            raise RunDirectoryError(
                f"{self.run_dir}: cannot write the run directory: {exc.strerror} ({exc.filename})"
            ) from None
        except BaseException:
            if not resume and not list_checkpoints(self.run_dir / "checkpoints"):
                run.abandon()  # a failed start leaves nothing behind
            raise
        finally:
            run.release()

    def _fit(self, run: RunDirectory | None, resume: bool, overwrite: bool) -> History:
        """Train; ``run`` is None on every rank but 0, which alone writes."""
        tc, dist = self.tc, self.dist
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        seed_everything(self.cfg.seed, tc.deterministic)
        if resume:  # before the data is read: a changed model.* is refused, other changes named
            changed = changed_settings(self.run_dir, self.cfg)
            if changed:
                warn(f"resuming with settings changed from {self.run_dir / 'config.yaml'}: " + "; ".join(changed))

        # train.init_from: the other run's vocabulary before the data (a task may then skip training
        # its own) and again after (it wins, as in Run.evaluate); its weights before step 0.
        init = init_model_folder(Path(tc.init_from), self.cfg.task) if tc.init_from is not None else None
        if init is not None:
            load_initial_artifacts(self.task, init)
        data = self.task.build_data(self.cfg)
        if init is not None:
            load_initial_artifacts(self.task, init)
        model = self.task.build_model(self.cfg, data).to(self.device)
        if init is not None and not resume:  # a resumed run's checkpoint holds its weights
            load_initial_weights(model, init)
        self.model = model
        groups = self.task.parameter_groups(model, tc.weight_decay) or parameter_groups(model, tc.weight_decay)
        optimizer = adamw(groups, tc, self.device)
        steps_per_epoch = data.train.steps_per_epoch()  # batches; an optimizer step takes grad_accum per rank
        batches_per_step = tc.grad_accum * dist.world  # global batches one optimizer step takes now

        state: dict[str, Any] = {
            "step": 0,
            "epoch": 0,
            "batch_in_epoch": 0,
            "train_sums": {},  # this epoch's weighted training stats so far: a resumed epoch
            "train_weight": 0.0,  # reports them over the whole epoch
            "elapsed": 0.0,
            "best": None,
            "bad_epochs": 0,
            "nonfinite_in_a_row": 0,  # steps skipped for a NaN/Inf loss or gradient, in a row …
            "skipped_steps": 0,  # … and in all
            "history": History().to_dict(),
            # Where the learning-rate schedule is, in steps of the run's first session: a resume with
            # other processes or grad_accum takes other-sized steps, and moves it on by their size.
            "schedule_step": 0.0,
            "planned_batches_per_step": batches_per_step,
        }
        self.ema = WeightAverage(model, tc.ema_decay) if tc.ema_decay else None
        if resume:
            extra: dict[str, torch.Tensor] = {}
            if not dist.main:
                dist.barrier()  # after rank 0, which deletes a damaged checkpoint it meets
            latest, loaded = load_latest_checkpoint(self.run_dir / "checkpoints", model, optimizer, extra)
            if dist.main:
                dist.barrier()
            state.update(loaded)
            if "schedule_step" not in loaded:  # a checkpoint from before the schedule had its own count
                state["schedule_step"] = float(state["step"])
            if self.ema is not None:
                if not any(k.startswith("ema.") for k in extra):
                    raise UserError(f"{latest}: has no weight average; resume without train.ema_decay")
                self.ema.load(extra, state.get("ema_updates", 0))
            nothing_left(self.run_dir, tc, state)  # a finished run, or a spent time budget: one line, not one step
            if dist.main:
                print(f"resuming from {latest} (epoch {state['epoch'] + 1}, step {state['step']})", file=sys.stderr)
            else:  # the checkpoint's partial sums are every rank's: rank 0 carries them on
                state["train_sums"], state["train_weight"] = {}, 0.0
        history = History.from_dict(state["history"])
        planned = state["planned_batches_per_step"]
        total_steps = math.ceil(steps_per_epoch / planned) * tc.epochs  # the schedule's length, as first planned
        self._schedule_advance = batches_per_step / planned  # 1.0 unless processes or grad_accum changed
        if resume and planned != batches_per_step:  # every process resumes alike: note() says it once per machine
            note(
                f"an optimizer step now takes {batches_per_step} global batches (processes × train.grad_accum), "
                f"{planned} when the run started; the learning-rate schedule goes on where it was, counted in "
                "batches"
            )

        if run is not None:
            # The start succeeded: only now is an earlier run cleared (--overwrite) and config.yaml written.
            run.begin(overwrite=overwrite)
            # A resume's config replaces the run's at its first checkpoint: one that fails before
            # then (a mistyped train.monitor is only found at the epoch's end) leaves it as it was.
            self._config_pending = resume
            if not resume:
                self._write_config()
            # Listed before the writers make them: a kill as they start leaves nothing unlisted. The
            # event file's name (time, host, pid) is SummaryWriter's to choose, so tb/ is listed whole.
            if tc.tensorboard:
                run.record("tb/")
            if tc.wandb:
                run.record("wandb/")  # wandb's own folder, written on the run's behalf
        logger = RunLogger(
            self.run_dir,
            tensorboard=tc.tensorboard and dist.main,
            wandb=tc.wandb and dist.main,
            config=self.cfg.model_dump(mode="json"),
            name=self.cfg.name,
            resumed_from=state["step"] if resume else None,  # TensorBoard hides what was logged after it
        )
        if tc.compile and (reason := compile_model(model, self.device)) is not None:
            warn(f"train.compile: training uncompiled: {reason}")
        # The task's loss as a module (DDP wraps it when torchrun started several processes).
        wrapped = dist.wrap(LossModule(self.task, model))
        try:
            # Ctrl-C, SIGTERM: stop where a step ends. Under torchrun the stop is announced only once
            # every process has agreed to it: torchrun also SIGTERMs the survivors of a lost process,
            # and a survivor that announced a checkpoint it then could not write said two things.
            with stop_on_signals(announce=not dist.enabled) as self._stop:
                self._loop(model, wrapped, optimizer, data, state, history, logger, steps_per_epoch, total_steps)
        except RuntimeError as exc:
            if peer_gone(exc):  # at once, not after the writers close: torchrun's SIGTERM may be on its way
                self._sigterm.hold()
            raise
        finally:
            logger.close()
        history.completed = True
        if dist.main:
            history.save(self.run_dir / "history.json")
            plot_history(history.history, self.run_dir / "plots" / "history.png", self.tc.monitor)
        return history

    def _loop(self, model, wrapped, optimizer, data, state, history, logger, steps_per_epoch, total_steps) -> None:
        tc, dist = self.tc, self.dist
        started = time.perf_counter() - state["elapsed"]
        out_of_time = False
        while state["epoch"] < tc.epochs and not out_of_time:
            epoch = state["epoch"]
            model.train()
            start = state["batch_in_epoch"]  # global batches of this epoch already trained on (resumed)
            n_rounds = rounds(steps_per_epoch, start, dist.world)
            bar = tqdm(
                total=steps_per_epoch,
                initial=start,
                desc=f"epoch {epoch + 1}/{tc.epochs}",
                disable=not (tc.progress and dist.main),
                dynamic_ncols=True,
                leave=False,
            )
            # This step's statistics, added to the epoch's only if the step is taken.
            pending: dict[str, float] = {}
            pending_weight, bad_loss = 0.0, False
            # Round k trains batch start + k·W + rank on each of the W ranks (one process: W = 1).
            for k, (batch, real) in enumerate(rank_batches(data.train, epoch, start, dist)):
                ends_step = (k + 1) % tc.grad_accum == 0 or k + 1 == n_rounds
                batch = move_to(batch, self.device)
                with dist.no_sync(wrapped, sync=ends_step):  # average gradients across ranks once per step
                    with autocast(self.device, tc.precision):
                        loss, stats = wrapped(batch)
                    finite = bool(torch.isfinite(loss))
                    bad_loss |= not finite
                    # A rank with no batch left in the epoch's last round trains at weight zero.
                    (loss * (1.0 if real else 0.0) / tc.grad_accum).backward()
                if real and finite:
                    weight = float(stats.get("weight", 1.0))
                    pending_weight += weight
                    for key, value in stats.items():
                        if key != "weight":
                            pending[key] = pending.get(key, 0.0) + float(value) * weight
                state["batch_in_epoch"] = min(start + (k + 1) * dist.world, steps_per_epoch)
                bar.update(state["batch_in_epoch"] - bar.n)
                if not ends_step:
                    continue

                # ---- an optimizer step, unless a loss or gradient is NaN/Inf on some rank
                if tc.clip_grad_norm:
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad_norm, foreach=True)
                else:
                    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
                elapsed = time.perf_counter() - started
                bad, over, stop = dist.agree(
                    bad_loss or not bool(torch.isfinite(norm)),
                    bool(tc.max_minutes) and elapsed > tc.max_minutes * 60,
                    bool(self._stop),
                )
                state["elapsed"] = elapsed
                bad_loss = False
                if bad:
                    optimizer.zero_grad(set_to_none=True)
                    pending, pending_weight = {}, 0.0
                    self._skip_step(state)
                    if stop:
                        self._stop_here(model, optimizer, state, history, saved=False)
                    if over:
                        out_of_time = True
                        break
                    continue
                state["nonfinite_in_a_row"] = 0
                state["train_weight"] += pending_weight
                for key, value in pending.items():
                    state["train_sums"][key] = state["train_sums"].get(key, 0.0) + value
                pending, pending_weight = {}, 0.0
                state["step"] += 1
                state["schedule_step"] += self._schedule_advance
                lr = lr_at(
                    state["schedule_step"],
                    lr=tc.lr,
                    schedule=tc.schedule,
                    warmup=tc.warmup_steps,
                    total_steps=total_steps,
                    min_lr_ratio=tc.min_lr_ratio,
                )
                for group in optimizer.param_groups:  # a task may scale groups (layer-wise decay)
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.update(model)

                if state["step"] % tc.log_every == 0:
                    logger.scalars(state["step"], {**stats, "lr": lr}, prefix="train/")
                    bar.set_postfix(loss=f"{stats.get('loss', float('nan')):.3f}", lr=f"{lr:.2e}")
                saved = bool(tc.checkpoint_every) and state["step"] % tc.checkpoint_every == 0
                if saved:
                    self._checkpoint(model, optimizer, state, history)
                if stop:
                    self._stop_here(model, optimizer, state, history, saved)
                if over:
                    out_of_time = True
                    break
            bar.close()

            # ---- end of epoch (or of the time budget): validate, keep the best, maybe stop
            row = {"epoch": epoch + 1, "step": state["step"], "time": round(state["elapsed"], 2)}
            sums, weight = dist.sum_across(state["train_sums"], state["train_weight"])  # every rank's
            row |= {f"train_{k}": v / max(weight, 1e-9) for k, v in sums.items()}
            # With a weight average, the average is what gets validated and saved as the model.
            with self.ema.swapped_in(model) if self.ema is not None else contextlib.nullcontext():
                # Rank 0 validates; the others wait for its metrics and so take the same decisions.
                val = {k: float(v) for k, v in self.task.validate(model).items()} if dist.main else None
                row |= {f"val_{k}": v for k, v in dist.share(val).items()}
                history.epochs.append(row)
                improved = self._track_best(row, state, history, model)
                if dist.main:
                    if self.run is not None:  # listed before the hook writes them, as every file here
                        self.run.record(*self.task.after_validation_files(epoch + 1))
                    before = files_under(self.run_dir / "plots")
                    self.task.after_validation(model, epoch + 1, self.run_dir)
                    if self.run is not None:  # what a hook wrote without naming it first: listed late, not never
                        self.run.record_new("plots", before)
            model.train()
            logger.scalars(state["step"], {k: v for k, v in row.items() if k != "epoch"}, prefix="epoch/")
            if dist.main:
                # Progress, on stderr with the bars: fit() is a library call, its caller's stdout is its own.
                (tqdm.write if tc.progress else print)(_format_row(row, improved), file=sys.stderr)
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            state["train_sums"], state["train_weight"] = {}, 0.0
            if tc.early_stopping_patience and state["bad_epochs"] >= tc.early_stopping_patience:
                history.stopped_early = True
                out_of_time = True
            if out_of_time and tc.max_minutes and not history.stopped_early:
                note(f"time budget of {tc.max_minutes} min reached after {state['elapsed'] / 60:.1f} min")
            self._checkpoint(model, optimizer, state, history)
            if dist.main:
                history.save(self.run_dir / "history.json")
            if dist.agree(bool(self._stop))[0]:  # asked during validation: the epoch's checkpoint is the stop's
                self._stop_here(model, optimizer, state, history, saved=True)

    def _skip_step(self, state: dict[str, Any]) -> None:
        """A step whose loss or gradient was NaN/Inf (on any rank) is not taken: the weights, the
        optimizer and the schedule stay as they were. Too many in a row stop the run."""
        state["nonfinite_in_a_row"] += 1
        state["skipped_steps"] += 1
        in_a_row, limit = state["nonfinite_in_a_row"], self.tc.max_nonfinite_steps
        # Every rank skips it (the ranks agreed), so it is no rank's own warning.
        warn(
            f"step {state['step'] + 1} skipped: the loss or a gradient is NaN or infinite "
            f"({in_a_row} in a row; training stops at {limit})"
        )
        if in_a_row >= limit:
            kept = list_checkpoints(self.run_dir / "checkpoints")
            raise TrainingDiverged(
                f"training stopped at step {state['step']}: the loss or a gradient was NaN or infinite "
                f"{in_a_row} steps in a row; "
                + (f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint had been written")
                + "; lower train.lr or set train.clip_grad_norm"
            )

    def _track_best(self, row: dict[str, float], state: dict[str, Any], history: History, model) -> bool:
        """Keep the best model (rank 0 writes it; every rank keeps the same count of bad epochs)."""
        tc = self.tc
        if tc.monitor not in row:
            raise ConfigError(f"config key 'train.monitor': {tc.monitor!r} is not a metric; have {', '.join(row)}")
        value = row[tc.monitor]
        best = state["best"]
        improved = best is None or (value < best if tc.monitor_mode == "min" else value > best)
        if improved:
            state["best"], state["bad_epochs"] = value, 0
            history.best_epoch = int(row["epoch"])
            if self.dist.main:
                self._save_model(model)
        else:
            state["bad_epochs"] += 1
        return improved

    def _stop_here(self, model, optimizer, state, history, saved: bool) -> None:
        """A signal asked to stop: save this step's checkpoint (unless just saved) and the curves
        so far, then raise TrainingStopped (the CLI says how to resume)."""
        if self.dist.enabled and self.dist.main:
            step = state["step"]
            print(f"heedful: stopping every process at step {step} to save a checkpoint", file=sys.stderr, flush=True)
        if not saved:
            self._checkpoint(model, optimizer, state, history)
        if self.dist.main and history.epochs:
            plot_history(history.history, self.run_dir / "plots" / "history.png", self.tc.monitor)
        raise TrainingStopped(self._stop.signum or signal.SIGTERM)  # a rank told by the others: theirs

    def _checkpoint(self, model, optimizer, state, history) -> None:
        # The epoch's partial statistics so far are every rank's (sum, weight): rank 0 saves and
        # carries the totals on, the others start again from zero.
        sums, weight = self.dist.sum_across(state["train_sums"], state["train_weight"])
        state["train_sums"], state["train_weight"] = (sums, weight) if self.dist.main else ({}, 0.0)
        if not self.dist.main:
            return
        state["history"] = history.to_dict()
        if self.ema is not None:
            state["ema_updates"] = self.ema.updates
        save_checkpoint(
            self.run_dir / "checkpoints",
            state["step"],
            model,
            optimizer,
            dict(state),
            keep=self.tc.keep_checkpoints,
            extra_tensors=self.ema.tensors() if self.ema is not None else None,
        )
        if self.run is not None:
            if self._config_pending:  # a resume's: from now on the run is the resumed one
                self._config_pending = False
                self._write_config()
            self.run.settle()  # the run --overwrite set aside is gone for good

    def _write_config(self) -> None:
        config_tmp = self.run_dir / "config.yaml.tmp"
        config_tmp.write_text(to_yaml(self.cfg))
        os.replace(config_tmp, self.run_dir / "config.yaml")


def _inside(filename: object, folder: Path) -> bool:
    if not isinstance(filename, str | os.PathLike):
        return False
    path, folder = Path(filename).resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _format_row(row: dict[str, float], improved: bool) -> str:
    parts = [f"epoch {int(row['epoch'])}"]
    parts += [f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "step")]
    return "  ".join(parts) + ("  *" if improved else "")


def fit(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> History:
    """Train the task ``cfg.task`` names — the Python twin of ``heedful train`` — in the run
    directory ``cfg.resolved_run_dir()``, and return its ``History``. ``resume``: continue that
    run from its latest checkpoint (``--resume``); ``overwrite``: start it again from scratch,
    deleting what the run wrote (``--overwrite``). An existing run is refused without either.
    torch's thread count and deterministic-algorithms setting are as they were when it returns.
    Its progress (a line per epoch; the bars unless ``train.progress`` is false) goes to stderr."""
    if not isinstance(cfg, RunConfig):
        raise UserError(f"fit takes a config, e.g. fit(load_config('configs/dates.yaml')), not {cfg!r:.40}")
    task = get_task(cfg.task)(cfg)
    return Trainer(task, cfg).fit(resume=resume, overwrite=overwrite)
