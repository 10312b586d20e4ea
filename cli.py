"""``resnet-tasks``: the command line. It parses, validates and hands off to ``tasks.runner``.

``finetune TASK`` has one subcommand per registered task (``tasks.register_task``), whose flags
are generated from the typed config dataclasses (``tasks/*/config.py``): a config key, its YAML
name and its flag are the same thing, with one default and one allowed range. Nothing here imports
torch until a command runs, so ``--help`` answers at once.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import typing

import click

from resnet_backbones.errors import UserError
from tasks import task_names
from tasks.config import TrainConfig, base_type, preset_names, range_text

LOG_LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}


def _one_line(e: BaseException) -> str:
    # Errors raised inside DataLoader workers come back with the worker's traceback in the message.
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    last = lines[-1] if lines else type(e).__name__
    if len(lines) > 1 and ": " in last and last.split(": ", 1)[0].endswith("Error"):
        last = last.split(": ", 1)[1]
    return last


class LogLines(logging.Handler):
    """Log records as plain lines on stdout, printed around a progress bar if one is drawn; stderr
    is kept for the one-line error, so ``2>err.txt`` holds exactly what went wrong."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        msg = record.getMessage()
        tqdm.write(msg if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {msg}",
                   file=sys.stdout)


def set_verbosity(level: str | None) -> None:
    """Send the package's log records (``tasks``, ``resnet_backbones``) to the console at ``level``
    (``None``: remove that console again)."""
    for name in ("tasks", "resnet_backbones"):
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not isinstance(h, LogLines)]
        if level is not None:
            logger.addHandler(LogLines())
            logger.setLevel(LOG_LEVELS[level])
        else:
            logger.setLevel(logging.NOTSET)


def verbosity_options(func):
    """``-q/--quiet`` (warnings only) and ``-v/--verbose`` (debug), on the root and on every command."""
    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            set_verbosity(param.name)
    func = click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=callback,
                        help="Also log debug details.")(func)
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=callback,
                        help="Log warnings and errors only.")(func)


class Root(click.Group):
    """Turns user errors into one line and exit code 2 (a traceback only with --debug); an
    interrupted run exits with 130 after saving its checkpoint."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        set_verbosity("normal")  # before parsing, so that -q/-v (parsed next) win
        return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except (UserError, click.UsageError, OSError) as e:
            if ctx.params.get("debug"):
                raise
            if isinstance(e, click.UsageError):
                msg = e.format_message()
            elif isinstance(e, OSError) and not isinstance(e, UserError):  # unwritable or missing output
                msg = f"cannot write {e.filename}: {e.strerror}" if e.filename else _one_line(e)
            else:
                msg = _one_line(e)
            click.echo(f"error: {msg}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as e:
            from tasks.engine.trainer import TrainingInterrupted

            if not isinstance(e, TrainingInterrupted):
                raise
            click.echo(str(e), err=True)
            ctx.exit(130)
        finally:
            set_verbosity(None)  # the console belongs to this command (callers may invoke several)


@click.group(cls=Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@verbosity_options
@click.version_option(package_name="resnet-tasks")
def cli(debug: bool) -> None:
    """ResNet-18…152 backbones: list them, fine-tune, evaluate, predict, few-shot evaluate."""


# ---- backbones --------------------------------------------------------------------------------
@cli.command()
@click.option("--describe", "describe_name", metavar="NAME", help="Per-stage freezing summary of one backbone.")
@click.option("--freeze-stages", type=int, default=0, show_default=True, help="With --describe.")
@click.option("--norm", type=click.Choice(["bn", "frozen_bn"]), default="bn", show_default=True)
@click.option("--weights", "list_weights", is_flag=True,
              help="List every weights tag per architecture (torchvision, timm) with its source and top-1.")
def backbones(describe_name: str | None, freeze_stages: int, norm: str, list_weights: bool) -> None:
    """List the registry (params, feature channels/strides, default ImageNet weights)."""
    from resnet_backbones import create_backbone, describe
    from resnet_backbones.catalog import catalog_rows, weights_rows

    if list_weights:
        click.echo(f"{'name':18} {'weights (--weights)':44} {'top-1':>6} {'at px':>5}  source")
        for r in weights_rows():
            top1 = f"{r['top1']:.2f}" if r["top1"] is not None else "-"
            px = str(r["top1_px"]) if r["top1_px"] else "-"
            click.echo(f"{r['name']:18} {r['weights'] + (' *' if r['default'] else ''):44} {top1:>6} {px:>5}  "
                       f"{r['source']}")
        click.echo("* = what --weights imagenet loads")
        return
    if describe_name:
        click.echo(describe(create_backbone(describe_name, weights=None, freeze_stages=freeze_stages, norm=norm)))
        return
    rows = catalog_rows()
    click.echo(f"{'name':18} {'block':10} {'params':>7}  {'channels c1…c5':28} {'strides':14} imagenet weights")
    for r in rows:
        click.echo(f"{r['name']:18} {r['block']:10} {r['params_m']:6.1f}M  {r['channels']:28} {r['strides']:14} "
                   f"{r['imagenet']}")


# ---- finetune ---------------------------------------------------------------------------------
def config_option(f: dataclasses.Field, tp) -> click.Option:
    """One click option for a config field: default None (= 'not given'); help shows the field's default."""
    flag = "--" + f.name.replace("_", "-")
    help_text = f.metadata.get("help", "")
    if range_text(f):
        help_text += f" ({range_text(f)})"
    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, bool):
        default = "on" if default else "off"
    elif isinstance(default, (list, tuple)):
        default = ",".join(map(str, default))
    if default is not None:
        help_text += f"  [default: {default}]"
    bt = base_type(tp)
    if bt is bool:
        return click.Option([f"{flag}/--no-{f.name.replace('_', '-')}", f.name], default=None, help=help_text)
    if typing.get_origin(bt) in (list, tuple):  # repeatable (--data A --data B); "A,B" splits where the field allows
        return click.Option([flag, f.name], multiple=True, default=None, help=help_text,
                            callback=lambda ctx, param, value: list(value) or None)
    choices = f.metadata.get("choices")
    return click.Option([flag, f.name], type={int: click.INT, float: click.FLOAT}.get(bt, click.STRING),
                        default=None, metavar="[" + "|".join(choices) + "]" if choices else None, help=help_text)


