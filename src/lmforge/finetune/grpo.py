"""Group Relative Policy Optimization: sample G completions per prompt, score them with the
configured rewards, and raise the log-probs of the ones that beat their group's mean.

One micro-batch of the loop is B prompt indices. `loss` generates B x G completions with the
plain model (eval mode, no gradients), scores them (RewardSet), turns the rewards into group
advantages, and runs one training forward over the prompt + completion rows; only completion
tokens reach the loss (grpo_losses.py). mu = 1: the old log-probs are the new ones detached, so
the ratio is 1 and the gradient is REINFORCE's with the group mean as baseline.

Sampling is reproducible: the seed of each micro-batch is a hash of (train.seed, the train
loader's cursor, the data rank). The cursor is saved in every checkpoint, so a resumed run draws
the same completions as one that never stopped (a per-call counter kept here would restart at 0).

Generation uses `self.model`, the module before DDP wraps it (DDP shares its parameters), in its
own dtype (no autocast). FSDP and tensor parallelism are refused in run.py: ranks would decode a
different number of steps and their collective weight gathers would not line up.

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
from lmforge.data.example_loader import ExampleLoader, pad_rows
from lmforge.data.prompt_records import encode_prompts, load_prompts
from lmforge.data.sft import IGNORE
from lmforge.errors import ConfigError
from lmforge.finetune.base import FinetuneObjective, split_held_out
from lmforge.finetune.grpo_losses import group_advantages, grpo_loss, token_log_probs
from lmforge.finetune.reward_set import RewardSet
from lmforge.finetune.sft import forward_logits, reference_logits
from lmforge.inference.generate import generate
from lmforge.inference.options import SamplingConfig
from lmforge.parallel.dist import DistInfo
from lmforge.tokenizer import Tokenizer
from lmforge.train.objective import Batch, evaluate_batches

PromptItem = tuple[list[int], dict]  # (prompt token ids through the chat template, its record)
ANSWER_REWARDS = ("number", "exact_match")  # the rewards that read a record's `answer`


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


def sample_seed(seed: int, cursor: int, rank: int) -> int:
    """A generator seed that depends only on the run's seed, the loader cursor and the rank."""
    digest = hashlib.blake2b(f"grpo:{seed}:{cursor}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # torch seeds must fit in a signed 64-bit int


class GRPOObjective(FinetuneObjective):
    reference: nn.Module | None = None
    train_loader: ExampleLoader | None = None

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
        self.seed, self.rank = run.train.seed, info.data_rank
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
        self.train_loader = loaders[0]
        return loaders

    @torch.no_grad()
    def sample(
        self, rows: list[list[int]], temperature: float, seed: int | None
    ) -> list[list[int]]:
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
        grpo, device = self.config.grpo, batch[0].device
        indices = batch[0].tolist()
        rows = [self.prompts[i][0] for i in indices for _ in range(grpo.group_size)]
        cursor = self.train_loader.rows_drawn if self.train_loader is not None else 0
        started = time.perf_counter()
        completions = self.sample(rows, grpo.temperature, sample_seed(self.seed, cursor, self.rank))
        generated = time.perf_counter()
        scores = self.score(indices, completions, grpo.group_size)
        scored = time.perf_counter()
        rewards = torch.tensor(scores.total, dtype=torch.float32, device=device)
        advantages = group_advantages(rewards, grpo.group_size, grpo.scale_by_std)
        inputs, targets = rollout_rows(rows, completions, self.tokenizer.eot_id)
        rollout = (inputs.to(device), targets.to(device))
        new_logp = token_log_probs(forward_logits(forward, rollout, autocast), rollout[1])
        ref_logp = self.reference_log_probs(rollout, autocast) if grpo.beta > 0 else None
        clip = (
            grpo.clip_eps,
            grpo.clip_eps_high if grpo.clip_eps_high is not None else grpo.clip_eps,
        )
        loss, stats = grpo_loss(
            new_logp, new_logp.detach(), ref_logp, advantages, rollout[1] != IGNORE,
            clip, grpo.beta, grpo.normalization,
        )  # fmt: skip
        self.log_step(scores, rewards, completions, stats, generated - started, scored - generated)
        return loss

    def log_step(self, scores, rewards, completions, stats, gen_s: float, reward_s: float) -> None:
        """Per-micro-batch means (train_metrics averages them over micro-batches and ranks)."""
        device = rewards.device
        groups = rewards.view(-1, self.config.grpo.group_size)
        uniform = (groups == groups[:, :1]).all(dim=1).float().mean()
        lengths = torch.tensor([float(len(c)) for c in completions], device=device)
        # Truncated: no stop token, so the completion hit max_new_tokens.
        stopped = [bool(c) and c[-1] in self.stops for c in completions]
        values = {f"{k}": torch.tensor(v, device=device) for k, v in scores.summary().items()}
        for key in ("kl", "clip_fraction", "ratio_mean"):
            if key in stats:
                values[key] = stats[key]
        self.accumulate(
            **values,
            zero_variance_groups=uniform,
            completion_length=lengths.mean(),
            truncated_fraction=torch.tensor(1 - sum(stopped) / len(stopped), device=device),
            gen_seconds=torch.tensor(gen_s, device=device),
            gen_tokens_per_s=torch.tensor(lengths.sum().item() / max(gen_s, 1e-9), device=device),
            reward_seconds=torch.tensor(reward_s, device=device),
            count=torch.tensor(1.0, device=device),
        )

    def train_metrics(self, info: DistInfo) -> dict[str, float]:
        metrics = super().train_metrics(info)
        if metrics:  # failed reward calls so far, counted on this rank (not summed over ranks)
            metrics |= {k: float(v) for k, v in self.rewards.counters().items()}
        return metrics

    def evaluate(self, forward, loader, batches, autocast, info) -> dict[str, float]:
        judge = self.rewards.names[self.judge]

        def sums(batch: Batch) -> torch.Tensor:
            indices = batch[0].tolist()
            completions = self.sample([self.prompts[i][0] for i in indices], 0.0, None)
            scores = self.score(indices, completions, 1)
            correct = sum(1.0 for s in scores.per_function[judge] if s >= 1)
            values = [correct, sum(scores.total), float(len(indices))]
            return torch.tensor(values, dtype=torch.float32, device=batch[0].device)

        batches = min(batches, loader.num_batches)
        correct, reward, count = evaluate_batches(sums, loader, batches, info, forward)
        accuracy = (correct / count).item()
        return {
            "val_loss": 1 - accuracy,
            "val_accuracy": accuracy,
            "val_reward": (reward / count).item(),
        }
