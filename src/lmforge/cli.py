"""`lmforge <command>`: each subcommand is a typed dataclass (parsed by tyro) and a plain function.

Argument parsing lives only here. User errors (LmforgeError, and tyro's parse errors) become one
line on stderr and exit code 2, without a traceback.
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Literal, Union

import tyro

from lmforge.config import FinetuneRunConfig, RunConfig, load_run_config
from lmforge.errors import LmforgeError, TrainingError
from lmforge.evals.commands import HellaswagEval, LossEval, run_eval_task
from lmforge.evals.lm_eval_command import LmEvalEval
from lmforge.interop.commands import ConvertCommand, ExportCommand, run_convert, run_export
from lmforge.serve.options import ServeCommand

if TYPE_CHECKING:
    from lmforge.inference.options import DecodeOptions

Dtype = Literal["auto", "fp32", "bf16"]
Quantize = Literal["auto", "none", "int8", "int4"]
Compile = Literal["auto", "on", "off"]


@dataclass
class TrainCommand:
    """Train a model. Config: a TOML file (--config) plus dotted overrides such as --train.max_steps 100."""

    run: Annotated[RunConfig, tyro.conf.arg(name="")] = field(default_factory=RunConfig)
    config: str | None = None
    """TOML run config: a path, or the name of a shipped one (quickstart, tiny)."""
    resume: bool = False
    """Continue the run in train.out_dir from its last checkpoint, exactly."""
    init_from: str | None = None
    """Start a new run from the weights of this checkpoint (or run) directory."""
    start_step: int | None = None
    """Set the step counter (learning-rate schedule, train.max_steps) of the resumed or new run."""
    reset_optimizer: bool = False
    """With --resume: restore weights, data position and step, but start a fresh optimizer."""


@dataclass
class FinetuneCommand:
    """Finetune a model: sft, dpo or distill, optionally with LoRA (the train loop and its flags)."""

    method: tyro.conf.Positional[Literal["sft", "dpo", "distill", None]] = None
    """sft, dpo or distill; default: the config's finetune.method."""
    run: Annotated[FinetuneRunConfig, tyro.conf.arg(name="")] = field(
        default_factory=FinetuneRunConfig
    )
    config: str | None = None
    """TOML run config with a [finetune] section: a path or a shipped name (sft-smollm2, ...)."""
    init_from: str | None = None
    """Starting weights (sets finetune.init_from): checkpoint or run dir, .gguf file or HF dir."""
    resume: bool = False
    """Continue the run in train.out_dir from its last checkpoint, exactly."""
    start_step: int | None = None
    """Set the step counter (learning-rate schedule, train.max_steps) of the resumed or new run."""
    reset_optimizer: bool = False
    """With --resume: restore weights, data position and step, but start a fresh optimizer."""


@dataclass
class MergeCommand:
    """Fold a LoRA run's adapters into its base weights: a full checkpoint for sample/export."""

    checkpoint: tyro.conf.Positional[str]
    """LoRA checkpoint directory, or a LoRA run directory (uses its last checkpoint)."""
    out: str
    """Checkpoint directory to create (must not exist, or be empty)."""
    base: str | None = None
    """Base weights (checkpoint, .gguf or HF dir); default: the path the adapters recorded."""


@dataclass
class PrepareCommand:
    """Tokenize the configured data source into token shards (train runs this automatically)."""

    run: Annotated[RunConfig, tyro.conf.arg(name="")] = field(default_factory=RunConfig)
    config: str | None = None
    """TOML run config whose [data] section to prepare."""


@dataclass
class ConsolidateCommand:
    """Gather an FSDP checkpoint's sharded model into model.safetensors (one process)."""

    checkpoint: str
    """Checkpoint directory, or a run directory (uses its last checkpoint)."""


