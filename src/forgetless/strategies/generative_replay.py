"""Deep generative replay (DGR; Shin et al. 2017, "Continual Learning with Deep Generative Replay").

A generator is trained alongside the solver; no data is stored. Before each new task the
current generator and solver are frozen as the "previous scholar". At every step of the new task,
the previous generator produces inputs, the previous solver labels them (hard labels: the arg max
of its logits over the outputs it had; task-IL: each generated input gets a random earlier task
id and is labelled by that task's head), and these rows are appended to the batch, so the solver
trains on current + replayed data (equal numbers of rows, the paper's ratio r = 1/2). The new
generator trains on the same mix (current + generated inputs), so it does not forget either.

Generator: a small unconditional VAE (Kingma & Welling 2014; the paper used a GAN; van de Ven et
al. 2020 use a VAE) with an MLP encoder/decoder, Bernoulli likelihood on inputs scaled to [0, 1].
Generated inputs are rounded to the data's compact dtype, like real inputs.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from forgetless.strategies import register
from forgetless.strategies._buffer import run_seed
from forgetless.strategies.base import Batch, ModelOutput, Strategy, TrainingContext, frozen_copy


class GenerativeReplayParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latent_dim: int = Field(32, ge=1, description="VAE latent size")
    hidden: int = Field(400, ge=1, description="width of the VAE's hidden layers")
    generator_lr: float = Field(1e-3, gt=0.0, description="Adam learning rate of the VAE")
    generator_steps: int = Field(1, ge=1, le=100, description="VAE updates per solver step (on the same mixed batch)")
    replay_batch_size: int | None = Field(None, ge=1, description="generated rows per step (default: --batch-size)")


class VAE(nn.Module):
    """MLP variational auto-encoder over flattened inputs in [0, 1]."""

    def __init__(self, input_shape: tuple[int, ...], hidden: int, latent_dim: int):
        super().__init__()
        self.input_shape = tuple(input_shape)
        size = math.prod(input_shape)
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(size, hidden), nn.ReLU())
        self.mean = nn.Linear(hidden, latent_dim)
        self.log_var = nn.Linear(hidden, latent_dim)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, size))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def loss(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Negative ELBO per input: Bernoulli reconstruction + KL(q(z|x) || N(0, I))."""
        hidden = self.encoder(x)
        mean, log_var = self.mean(hidden), self.log_var(hidden).clamp(-10, 10)
        z = mean + noise * torch.exp(0.5 * log_var)
        target = x.flatten(1).clamp(0, 1)
        reconstruction = F.binary_cross_entropy_with_logits(self.decode_logits(z), target, reduction="sum")
        kl = -0.5 * torch.sum(1 + log_var - mean.pow(2) - log_var.exp())
        return (reconstruction + kl) / x.shape[0]

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        z = torch.randn(n, self.latent_dim, generator=generator).to(device)
        return torch.sigmoid(self.decode_logits(z)).view(n, *self.input_shape)


@register
class GenerativeReplay(Strategy):
    name = "generative-replay"
    family = "replay"
    summary = "deep generative replay: a VAE replays past inputs, the old solver labels them"
    Params: ClassVar[type[BaseModel]] = GenerativeReplayParams

    def setup(self, ctx: TrainingContext) -> None:
        seed = run_seed(ctx, zlib.crc32(self.name.encode()))
        self.random = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.vae = VAE(ctx.scenario.input_shape, self.params.hidden, self.params.latent_dim)
        self.vae.to(ctx.device)
        self.optimizer = torch.optim.Adam(self.vae.parameters(), lr=self.params.generator_lr)
        self.previous_vae: VAE | None = None
        self.previous_solver: nn.Module | None = None
        self.previous_tasks = 0
        return None

    def before_task(self, ctx: TrainingContext) -> None:
        """Freeze the scholar (generator + solver) that has learned every task so far."""
        if ctx.task_index > 0:
            self.previous_vae = frozen_copy(self.vae)
            self.previous_solver = frozen_copy(ctx.model)
            self.previous_tasks = ctx.task_index

    def _compact(self, ctx: TrainingContext, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Generated [0, 1] inputs in the data's compact form (e.g. uint8 in 0..255)."""
        scaled = x * ctx.scenario.max_value
        if like.dtype.is_floating_point:
            return scaled.to(like.dtype)
        return scaled.round_().clamp_(0, ctx.scenario.max_value).to(like.dtype)

    def replay_batch(self, ctx: TrainingContext, batch: Batch) -> Batch | None:
        if self.previous_vae is None or self.previous_solver is None:
            return None
        n = self.params.replay_batch_size or ctx.config.batch_size
        generated = self.previous_vae.generate(n, self.random, ctx.device)
        like = batch.raw if batch.raw is not None else batch.x
        raw = self._compact(ctx, generated, like)
        x = ctx.prepare(raw)
        task_ids: torch.Tensor | None = None
        if ctx.scenario.uses_task_id:
            task_ids = torch.randint(self.previous_tasks, (n,), generator=self.random)
            task_ids = task_ids.to(ctx.device)
        with torch.no_grad():
            labels = self.previous_solver(x, task_ids).argmax(dim=1)
        return Batch(x, labels, task_ids, raw if batch.raw is not None else None)

    def after_step(self, ctx: TrainingContext, batch: Batch, output: ModelOutput) -> bool:
        """Train the generator on the step's inputs: current rows and replayed ones alike."""
        self.vae.train()
        x = batch.x.detach()
        for _ in range(self.params.generator_steps):
            noise = torch.randn(len(x), self.vae.latent_dim, generator=self.random).to(x.device)
            loss = self.vae.loss(x, noise)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return False

    def report(self) -> dict[str, Any]:
        return {
            "generator_parameters": sum(p.numel() for p in self.vae.parameters()),
            "stored_samples": 0,
        }

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        optimizer = self.optimizer.state_dict()
        state: dict[str, Any] = {
            "vae": self.vae.state_dict(),
            "optimizer": {
                "state": {str(k): v for k, v in optimizer["state"].items()},
                "param_groups": optimizer["param_groups"],
            },
            "random": self.random.get_state(),
            "previous_tasks": self.previous_tasks,
        }
        if self.previous_vae is not None and self.previous_solver is not None:
            state["previous_vae"] = self.previous_vae.state_dict()
            state["previous_solver"] = self.previous_solver.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any], ctx: TrainingContext) -> None:
        self.vae.load_state_dict(state["vae"])
        optimizer = state["optimizer"]
        self.optimizer.load_state_dict(
            {
                "state": {int(k): v for k, v in optimizer["state"].items()},
                "param_groups": optimizer["param_groups"],
            }
        )
        self.random.set_state(state["random"].clone())
        self.previous_tasks = int(state["previous_tasks"])
        if "previous_vae" in state:
            self.previous_vae = frozen_copy(self.vae)
            self.previous_vae.load_state_dict(state["previous_vae"])
            self.previous_solver = frozen_copy(ctx.model)  # the learner's architecture, saved weights
            self.previous_solver.load_state_dict(state["previous_solver"])