def task_command(name: str) -> click.Command:
    """``finetune NAME``: the run flags, this task's own flags, then the engine's flags."""
    from tasks import get_task_entry

    entry = get_task_entry(name)
    demo = ", ".join(f"--{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, tuple) else v}"
                     for k, v in entry.demo_defaults.items())

    def run(config_file: str | None, resume: str | None, overwrite: bool, **values) -> None:
        from tasks import runner

        explicit = {k: v for k, v in values.items() if v is not None}
        result = runner.finetune(name, config_file, explicit, resume=resume, overwrite=overwrite)
        if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for the run
            return
        best = result["best_metric"]
        click.echo(f"done: best {result['primary_metric']} = {best:.4f} (epoch {result['best_epoch']}); "
                   f"run folder {result['run_dir']}" if best is not None else f"done: {result['run_dir']}")

    params = [
        click.Option(["--config", "config_file"], default=None, metavar="NAME|FILE",
                     help=f"YAML preset: a file, or a bundled one ({', '.join(preset_names())}); flags override it."),
        click.Option(["--resume"], default=None, metavar="RUN_DIR|CKPT", help="Continue an interrupted run exactly."),
        click.Option(["--overwrite"], is_flag=True, help="Replace the run already in --out."),
    ]
    seen: set[str] = set()
    for cls in (entry.config_cls, TrainConfig):
        hints = typing.get_type_hints(cls)
        params += [config_option(f, hints[f.name]) for f in dataclasses.fields(cls) if f.name not in seen]
        seen |= {f.name for f in dataclasses.fields(cls)}
    doc = (entry.config_cls.__doc__ or f"Fine-tune for {name}.").strip().splitlines()[0]
    cmd = click.Command(name, callback=run, params=params, context_settings={"max_content_width": 110},
                        help=f"{doc} Writes a run folder (config, metrics, plots, checkpoints).",
                        epilog=f"Without --data: a generated demo set, with {demo} unless set." if demo else None)
    return verbosity_options(cmd)


