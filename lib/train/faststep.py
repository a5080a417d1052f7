"""The fast training step: optimizer in backward, blocked skinny GEMM, host memory.

Everything ae-train does to make a step faster than ``zero_grad; backward; opt.step()``
lives here, behind one switch (:func:`attach`, decided by :func:`applies`); the loop calls
one step function either way (``aekit.train.loop.train_step``, which ends in
:func:`backward_and_step`):

* :class:`StepInBackward`: Adam's step run per parameter inside backward, its gradient
  dropped at once (built on torch's private ``Adam._init_group`` and functional ``adam``);
* ``_skinny_linear``: a large layer at a small batch computed by row blocks on the CPU;
* :func:`before_allocation`: 2 MiB pages for torch's large CPU allocations
  (``aekit.system.hostmem.for_cpu_training``), set before the data and model exist.

Bit for bit: the weights and optimizer state after a step are those of the plain step
(tests/test_train.py), but for the last-bit rounding of a blocked product (see
``_skinny_linear``); a run is as deterministic as before.
"""

from __future__ import annotations

import functools

import torch

from aekit.system import hostmem


#: The step runs inside backward from this many trained parameters up (32 MiB of float32
#: gradients). Below it the plain step is faster: one fused Adam over every parameter
#: instead of one call per parameter tensor, and gradients that small cost little to
#: allocate. Measured on a 2-core CPU (fast vs plain ms per step, interleaved pairs): the
#: DCASE frames model (0.27 M parameters, batch 512) 9.5 vs 7.8, frames at width 1024
#: (5.5 M) 118 vs 105, a whole-clip model of 8.7 M at batch 64 29 vs 28, of 17.9 M 62 vs
#: 90, of 37.9 M at batch 25 81 vs 209.
MIN_PARAMETERS = 1 << 23


def applies(distributed: bool, model: torch.nn.Module) -> bool:
    """The switch: the step runs inside backward for a model of MIN_PARAMETERS trained
    parameters or more in a single process; under DDP a gradient is final only after its
    all-reduce, so the plain step runs there, as it does for a smaller model."""
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return not distributed and trained >= MIN_PARAMETERS


def attach(model: torch.nn.Module, opt: torch.optim.Optimizer,
           fast: bool) -> "StepInBackward | None":
    """Make ``opt``'s step run inside ``model``'s backward when ``fast`` (see
    :func:`applies`); the plain step otherwise. Returns the stepper (None: plain)."""
    return StepInBackward(model, opt) if fast else None


def before_allocation(device: torch.device) -> bool:
    """Host memory for CPU training (2 MiB pages), before the data and the model are
    allocated; nothing on other devices. True where the setting was made or found."""
    return device.type == "cpu" and hostmem.for_cpu_training()


def backward_and_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """The end of every training step: backward, which is the step when a
    :class:`StepInBackward` is attached to ``opt``, else zero_grad, backward, ``opt.step()``."""
    if getattr(opt, "aekit_step_in_backward", False):
        loss.backward()  # each parameter stepped as its gradient completes
        return
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


@functools.lru_cache(maxsize=1)
def _adam_keywords() -> frozenset:
    import inspect

    from torch.optim.adam import adam

    return frozenset(inspect.signature(adam).parameters)


