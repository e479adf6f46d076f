"""`lmforge <command>`: a table of commands, each a typed dataclass (parsed by tyro) that lives
in its package, and a small `run_*` adapter here that calls that package's plain function and
prints the outcome.

Argument parsing lives only here. User errors (LmforgeError, and tyro's parse errors) become one
line on stderr and exit code 2, without a traceback.

The `run_*` adapters import their packages inside the function so that `--help` skips torch.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import re
import sys
from collections.abc import Callable

import tyro

from lmforge.checkpoint.commands import ConsolidateCommand
from lmforge.config import RunConfig, load_run_config
from lmforge.errors import LmforgeError, TrainingError, one_line
from lmforge.evals.commands import EvalCommand, run_eval_task
from lmforge.finetune.commands import FinetuneCommand, MergeCommand
from lmforge.inference.commands import ChatCommand, SampleCommand
from lmforge.interop.commands import ConvertCommand, ExportCommand, run_convert, run_export
from lmforge.models.commands import PresetsCommand
from lmforge.parallel.plan_command import PlanCommand
from lmforge.serve.options import ServeCommand
from lmforge.train.commands import PlotCommand, PrepareCommand, TrainCommand


def run_train(command: TrainCommand) -> None:
    from lmforge.train.loop import train

    result = train(
        command.run,
        resume=command.resume,
        init_from=command.init_from,
        start_step=command.start_step,
        reset_optimizer=command.reset_optimizer,
    )
    resume = f"lmforge train --config {result.out_dir / 'config.toml'} --resume"
    if "TORCHELASTIC_RUN_ID" in os.environ:  # the launcher prints its own command line
        resume = "the same `lmforge launch` command plus --resume"
    if report_run(result, resume):
        print(f"sample it: lmforge sample --checkpoint {result.out_dir} --prompt 'def '")


def report_run(result, resume_command: str) -> bool:
    """Print how a run ended (rank 0 only); True when it finished rather than stopped early."""
    if not is_main_process():
        return False
    if result.stopped_by:
        print(
            f"stopped by {result.stopped_by} at step {result.step}, after saving a checkpoint; "
            f"continue with: {resume_command}"
        )
        return False
    # val_loss is None when --resume finds the run already at train.max_steps (nothing to do).
    val = "n/a" if result.val_loss is None else f"{result.val_loss:.4f}"
    print(f"done: step {result.step}, val loss {val}; run dir {result.out_dir}")
    return True


def run_finetune(command: FinetuneCommand) -> None:
    from lmforge.finetune.run import finetune

    run = command.run
    settings = {"method": command.method} if command.method else {}
    if command.init_from:
        settings["init_from"] = command.init_from
    run = dataclasses.replace(run, finetune=dataclasses.replace(run.finetune, **settings))
    result = finetune(run, command.resume, command.start_step, command.reset_optimizer)
    if report_run(result, "the same command plus --resume") and run.finetune.lora.enabled:
        print(f"merge the adapters for sample/export: lmforge merge {result.out_dir} --out DIR")


def run_merge(command: MergeCommand) -> None:
    from lmforge.finetune.merge import merge_checkpoint

    path = merge_checkpoint(command.checkpoint, command.out, command.base)
    print(f"merged {command.checkpoint} -> {path}")


def run_consolidate(command: ConsolidateCommand) -> None:
    from lmforge.checkpoint.run_state import consolidate_checkpoint

    directory = consolidate_checkpoint(command.checkpoint)
    print(f"wrote {directory / 'model.safetensors'}")


def run_prepare(command: PrepareCommand) -> None:
    from lmforge.data.prepare import prepare, read_index

    directory = prepare(command.run.data)
    index = read_index(directory)
    counts = {s: sum(x["tokens"] for x in shards) for s, shards in index["splits"].items()}
    print(
        f"prepared {directory}: {counts} tokens, vocab {index['vocab_size']} ({index['tokenizer']})"
    )


def run_sample(command: SampleCommand) -> None:
    from lmforge.inference.sample import sample

    sample(
        command.checkpoint, command.prompt, command.decode, chat=command.chat,
        template=command.template, stop_at_end_of_text=command.stop_at_end_of_text,
    )  # fmt: skip


def run_chat(command: ChatCommand) -> None:
    from lmforge.inference.chat import chat

    chat(command.checkpoint, command.decode, system=command.system, template=command.template)


def run_serve(command: ServeCommand) -> None:
    try:
        from lmforge.serve.server import serve
    except ImportError as error:
        raise LmforgeError(
            f"lmforge serve needs its extra ({error.name} is missing); "
            "install it with: pip install 'lmforge[serve]'"
        ) from None
    serve(command)


def run_eval(command: EvalCommand) -> None:
    run_eval_task(command.task)


def run_plot(command: PlotCommand) -> None:
    from lmforge.train.plot import plot_run

    print(plot_run(command.run_dir, command.out))


def run_presets(command: PresetsCommand) -> None:
    from lmforge.models.presets_table import print_presets_table

    print_presets_table(command.seq_len, command.gpus)


def run_plan(command: PlanCommand) -> None:
    from lmforge.parallel.plan_report import plan_report

    lines, refusal = plan_report(command)
    print("\n".join(lines))
    if refusal:  # the table above shows why; the refusal is the one-line error
        raise LmforgeError(refusal)


COMMANDS: dict[str, tuple[type, Callable]] = {
    "train": (TrainCommand, run_train),
    "prepare": (PrepareCommand, run_prepare),
    "finetune": (FinetuneCommand, run_finetune),
    "merge": (MergeCommand, run_merge),
    "sample": (SampleCommand, run_sample),
    "chat": (ChatCommand, run_chat),
    "serve": (ServeCommand, run_serve),
    "eval": (EvalCommand, run_eval),
    "plot": (PlotCommand, run_plot),
    "presets": (PresetsCommand, run_presets),
    "plan": (PlanCommand, run_plan),
    "convert": (ConvertCommand, run_convert),
    "export": (ExportCommand, run_export),
    "consolidate": (ConsolidateCommand, run_consolidate),
}


def _config_defaults(args: list[str], cls: type = RunConfig) -> RunConfig:
    """The TOML file and model preset are read before tyro parses the remaining overrides."""
    scan = argparse.ArgumentParser(add_help=False)
    scan.add_argument("--config")
    scan.add_argument("--model.preset", "--model-preset", dest="preset")
    known, _ = scan.parse_known_args(args)
    return load_run_config(known.config, known.preset, cls)


def _one_line(text: str) -> str:
    """Condense tyro's boxed error message to one line."""
    lines = [re.sub(r"[│╭╮╰╯─]+", " ", line).strip() for line in text.splitlines()]
    lines = [
        line for line in lines if line and not line.startswith(("For full helptext", "usage:"))
    ]
    if len(lines) > 1 and lines[1].startswith(lines[0]):
        lines = lines[1:]  # the box title repeats the first line
    return re.sub(r"\s+", " ", "; ".join(lines))