def _option_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _task_of(args: list[str]) -> str | None:
    """The task a ``--config`` preset/file or a ``--resume`` run folder names, if any (light: YAML only)."""
    from pathlib import Path

    from tasks.config import find_config, load_yaml

    try:
        if (config := _option_value(args, "--config")) is not None:
            return load_yaml(find_config(config)).get("task")
        if (resume := _option_value(args, "--resume")) is not None:
            run = Path(resume) if Path(resume).is_dir() else Path(resume).parent
            return load_yaml(run / "config.yaml").get("task")
    except Exception:  # the command itself reports a bad --config or --resume
        return None
    return None


class Finetune(click.Group):
    """``finetune TASK`` per registered task; ``finetune --task TASK`` is the same command."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return task_names()

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return task_command(name) if name in task_names() else None

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in task_names():
            raise click.UsageError(f"unknown task {args[0]!r}; choose one of: {', '.join(task_names())}")
        return super().resolve_command(ctx, args)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        args = list(args)
        if not (args and args[0] in task_names()) and not (set(args) & {"-h", "--help"} and "--task" not in args):
            task = _option_value(args, "--task")
            if task is not None:
                i = next(i for i, a in enumerate(args) if a == "--task" or a.startswith("--task="))
                del args[i:i + (1 if "=" in args[i] else 2)]
            args.insert(0, task or _task_of(args) or "classification")
        return super().parse_args(ctx, args)


@cli.group(cls=Finetune, context_settings={"max_content_width": 110})
def finetune() -> None:
    """Fine-tune a backbone: finetune TASK [flags] (or --task TASK); TASK --help lists its flags.

    Without TASK: the task of --config or --resume, else classification.
    """


# ---- evaluate / predict / fewshot-eval ------------------------------------------------------------
checkpoint_option = click.option("--checkpoint", required=True, metavar="CKPT",
                                 help="A checkpoint file or a run folder (uses best.pt).")
device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")


@cli.command()
@verbosity_options
@checkpoint_option
@click.option("--data", required=True, metavar="DIR", help="Labelled data (its val split if it has one).")
@device_option
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write metrics here.")
def evaluate(checkpoint: str, data: str, device: str, batch_size: int, json_out: str | None) -> None:
    """Metrics of a checkpoint on labelled data (needs nothing but the checkpoint)."""
    from tasks import runner

    metrics = runner.evaluate(checkpoint, data, device=device, batch_size=batch_size)
    for k, v in metrics.items():
        click.echo(f"{k:24} {v:.4f}")
    if json_out:
        with open(json_out, "w") as f:
            json.dump(metrics, f, indent=1)


@cli.command()
@verbosity_options
@click.option("--checkpoint", default=None, metavar="CKPT", help="A checkpoint file or a run folder (uses best.pt).")
@click.option("--model", "model_file", default=None, metavar="FILE",
              help="Instead of --checkpoint: a file written by `export` (ONNX runs on ONNX Runtime).")
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGES_OR_DIR...")
@click.option("--out", required=True, metavar="DIR", help="Output folder.")
@device_option
def predict(checkpoint: str | None, model_file: str | None, inputs: tuple[str, ...], out: str, device: str) -> None:
    """Run a checkpoint or an exported model on images; writes the task's outputs (labels, masks, boxes) to --out."""
    if (checkpoint is None) == (model_file is None):
        raise UserError("predict needs exactly one of --checkpoint CKPT or --model FILE (an exported model)")
    if model_file is not None:
        from tasks.deploy.predict import predict_exported

        records = predict_exported(model_file, list(inputs), out)
    else:
        from tasks import runner

        records = runner.predict(checkpoint, list(inputs), out, device=device)
    click.echo(f"{len(records)} image(s) → {out}")


@cli.command("fewshot-eval")
@verbosity_options
@checkpoint_option
@click.option("--data", default=None, metavar="DIR", help="Folder per class (classes unseen in training).")
@click.option("--runs", "runs_dir", default=None, metavar="DIR",
              help="Instead of --data: the one-shot runs of Lake et al. (DIR/runNN/class_labels.txt, "
                   "training/, test/); prints each run's error and the mean.")
@click.option("--protocol", type=click.Choice(["across-classes", "within-alphabet"]), default="across-classes",
              show_default=True, help="within-alphabet: all classes of an episode share a parent folder "
                                      "(alphabet/character; needs nested classes).")