@dataclass
class SampleCommand:
    """Generate text from a checkpoint."""

    checkpoint: str
    """Checkpoint directory, or a run directory (uses its last checkpoint)."""
    prompt: tuple[str, ...] = ("",)
    """One or more prompts, decoded as one batch."""
    max_new_tokens: int = 200
    temperature: float = 0.8
    """0 is greedy decoding."""
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 1337
    device: str = "auto"
    dtype: Dtype = "auto"
    """auto: bf16 on a GPU, fp32 on a CPU (quantized layers still multiply in bf16)."""
    quantize: Quantize = "auto"
    """Weight-only int8/int4 for CPU decoding; auto keeps an imported GGUF's precision (Q4_1 ->
    int4, Q8_0 -> int8) and leaves other checkpoints unquantized."""
    compile: Compile = "auto"
    """torch.compile the one-token decode step; auto compiles when a call generates >= 1024
    tokens (compiling takes ~6-30 s on a CPU)."""
    stop_at_end_of_text: bool = True
    """Stop a sample at the tokenizer's end-of-text or end-of-turn tokens."""
    chat: bool = False
    """Wrap each prompt in the chat template as a user message (for instruction-tuned models)."""
    template: str | None = None
    """Chat template: a built-in name (chatml, llama3, llama2, alpaca) or Jinja source;
    default: the tokenizer's own."""


@dataclass
class ChatCommand:
    """Chat with a model in the terminal, through its chat template, streaming the replies."""

    checkpoint: str
    """Checkpoint directory, or a run directory (uses its last checkpoint)."""
    system: str | None = None
    """System prompt put at the start of the conversation."""
    template: str | None = None
    """Chat template: a built-in name (chatml, llama3, llama2, alpaca) or Jinja source;
    default: the tokenizer's own."""
    max_new_tokens: int = 256
    temperature: float = 0.0
    """0 is greedy decoding."""
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 1337
    device: str = "auto"
    dtype: Dtype = "auto"
    """auto: bf16 on a GPU, fp32 on a CPU (quantized layers still multiply in bf16)."""
    quantize: Quantize = "auto"
    """Weight-only int8/int4 for CPU decoding; auto keeps an imported GGUF's precision (Q4_1 ->
    int4, Q8_0 -> int8) and leaves other checkpoints unquantized."""
    compile: Compile = "auto"
    """torch.compile the one-token decode step; auto compiles when a call generates >= 1024
    tokens (compiling takes ~6-30 s on a CPU)."""


@dataclass
class PlotCommand:
    """Draw the loss curves of a run directory to a PNG."""

    run_dir: tyro.conf.Positional[str]
    out: str | None = None
    """PNG path; default RUN_DIR/loss.png."""


@dataclass
class PresetsCommand:
    """List the named model presets: parameters, FLOPs per token, training memory per GPU."""

    seq_len: int = 2048
    """Sequence length for the attention part of FLOPs per token."""
    gpus: int = 8
    """World size for the memory-per-GPU columns (ddp / zero1 / fsdp)."""


@dataclass
class EvalCommand:
    """Evaluate a checkpoint: `eval hellaswag`, `eval loss` (on prepared data) or `eval lm-eval`."""

    task: tyro.conf.OmitSubcommandPrefixes[
        Union[  # noqa: UP007 (tyro names subcommands through Annotated members of a Union)
            Annotated[HellaswagEval, tyro.conf.subcommand("hellaswag")],
            Annotated[LossEval, tyro.conf.subcommand("loss")],
            Annotated[LmEvalEval, tyro.conf.subcommand("lm-eval")],
        ]
    ]


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


def decode_options(command: SampleCommand | ChatCommand) -> DecodeOptions:
    """The decode settings of a sample or chat command, as the plain options they take."""
    from lmforge.inference.options import DecodeOptions

    names = [f.name for f in dataclasses.fields(DecodeOptions)]
    return DecodeOptions(**{name: getattr(command, name) for name in names})


def run_sample(command: SampleCommand) -> None:
    from lmforge.inference.sample import sample

    sample(
        command.checkpoint, command.prompt, decode_options(command), chat=command.chat,
        template=command.template, stop_at_end_of_text=command.stop_at_end_of_text,
    )  # fmt: skip


def run_chat(command: ChatCommand) -> None:
    from lmforge.inference.chat import chat

    chat(
        command.checkpoint, decode_options(command), system=command.system,
        template=command.template,
    )  # fmt: skip


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
            print(f"error: {error}", file=sys.stderr)
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
            print(f"error: {error}", file=sys.stderr)
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