class StepInBackward:
    """Adam's step for each parameter run inside backward, as soon as that parameter's
    gradient is complete, its gradient dropped at once: the whole model's gradients are
    never held together (measured at full widths, batch 25, on a 2-core CPU: 0.9 GB less
    peak memory than a full backward then ``opt.step()``).

    Two ways in, one update. A ``nn.Linear`` called on a batch of rows [B, D] in float32
    outside autocast goes through ``_LinearStep``: its backward computes the input's
    gradient, then the weight's gradient into one scratch buffer the size of the largest
    weight (allocated once, reused by every layer and step: no gradient is allocated, so
    none is faulted in and zeroed by the kernel, 1.8 GB a step at full widths), and steps
    weight and bias there. Every other parameter (BatchNorm's, any other module's, any
    Linear under bf16 autocast) is stepped by a ``register_post_accumulate_grad_hook``.

    The state is the optimizer's own (``opt.state``, ``opt.param_groups``, looked up at
    each call, so load_state_dict and the lr schedule work as before) and the update is
    the same per-tensor kernel on the same gradient (the same matrix products autograd
    runs for F.linear): the weights and the optimizer state are bit-identical to
    ``opt.step()`` after a full backward (tests/test_train.py checks it), except that on
    the CPU the forward of a large layer at a small batch runs by row blocks
    (``_skinny_linear``: 1.25x faster steps at full widths), which may round an output
    differently in the last bit; a run is as deterministic as before. Not for DDP: the
    step would run before the gradient is all-reduced. A parameter used twice in one
    forward (tied weights) would be updated between its uses: refused with an error.
    """

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer):
        self.opt = opt
        self.group_of = {p: gi for gi, g in enumerate(opt.param_groups) for p in g["params"]}
        self.handles = [p.register_post_accumulate_grad_hook(self._step)
                        for p in model.parameters() if p.requires_grad]
        self.linears = [m for m in model.modules() if type(m) is torch.nn.Linear
                        and m.weight.requires_grad and m.weight in self.group_of
                        and (m.bias is None or (m.bias.requires_grad
                                                and m.bias in self.group_of))]
        for m in self.linears:
            m.forward = functools.partial(_linear_forward, m, self)  # this instance only
        self._scratch: torch.Tensor | None = None
        self.steps: dict[torch.Tensor, int] = {}  # steps made by _LinearStep, per weight
        opt.aekit_step_in_backward = True  # backward_and_step then skips zero_grad and step

    def grad_buffer(self, p: torch.Tensor) -> torch.Tensor:
        """A [p.shape] view of the scratch buffer, for p's gradient until its step."""
        buf = self._scratch
        if buf is None or buf.device != p.device or buf.dtype != p.dtype:
            n = max(m.weight.numel() for m in self.linears)
            buf = self._scratch = torch.empty(n, device=p.device, dtype=p.dtype)
        return buf[:p.numel()].view(p.shape)

    def step_with(self, p: torch.Tensor, grad: torch.Tensor) -> None:
        p.grad = grad
        self._step(p)

    @torch.no_grad()
    def _step(self, p: torch.Tensor) -> None:
        from torch.optim.adam import adam

        group = self.opt.param_groups[self.group_of[p]]
        one = {**group, "params": [p]}
        params, grads, avgs, sqs, maxs, steps = [], [], [], [], [], []
        has_complex = self.opt._init_group(one, params, grads, avgs, sqs, maxs, steps)
        beta1, beta2 = group["betas"]
        options = dict(amsgrad=group["amsgrad"], has_complex=has_complex, beta1=beta1,
                       beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                       eps=group["eps"], maximize=group["maximize"], foreach=group["foreach"],
                       capturable=group["capturable"], differentiable=group["differentiable"],
                       fused=group["fused"],
                       decoupled_weight_decay=group.get("decoupled_weight_decay", False))
        # Only what this torch's functional Adam takes (decoupled_weight_decay is 2.7+;
        # it is False for Adam, as the weight_decay of the older versions was).
        adam(params, grads, avgs, sqs, maxs, steps,
             **{k: v for k, v in options.items() if k in _adam_keywords()})
        p.grad = None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        for m in self.linears:
            del m.forward  # the class's forward again
        self.linears, self._scratch, self.steps = [], None, {}
        self.opt.aekit_step_in_backward = False


def _linear_forward(m: torch.nn.Linear, stepper: StepInBackward, x: torch.Tensor) -> torch.Tensor:
    w = m.weight
    if (x.dim() == 2 and x.dtype == w.dtype == torch.float32 and torch.is_grad_enabled()
            and not torch.is_autocast_enabled(x.device.type)):
        return _LinearStep.apply(x, w, m.bias, stepper)
    return torch.nn.functional.linear(x, w, m.bias)  # hooks step it, if it is trained here


#: On the CPU, x [B, K] @ W.T with few rows B and a large W runs as products of row blocks
#: of W (MKL's kernel for the whole skinny product reaches a fraction of what the blocks do).
SKINNY_ROWS, SKINNY_BLOCK, SKINNY_MIN_OUT = 64, 512, 2048


def _skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear, computed by blocks of SKINNY_BLOCK output features when the batch is small
    and the layer large, on the CPU. Measured at full widths (451 M parameters, batch 25, 2
    cores): the 25024 -> 8224 product 1.8x faster, a whole training step 1.25x (six
    interleaved pairs of steps: 1.55 s against 1.94 s on average). Each output is the same
    dot product; it may round differently in the last bit than the one large call."""
    n = weight.shape[0]
    if x.device.type != "cpu" or x.shape[0] > SKINNY_ROWS or n < SKINNY_MIN_OUT:
        return torch.nn.functional.linear(x, weight, bias)
    return torch.cat([torch.nn.functional.linear(x, weight[i:i + SKINNY_BLOCK],
                                                 None if bias is None else bias[i:i + SKINNY_BLOCK])
                      for i in range(0, n, SKINNY_BLOCK)], dim=1)


class _LinearStep(torch.autograd.Function):
    """F.linear whose backward steps its weight and bias (see StepInBackward)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stepper):
        ctx.save_for_backward(x)
        ctx.params = (weight, bias, stepper, stepper.steps.get(weight, 0))
        return _skinny_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        weight, bias, stepper, steps = ctx.params
        if stepper.steps.get(weight, 0) != steps:
            raise RuntimeError("a Linear layer was used twice in one forward pass: its weight "
                               "was stepped before its first use was differentiated")
        # The products autograd runs for F.linear (addmm's backward), in the same layouts.
        gx = g.mm(weight) if ctx.needs_input_grad[0] else None  # before the step moves it
        with torch.no_grad():
            stepper.step_with(weight, torch.mm(g.t(), x, out=stepper.grad_buffer(weight)))
            stepper.steps[weight] = steps + 1
            if bias is not None:
                stepper.step_with(bias, g.sum(0))
        return gx, None, None, None