def parse(command_type: type, args: list[str], prog: str):
    default = None
    run_field = {f.name: f for f in dataclasses.fields(command_type)}.get("run")
    if run_field is not None:
        # the run config's class is the field's default factory (RunConfig or FinetuneRunConfig)
        default = command_type(run=_config_defaults(args, run_field.default_factory))
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(
                command_type, args=args, default=default, prog=prog, use_underscores=True
            )
    except SystemExit as exit_:
        if exit_.code:
            raise LmforgeError(_one_line(captured.getvalue()) or "invalid arguments") from None
        sys.stderr.write(captured.getvalue())
        raise


def usage() -> str:
    lines = ["usage: lmforge <command> [options]   (lmforge <command> --help for its options)", ""]
    for name, (command_type, _) in COMMANDS.items():
        lines.append(f"  {name:<11} {(command_type.__doc__ or '').splitlines()[0]}")
    lines.append(
        f"  {'launch':<11} Run a command on several processes/nodes (torchrun's options first)"
    )
    return "\n".join(lines)


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process: the one that prints."""
    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, args = argv[0], argv[1:]
    if name == "launch":
        from lmforge.parallel.launch import launch

        try:
            return launch(args)
        except LmforgeError as error:
            print(f"error: {one_line(error)}", file=sys.stderr)
            return 2
    if name not in COMMANDS:
        print(
            f"error: unknown command '{name}'; choose one of {', '.join(COMMANDS)}", file=sys.stderr
        )
        return 2
    command_type, handler = COMMANDS[name]
    try:
        handler(parse(command_type, args, f"lmforge {name}"))
    except LmforgeError as error:
        if is_main_process():  # every rank hits the same error; one line is enough
            # flattened again here: a subclass or a caller may have changed args after __init__
            print(f"error: {one_line(error)}", file=sys.stderr)
        return 3 if isinstance(error, TrainingError) else 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `lmforge presets | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
