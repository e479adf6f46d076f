"""Group Relative Policy Optimization: sample G completions per prompt, score them with the
configured rewards, and raise the log-probs of the ones that beat their group's mean.

One micro-batch of the loop is B prompt indices. `loss` generates B x G completions with the
plain model (eval mode, no gradients), scores them (RewardSet), turns the rewards into group
advantages, and runs one training forward over the prompt + completion rows; only completion
tokens reach the loss (grpo_losses.py). The old log-probs are those of that first forward,
detached: on the step that sampled, the ratio is 1 and the gradient is REINFORCE's with the
group mean as baseline. With mu > 1 the rollouts are kept and trained on for mu - 1 more steps
against those old log-probs (grpo_replay.py), where the ratio moves and the clip acts.

Sampling is reproducible: the seed of each micro-batch is a hash of train.seed and the global
position of its first prompt in the train loader's stream. That position is saved in every
checkpoint, so a resumed run draws the same completions as one that never stopped, and a DDP
rank draws what one process with accumulation draws for the same micro-batch.

Generation uses `self.model`, the module before DDP wraps it (DDP shares its parameters), under
the training autocast (the policy that samples is the one that is trained). FSDP and tensor
parallelism are refused in run.py: ranks would decode a different number of steps and their
collective weight gathers would not line up.

evaluate: greedy completions of the held-out prompts; a completion is correct when the `number`
reward (else the first configured reward) is >= 1. val_loss = 1 - accuracy, so that early
stopping and the best checkpoint (lower is better) work unchanged.
"""

from __future__ import annotations

import copy
import hashlib
import time

import torch
from torch import nn
from tqdm import tqdm

from lmforge.config import RunConfig
from lmforge.data.example_loader import pad_rows
from lmforge.data.prompt_records import encode_prompts, load_prompts
from lmforge.data.sft import IGNORE
from lmforge.errors import ConfigError
from lmforge.finetune.base import FinetuneObjective, split_held_out
from lmforge.finetune.grpo_losses import group_advantages, grpo_loss, token_log_probs
from lmforge.finetune.grpo_replay import ReplayLoader, Rollout, pack_rollouts, unpack_rollouts
from lmforge.finetune.reward_set import RewardSet
from lmforge.finetune.sft import forward_logits, reference_logits
from lmforge.inference.generate import generate
from lmforge.inference.options import SamplingConfig
from lmforge.parallel.dist import DistInfo, sum_over_ranks
from lmforge.tokenizer import Tokenizer
from lmforge.train.objective import Batch
from lmforge.train.setup import accumulation_steps

PromptItem = tuple[list[int], dict]  # (prompt token ids through the chat template, its record)
ANSWER_REWARDS = ("number", "exact_match")  # the rewards that read a record's `answer`
EVAL_ROWS = 64  # held-out prompts decoded together
LOSS_STATS = ("kl", "clip_fraction", "ratio_mean")