@click.option("--ways", type=int, default=5, show_default=True)
@click.option("--shots", type=int, default=1, show_default=True)
@click.option("--queries", type=int, default=15, show_default=True)
@click.option("--episodes", type=int, default=600, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--nested-classes/--flat-classes", default=None, help="Default: as in training.")
@click.option("--include-seen", is_flag=True, help="Keep classes whose names the checkpoint was trained on.")
@click.option("--features", "levels", type=click.Choice(["c5", "c4+c5", "c3+c4+c5"]), default="c3+c4+c5",
              show_default=True, help="Pooled backbone features compared: c5 (the head's input), or several "
                                      "levels (each L2-normalised, concatenated).")
@click.option("--pool", type=click.Choice(["max", "avg"]), default="max", show_default=True,
              help="Global pooling of each feature level.")
@click.option("--tta-shift", type=click.IntRange(min=0), default=None, show_default="auto", metavar="PX",
              help="Average each image's features over itself and two copies moved diagonally by PX pixels "
                   "(0 = off; 3 forward passes per image). auto: 1/16 of the input side for models trained "
                   "with --augment shift, else off.")
@click.option("--power/--no-power", default=True, show_default=True,
              help="Square-root the features before the cosine (power transform).")
@click.option("--center", type=click.Choice(["none", "support"]), default="support", show_default=True,
              help="support: subtract each episode's mean support feature before the cosine.")
@click.option("--transductive", is_flag=True,
              help="Assign an episode's queries jointly, the same number to every class (Hungarian).")
@device_option
@click.pass_context
def fewshot_eval(ctx, checkpoint, data, runs_dir, protocol, ways, shots, queries, episodes, seed, nested_classes,
                 include_seen, levels, pool, tta_shift, power, center, transductive, device) -> None:
    """N-way K-shot episodes (classes unseen in training) with a prototype classifier on the checkpoint's features."""
    from tasks.classification import fewshot_eval as fe
    from tasks.classification.fewshot import Scoring

    scoring = Scoring(levels=tuple(levels.split("+")), pool=pool, tta_shift=tta_shift, power=power, center=center,
                      transductive=transductive)

    if (data is None) == (runs_dir is None):
        raise UserError("fewshot-eval needs exactly one of --data DIR (sampled episodes) or --runs DIR "
                        "(published one-shot runs)")
    if runs_dir is not None:
        episode_flags = ["protocol", "ways", "shots", "queries", "episodes", "seed", "nested_classes", "include_seen"]
        given = [n for n in episode_flags if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise UserError(f"--runs fixes its episodes; drop --{', --'.join(n.replace('_', '-') for n in given)}")
        r = fe.runs_eval(checkpoint, runs_dir, device=device, scoring=scoring)
        for run in r["runs"]:
            click.echo(f"{run['run']}: {run['ways']}-way 1-shot, {run['queries']} queries, "
                       f"error {100 * run['error']:.1f}%")
        click.echo(f"mean error over {len(r['runs'])} runs: {100 * r['error']:.2f}% ± {100 * r['ci95']:.2f}% (95% CI)")
        return
    r = fe.fewshot_eval(checkpoint, data, ways=ways, shots=shots, queries=queries, episodes=episodes, seed=seed,
                        protocol=protocol, device=device, nested_classes=nested_classes, include_seen=include_seen,
                        scoring=scoring)
    over = f"{r['classes']} classes"
    if "groups" in r:
        over += (f" in {r['groups_usable']} of {r['groups']} alphabets (those with ≥ {ways} classes of "
                 f"≥ {shots + queries} images)")
    click.echo(f"{r['ways']}-way {r['shots']}-shot {r['protocol']}, {r['queries']} queries, {r['episodes']} episodes "
               f"over {over}: accuracy {100 * r['accuracy']:.2f}% ± {100 * r['ci95']:.2f}% (95% CI)")


# ---- deploy: export / quantize / prune (tasks/deploy) -------------------------------------------------
@cli.command()
@verbosity_options
@checkpoint_option
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript", "exported-program"]), default="onnx",
              show_default=True)
@click.option("--out", required=True, metavar="FILE", help="The model file; FILE.json gets its preprocessing.")
@click.option("--dynamic", is_flag=True, help="Any image size (the batch size always varies).")
@click.option("--opset", type=click.IntRange(min=7), default=None, help="ONNX opset (default: the exporter's).")
@click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default="nchw", show_default=True,
              help="Input layout of the exported graph (nhwc: (B, H, W, 3) images).")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="fp16: float16 weights, activations, input and outputs (half the file; for GPUs), checked "
                   "against the fp32 model.")
