"""``resnet-tasks``: the command line. It parses, validates and hands off to ``tasks.runner``.

Finetune flags are generated from the typed config dataclasses (``tasks/*/config.py``), so a
config key, its YAML name and its flag are always the same thing.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import typing

import click

from resnet_backbones.errors import UserError
from tasks import TASK_NAMES, available_config_classes
from tasks.config import TrainConfig, base_type


def _one_line(e: BaseException) -> str:
    # Errors raised inside DataLoader workers come back with the worker's traceback in the message.
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    last = lines[-1] if lines else type(e).__name__
    if len(lines) > 1 and ": " in last and last.split(": ", 1)[0].endswith("Error"):
        last = last.split(": ", 1)[1]
    return last


class Root(click.Group):
    """Turns user errors into one line and exit code 2 (a traceback only with --debug)."""

    def invoke(self, ctx: click.Context):
        from tasks.engine.trainer import TrainingInterrupted

        try:
            return super().invoke(ctx)
        except TrainingInterrupted as e:
            click.echo(str(e), err=True)
            ctx.exit(130)
        except UserError as e:
            if ctx.params.get("debug"):
                raise
            click.echo(f"error: {_one_line(e)}", err=True)
            ctx.exit(2)


@click.group(cls=Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.version_option(package_name="resnet-tasks")
def cli(debug: bool) -> None:
    """ResNet-18…152 backbones: list them, fine-tune, evaluate, predict, few-shot evaluate."""


# ---- backbones --------------------------------------------------------------------------------
@cli.command()
@click.option("--describe", "describe_name", metavar="NAME", help="Per-stage freezing summary of one backbone.")
@click.option("--freeze-stages", type=int, default=0, show_default=True, help="With --describe.")
@click.option("--norm", type=click.Choice(["bn", "frozen_bn"]), default="bn", show_default=True)
def backbones(describe_name: str | None, freeze_stages: int, norm: str) -> None:
    """List the registry (params, feature channels/strides, default ImageNet weights)."""
    from resnet_backbones import create_backbone, describe
    from resnet_backbones.catalog import catalog_rows

    if describe_name:
        click.echo(describe(create_backbone(describe_name, weights=None, freeze_stages=freeze_stages, norm=norm)))
        return
    rows = catalog_rows()
    click.echo(f"{'name':18} {'block':10} {'params':>7}  {'channels c1…c5':28} {'strides':14} imagenet weights")
    for r in rows:
        click.echo(f"{r['name']:18} {r['block']:10} {r['params_m']:6.1f}M  {r['channels']:28} {r['strides']:14} "
                   f"{r['imagenet']}")


# ---- finetune ---------------------------------------------------------------------------------
def _config_fields() -> dict[str, list[tuple[str, dataclasses.Field, typing.Any]]]:
    """Flag name → [(owner, field, type)] over TrainConfig and every installed task's config."""
    out: dict[str, list] = {}
    for owner, cls in {"train": TrainConfig, **available_config_classes()}.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out.setdefault(f.name, []).append((owner, f, hints[f.name]))
    return out


def config_options(func):
    """Add one click option per config field (default None = 'not given')."""
    for name, entries in sorted(_config_fields().items(), reverse=True):
        _, f, tp = entries[0]
        owners = [e[0] for e in entries]
        helps = list(dict.fromkeys(e[1].metadata.get("help", "") for e in entries))
        text = helps[0] if len(helps) == 1 else " | ".join(
            f"{o}: {e[1].metadata.get('help', '')}" for o, e in zip(owners, entries))
        if "train" not in owners and len(owners) < len(available_config_classes()):
            text = f"[{', '.join(owners)} only] {text}"
        choices = [c for e in entries for c in (e[1].metadata.get("choices") or ())]
        if choices:
            text += f" Choices: {', '.join(dict.fromkeys(choices))}."
        defaults = {repr(e[1].default) for e in entries}
        if len(defaults) == 1 and f.default is not None and not isinstance(f.default, bool):
            text += f" Default: {f.default}."
        flag = "--" + name.replace("_", "-")
        bt = base_type(tp)
        if any(typing.get_origin(base_type(e[2])) in (list, tuple) for e in entries):
            # Repeatable (--data A --data B); "A,B" still splits where the field allows.
            opt = click.option(flag, name, multiple=True, default=None, help=text,
                               callback=lambda ctx, param, v: list(v) or None)
        elif bt is bool:
            opt = click.option(f"{flag}/--no-{name.replace('_', '-')}", name, default=None, help=text)
        else:
            ctype = {int: click.INT, float: click.FLOAT}.get(bt, click.STRING)
            opt = click.option(flag, name, type=ctype, default=None, help=text)
        func = opt(func)
    return func