def rollout_rows(
    prompts: list[list[int]], completions: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of prompt + completion rows, right-padded; targets are IGNORE on the
    prompt and the padding, so only completion tokens are scored."""
    inputs, targets = [], []
    for prompt, completion in zip(prompts, completions, strict=True):
        sequence = prompt + completion
        inputs.append(sequence[:-1])
        targets.append([IGNORE] * (len(prompt) - 1) + completion)
    return pad_rows(inputs, pad_id), pad_rows(targets, IGNORE)


def sample_seed(seed: int, first_row: int) -> int:
    """A generator seed that depends only on the run's seed and the global position of the
    micro-batch's first prompt: the same for one process with accumulation as for the rank of a
    DDP run that draws that micro-batch, and for a resumed run as for one that never stopped."""
    digest = hashlib.blake2b(f"grpo:{seed}:{first_row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # torch seeds must fit in a signed 64-bit int


class GRPOObjective(FinetuneObjective):
    reference: nn.Module | None = None
    train_loader: ReplayLoader | None = None
    rewards: RewardSet | None = None

    def prepare(self, run: RunConfig, info: DistInfo, progress: bool) -> Tokenizer:
        self.say = tqdm.write if info.is_main else (lambda message: None)
        config = self.config
        required = ("answer",) if set(ANSWER_REWARDS) & set(config.rewards.functions) else ()

        def read(path: str) -> list[PromptItem]:
            prompts = load_prompts(path, required)
            ids = encode_prompts(self.tokenizer, prompts, config.template)
            return [(row, prompt.record) for row, prompt in zip(ids, prompts, strict=True)]

        val = read(config.val_data) if config.val_data else None
        self.split = split_held_out(read(config.data), config, val)
        self.rewards = RewardSet(config.rewards)
        names = self.rewards.names
        self.judge = names.index("number") if "number" in names else 0
        self.seed = run.train.seed
        self.window_start, self.paused = time.perf_counter(), 0.0
        self.gen_seconds = self.reward_seconds = 0.0
        self.train_tokens = 0
        self.stops = tuple(self.tokenizer.stop_ids)
        return self.tokenizer

    def after_starting_weights(self, model: nn.Module) -> None:
        # The reference is only needed for the KL term; LoRA gets it by switching adapters off.
        if self.config.grpo.beta > 0 and not self.config.lora.enabled:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)

    def fitting(self, items: list[PromptItem], room: int, split: str) -> list[PromptItem]:
        kept = [item for item in items if len(item[0]) <= room]
        if len(kept) < len(items):
            self.say(
                f"{split}: dropped {len(items) - len(kept)} of {len(items)} prompts longer than "
                f"{room} tokens (train.seq_len minus finetune.grpo.max_new_tokens)"
            )
        return kept

    def loaders(self, run: RunConfig, info: DistInfo, seq_len: int, device: torch.device):
        room = seq_len - self.config.grpo.max_new_tokens
        if room < 1:
            raise ConfigError(
                f"finetune.grpo.max_new_tokens ({self.config.grpo.max_new_tokens}) leaves no room "
                f"for a prompt in train.seq_len ({seq_len}); raise seq_len or lower it"
            )
        train = self.fitting(self.split[0], room, "train")
        val = self.fitting(self.split[1], room, "val")
        self.prompts = train + val  # the loaders hand out indices into this list
        indices = list(range(len(self.prompts)))

        def collate(items: list[int]) -> Batch:
            return (torch.tensor(items, dtype=torch.long),)

        loaders = self.example_loaders(
            indices[: len(train)], indices[len(train) :], collate, run, info, device
        )
        accumulation = accumulation_steps(run, seq_len, info.data_ranks)
        self.train_loader = ReplayLoader(loaders[0], accumulation, self.config.grpo.mu)
        self.rollouts: list[Rollout | None] = [None] * accumulation
        return self.train_loader, loaders[1]

    @torch.no_grad()
    def sample(
        self, rows: list[list[int]], temperature: float, seed: int | None, autocast
    ) -> list[list[int]]:
        """Completions of `rows` under the training precision (autocast), so that the policy
        that samples is the one that is trained (on a 2-core EPYC, 32 rows decode at the same
        speed in bf16 as in fp32: decoding this small a model is bound by per-op overhead)."""
        grpo, model = self.config.grpo, self.model
        config = SamplingConfig(
            max_new_tokens=grpo.max_new_tokens,
            temperature=temperature,
            top_p=grpo.top_p if grpo.top_p < 1 else None,
            seed=seed,
            stop_tokens=self.stops,
        )
        was_training = model.training
        model.eval()  # no dropout while sampling
        try:
            with autocast:
                return generate(model, rows, config)
        finally:
            model.train(was_training)

    def score(self, indices: list[int], completions: list[list[int]], group: int):
        records = [self.prompts[i][1] for i in indices for _ in range(group)]
        stops = set(self.stops)
        texts = [self.tokenizer.decode([t for t in c if t not in stops]) for c in completions]
        return self.rewards.score(texts, records)

    def reference_log_probs(self, batch: Batch, autocast) -> torch.Tensor:
        logits = reference_logits(self.reference, self.model, batch, autocast)
        return token_log_probs(logits, batch[1])

    def loss(self, forward: nn.Module, batch: Batch, autocast) -> torch.Tensor:
        loader = self.train_loader
        if loader is not None and not loader.fresh:  # a later step of the cycle (mu > 1)
            rollout = self.rollouts[loader.micro]
            rows = (rollout.inputs, rollout.targets)
            new_logp = token_log_probs(forward_logits(forward, rows, autocast), rollout.targets)
        else:
            rollout, new_logp = self.roll_out(forward, batch, autocast)
            if self.config.grpo.mu > 1:
                self.rollouts[loader.micro if loader is not None else 0] = rollout
        self.train_tokens += int((rollout.inputs != self.tokenizer.eot_id).sum())
        grpo = self.config.grpo
        clip = (grpo.clip_eps, grpo.clip_eps if grpo.clip_eps_high is None else grpo.clip_eps_high)
        loss, stats = grpo_loss(
            new_logp, rollout.old_logp, rollout.ref_logp, rollout.advantages,
            rollout.targets != IGNORE, clip, grpo.beta, grpo.normalization,
        )  # fmt: skip
        device = new_logp.device
        self.accumulate(
            **{k: stats[k] for k in LOSS_STATS if k in stats}, count=torch.ones((), device=device)
        )
        return loss

    def roll_out(self, forward: nn.Module, batch: Batch, autocast) -> tuple[Rollout, torch.Tensor]:
        """Sample, score and take group advantages for one micro-batch of prompts; returns the
        rollout (old log-probs: the new ones, detached) and the new log-probs with gradients."""
        grpo, device = self.config.grpo, batch[0].device
        indices = batch[0].tolist()
        rows = [self.prompts[i][0] for i in indices for _ in range(grpo.group_size)]
        first_row = self.train_loader.first_row if self.train_loader is not None else 0
        started = time.perf_counter()
        seed = sample_seed(self.seed, first_row)
        completions = self.sample(rows, grpo.temperature, seed, autocast)
        generated = time.perf_counter()
        scores = self.score(indices, completions, grpo.group_size)
        scored = time.perf_counter()
        self.gen_seconds += generated - started
        self.reward_seconds += scored - generated
        rewards = torch.tensor(scores.total, dtype=torch.float32, device=device)
        advantages = group_advantages(rewards, grpo.group_size, grpo.scale_by_std)
        inputs, targets = rollout_rows(rows, completions, self.tokenizer.eot_id)
        pair = (inputs.to(device), targets.to(device))
        new_logp = token_log_probs(forward_logits(forward, pair, autocast), pair[1])
        ref_logp = self.reference_log_probs(pair, autocast) if grpo.beta > 0 else None
        self.log_rollout(scores, rewards, completions, generated - started)
        return Rollout(*pair, new_logp.detach(), ref_logp, advantages), new_logp

    def log_rollout(self, scores, rewards, completions, gen_s: float) -> None:
        """Means per generation batch (train_metrics averages them over batches and ranks)."""
        device = rewards.device
        groups = rewards.view(-1, self.config.grpo.group_size)
        uniform = (groups == groups[:, :1]).all(dim=1).float().mean()
        lengths = torch.tensor([float(len(c)) for c in completions], device=device)
        # Truncated: no stop token, so the completion hit max_new_tokens.
        stopped = [bool(c) and c[-1] in self.stops for c in completions]
        values = {f"{k}": torch.tensor(v, device=device) for k, v in scores.summary().items()}
        self.accumulate(
            "rollouts",
            **values,
            zero_variance_groups=uniform,
            completion_length=lengths.mean(),
            truncated_fraction=torch.tensor(1 - sum(stopped) / len(stopped), device=device),
            gen_tokens_per_s=torch.tensor(lengths.sum().item() / max(gen_s, 1e-9), device=device),
            rollouts=torch.ones((), device=device),
        )

    def state_dict(self, info: DistInfo) -> dict:
        """The kept rollouts when a checkpoint falls inside a cycle (collective)."""
        if self.train_loader is None or not self.train_loader.mid_cycle:
            return {}
        return {"rollouts": pack_rollouts(self.rollouts, info)}

    def load_state_dict(self, state: dict, info: DistInfo) -> None:
        if self.train_loader is None or not self.train_loader.mid_cycle:
            return
        self.rollouts = unpack_rollouts(
            state.get("rollouts", {}), info, self.train_loader.device, "the checkpoint"
        )

    def close(self) -> None:
        if self.rewards is not None:
            self.rewards.close()  # stops the worker of user and format rewards

    def train_metrics(self, info: DistInfo) -> dict[str, float]:
        metrics = super().train_metrics(info)
        if metrics:  # failed reward calls so far, counted on this rank (not summed over ranks)
            metrics |= {k: float(v) for k, v in self.rewards.counters().items()}
            metrics |= self.time_shares()
        return metrics

    def time_shares(self) -> dict[str, float]:
        """This rank's wall time since the last log, split between sampling (generation and
        rewards) and training (forward, backward and the optimizer step; checkpoints too)."""
        now = time.perf_counter()
        elapsed = max(now - self.window_start - self.paused, 1e-9)
        training = max(elapsed - self.gen_seconds - self.reward_seconds, 1e-9)
        shares = {
            "gen_seconds": self.gen_seconds,
            "reward_seconds": self.reward_seconds,
            "generation_share": self.gen_seconds / elapsed,
            "train_tokens_per_s": self.train_tokens / training,
        }
        self.window_start, self.paused = now, 0.0
        self.gen_seconds = self.reward_seconds = 0.0
        self.train_tokens = 0
        return shares

    def evaluate(self, forward, loader, batches, autocast, info) -> dict[str, float]:
        """Greedy held-out accuracy. This rank's share of val batches 0 .. batches-1 is decoded
        EVAL_ROWS prompts at a time (one batch of micro_batch_size rows per pass left the cores
        idle between short steps)."""
        started = time.perf_counter()
        judge = self.rewards.names[self.judge]
        batches = min(batches, loader.num_batches)
        mine = range(info.data_rank, batches, info.data_ranks)
        indices = [i for number in mine for i in loader.batch_at(number)[0].tolist()]
        totals = torch.zeros(3, device=info.device)
        for first in range(0, len(indices), EVAL_ROWS):
            part = indices[first : first + EVAL_ROWS]
            completions = self.sample([self.prompts[i][0] for i in part], 0.0, None, autocast)
            scores = self.score(part, completions, 1)
            correct = sum(1.0 for s in scores.per_function[judge] if s >= 1)
            totals += torch.tensor(
                [correct, sum(scores.total), float(len(part))], device=info.device
            )
        correct, reward, count = (sum_over_ranks(totals, info) / info.tensor_parallel).tolist()
        accuracy = correct / max(count, 1.0)
        self.paused += time.perf_counter() - started  # not charged to training's tokens/s
        return {
            "val_loss": 1 - accuracy,
            "val_accuracy": accuracy,
            "val_reward": reward / max(count, 1.0),
        }