@click.option("--data", default=None, metavar="DIR", help="Data for the parity check (default: the run's).")
@click.option("--samples", type=click.IntRange(min=1), default=8, show_default=True,
              help="Validation images the exported file is checked on.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=None,
              show_default="1e-4; fp16: 1% of the largest output, at least 0.01",
              help="Largest absolute output difference allowed.")
def export(checkpoint, fmt, out, dynamic, opset, layout, precision, data, samples, tolerance) -> None:
    """Export a checkpoint (ONNX, TorchScript, ExportedProgram), checked on validation images before it is kept."""
    from tasks.deploy.export import export as run_export

    info = run_export(checkpoint, fmt, out, dynamic=dynamic, opset=opset, layout=layout, precision=precision,
                      data=data, samples=samples, tolerance=tolerance)
    p = info["parity"]
    click.echo(f"parity: max abs difference {p['max_abs_diff']:.2e} on {p['images']} validation image(s) "
               f"(tolerance {p['tolerance']:g})")
    click.echo(f"wrote {out} and {out}.json")


@cli.command()
@verbosity_options
@checkpoint_option
@click.option("--mode", type=click.Choice(["static", "dynamic"]), default="static", show_default=True,
              help="static: convolutions and linear layers, calibrated; dynamic: linear layers only.")
@click.option("--out", required=True, metavar="FILE.pt2", help="The int8 model (ExportedProgram); FILE.json beside it.")
@click.option("--calib-images", type=click.IntRange(min=1), default=64, show_default=True,
              help="Training images to calibrate on (static).")
@click.option("--data", default=None, metavar="DIR", help="Data folder (default: the run's).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lower/--no-lower", default=True, show_default=True,
              help="Measure the int8 model lowered to oneDNN int8 kernels (how it is deployed) or as exported.")
@click.option("--latency-runs", type=click.IntRange(min=0), default=10, show_default=True,
              help="Timed runs per latency figure (median; 0 = no latency).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the report here.")
def quantize(checkpoint, mode, out, calib_images, data, batch_size, lower, latency_runs, json_out) -> None:
    """Int8 post-training quantisation (PT2E, X86 inductor quantizer): metric, size and CPU latency before/after."""
    from tasks.deploy.quantize import quantize as run_quantize

    r = run_quantize(checkpoint, mode, out, calib_images=calib_images, data=data, batch_size=batch_size,
                     lower=lower, latency_runs=latency_runs)
    click.echo(f"{r['metric']}: {r['before']:.4f} fp32 → {r['after']:.4f} int8 ({mode})")
    click.echo(f"size: {r['size_mb']['fp32']:.1f} MB → {r['size_mb']['int8']:.1f} MB")
    for b, t in r["latency"].items():
        click.echo(f"latency {b}: {t['fp32_eager_ms']:.1f} ms fp32 eager → {t['int8_ms']:.1f} ms int8 "
                   f"({t['fp32_eager_ms'] / t['int8_ms']:.2f}x)")
    if json_out:
        with open(json_out, "w") as f:
            json.dump(r, f, indent=1)


@cli.command()
@verbosity_options
@click.option("--checkpoint", default=None, metavar="CKPT", help="A checkpoint file or a run folder (uses best.pt).")
@click.option("--keep", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None, show_default="0.8",
              help="Share of the channels of every prunable layer kept.")
@click.option("--out", default=None, metavar="DIR",
              help="Run folder for the pruned model (best.pt, prune_report.json).")
@click.option("--finetune-epochs", type=click.IntRange(min=0), default=None, show_default="0",
              help="Then fine-tune this many epochs with the run's own settings (the normal engine).")
@click.option("--data", default=None, metavar="DIR", help="Data folder (default: the run's).")
@click.option("--resume", "resume_dir", default=None, metavar="RUN_DIR",
              help="Continue an interrupted fine-tune exactly (its checkpoint, --keep and epochs come from RUN_DIR).")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out.")