@cli.command(context_settings={"max_content_width": 110})
@click.option("--task", type=click.Choice(TASK_NAMES), default=None, help="Default: classification (or the config's).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML preset (configs/*.yaml); flags override it.")
@click.option("--resume", default=None, metavar="RUN_DIR|CKPT", help="Continue an interrupted run exactly.")
@config_options
def finetune(task: str | None, config_file: str | None, resume: str | None, **values) -> None:
    """Fine-tune a backbone on a task; writes a run folder (config, metrics, plots, checkpoints)."""
    from tasks import runner

    explicit = {k: v for k, v in values.items() if v is not None}
    if resume and (task or config_file):
        raise UserError("--resume takes its task and config from the checkpoint; drop --task/--config")
    result = runner.finetune(task, config_file, explicit, resume=resume)
    best = result["best_metric"]
    click.echo(f"done: best {result['primary_metric']} = {best:.4f} (epoch {result['best_epoch']}); "
               f"run folder {result['run_dir']}" if best is not None else f"done: {result['run_dir']}")


# ---- evaluate / predict / fewshot-eval ------------------------------------------------------------
checkpoint_option = click.option("--checkpoint", required=True, metavar="CKPT",
                                 help="A checkpoint file or a run folder (uses best.pt).")
device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")


@cli.command()
@checkpoint_option
@click.option("--data", required=True, metavar="DIR", help="Labelled data (its val split if it has one).")
@device_option
@click.option("--batch-size", type=int, default=16, show_default=True)
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
@checkpoint_option
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGES_OR_DIR...")
@click.option("--out", required=True, metavar="DIR", help="Output folder.")
@device_option
def predict(checkpoint: str, inputs: tuple[str, ...], out: str, device: str) -> None:
    """Run a checkpoint on images; writes the task's outputs (labels, masks, boxes) to --out."""
    from tasks import runner

    records = runner.predict(checkpoint, list(inputs), out, device=device)
    click.echo(f"{len(records)} image(s) → {out}")


@cli.command("fewshot-eval")
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
@device_option
@click.pass_context
def fewshot_eval(ctx, checkpoint, data, runs_dir, protocol, ways, shots, queries, episodes, seed, nested_classes,
                 include_seen, device) -> None:
    """N-way K-shot episodes (classes unseen in training) with a prototype classifier on the checkpoint's features."""
    from tasks.classification import fewshot_eval as fe

    if (data is None) == (runs_dir is None):
        raise UserError("fewshot-eval needs exactly one of --data DIR (sampled episodes) or --runs DIR "
                        "(published one-shot runs)")
    if runs_dir is not None:
        episode_flags = ["protocol", "ways", "shots", "queries", "episodes", "seed", "nested_classes", "include_seen"]
        given = [n for n in episode_flags if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise UserError(f"--runs fixes its episodes; drop --{', --'.join(n.replace('_', '-') for n in given)}")
        r = fe.runs_eval(checkpoint, runs_dir, device=device)
        for run in r["runs"]:
            click.echo(f"{run['run']}: {run['ways']}-way 1-shot, {run['queries']} queries, "
                       f"error {100 * run['error']:.1f}%")
        click.echo(f"mean error over {len(r['runs'])} runs: {100 * r['error']:.2f}% ± {100 * r['ci95']:.2f}% (95% CI)")
        return
    r = fe.fewshot_eval(checkpoint, data, ways=ways, shots=shots, queries=queries, episodes=episodes, seed=seed,
                        protocol=protocol, device=device, nested_classes=nested_classes, include_seen=include_seen)
    over = f"{r['classes']} classes"
    if "groups" in r:
        over += (f" in {r['groups_usable']} of {r['groups']} alphabets (those with ≥ {ways} classes of "
                 f"≥ {shots + queries} images)")
    click.echo(f"{r['ways']}-way {r['shots']}-shot {r['protocol']}, {r['queries']} queries, {r['episodes']} episodes "
               f"over {over}: accuracy {100 * r['accuracy']:.2f}% ± {100 * r['ci95']:.2f}% (95% CI)")


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
def masks_to_coco(masks_dir: str, images_dir: str | None, out: str, categories: tuple[str, ...]) -> None:
    """Instance-mask PNGs (0 = background, 1…K one object each) → COCO JSON (boxes + RLE masks)."""
    from pathlib import Path

    from tasks.detection.convert import masks_to_coco as convert_masks

    summary = convert_masks(Path(masks_dir), Path(out), Path(images_dir) if images_dir else None,
                            list(categories) or None)
    click.echo(json.dumps(summary))


def main() -> None:
    cli(prog_name="resnet-tasks")


if __name__ == "__main__":
    sys.exit(main())