def prune(checkpoint, keep, out, finetune_epochs, data, resume_dir, overwrite) -> None:
    """Channel pruning (torch-pruning, L2 magnitude): params, FLOPs, latency and metric before/after."""
    from tasks.deploy import prune as pruning

    if resume_dir is not None:
        if overwrite:
            raise UserError("--resume continues the run in RUN_DIR and --overwrite replaces it: pass one of them")
        r = pruning.resume(resume_dir, checkpoint=checkpoint, keep=keep, finetune_epochs=finetune_epochs, data=data,
                           out=out)
    elif checkpoint is None or out is None:
        raise UserError("prune needs --checkpoint CKPT and --out DIR (or --resume RUN_DIR to continue a fine-tune)")
    else:
        r = pruning.prune(checkpoint, 0.8 if keep is None else keep, out, finetune_epochs=finetune_epochs or 0,
                          data=data, overwrite=overwrite)
    m = r["metric"]
    for stage in ("before", "pruned", "finetuned"):
        if stage in r:
            s = r[stage]
            click.echo(f"{stage:10} params {s['params'] / 1e6:6.2f}M  GFLOPs {s['flops'] / 1e9:7.3f}  "
                       f"latency {s['latency_ms_batch1']:7.1f} ms  {m} {s[m]:.4f}")
    click.echo(f"FLOPs ratio {r['flops_ratio']:.2f}; pruned model: {resume_dir or out}/best.pt")


# ---- convert ----------------------------------------------------------------------------------
@cli.group()
def convert() -> None:
    """Convert data sets between formats."""


@convert.command("masks-to-coco")
@click.argument("masks_dir", metavar="MASKS_DIR")
@click.option("--images", "images_dir", default=None, metavar="DIR", help="Images matched by file stem.")
@click.option("--out", required=True, metavar="FILE.json")
@click.option("--category", "categories", multiple=True, metavar="NAME",
              help="Category name (repeat for several; default: one category 'object').")
@click.option("--mask-suffix", default="", metavar="SUFFIX",
              help="Masks are named <image stem>SUFFIX.png (PennFudan: _mask).")
def masks_to_coco(masks_dir: str, images_dir: str | None, out: str, categories: tuple[str, ...],
                  mask_suffix: str) -> None:
    """Instance-mask PNGs (0 = background, 1…K one object each) → COCO JSON (boxes + RLE masks)."""
    from pathlib import Path

    from tasks.detection.convert import masks_to_coco as convert_masks

    summary = convert_masks(Path(masks_dir), Path(out), Path(images_dir) if images_dir else None,
                            list(categories) or None, mask_suffix=mask_suffix)
    click.echo(json.dumps(summary))


@convert.command("voc-to-coco")
@click.argument("annotations_dir", metavar="VOC_ANNOTATIONS_DIR")
@click.option("--out", required=True, metavar="FILE.json")
@click.option("--category", "categories", multiple=True, metavar="NAME",
              help="Category names in label order (repeat; default: the names found, sorted).")
def voc_to_coco(annotations_dir: str, out: str, categories: tuple[str, ...]) -> None:
    """Pascal VOC XML files (one per image) → COCO JSON; difficult objects become crowd regions."""
    from pathlib import Path

    from tasks.detection.formats import voc_to_coco as convert_voc

    click.echo(json.dumps(convert_voc(Path(annotations_dir), Path(out), list(categories) or None)))


@convert.command("yolo-to-coco")
@click.argument("labels_dir", metavar="YOLO_LABELS_DIR")
@click.option("--images", "images_dir", required=True, metavar="DIR", help="The images the txt files belong to.")
@click.option("--out", required=True, metavar="FILE.json")
@click.option("--classes", "classes_file", default=None, metavar="FILE", help="classes.txt or YOLO data.yaml.")
@click.option("--category", "categories", multiple=True, metavar="NAME", help="Instead of --classes: names in "
              "class-index order (repeat).")
def yolo_to_coco(labels_dir: str, images_dir: str, out: str, classes_file: str | None,
                 categories: tuple[str, ...]) -> None:
    """YOLO txt labels (boxes or polygons, 0…1) → COCO JSON."""
    from pathlib import Path

    from tasks.detection.formats import read_class_names, yolo_to_coco as convert_yolo

    if classes_file and categories:
        raise UserError("give the class names once: --classes FILE or --category NAME …")
    names = read_class_names(Path(classes_file)) if classes_file else list(categories)
    click.echo(json.dumps(convert_yolo(Path(labels_dir), Path(images_dir), Path(out), names)))


def main() -> None:
    cli(prog_name="resnet-tasks")


if __name__ == "__main__":
    sys.exit(main())
