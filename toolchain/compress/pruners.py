"""The pruning machinery behind ``prune``: which layers are protected, and one pruner per mode.

Structured pruning is torch-pruning's dependency graph (``BasePruner``): removing
an output channel of a convolution also removes the matching BatchNorm channel
and the next layer's input channel, so the smaller model stays consistent and is
really faster. Unstructured pruning is ``torch.nn.utils.prune`` L1 masking: it
zeroes weights but keeps every tensor's shape, so dense kernels run at the same speed.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any, Protocol

import numpy as np

from toolchain.errors import UsageError, first_line

IMPORTANCES = ("l1", "bn", "taylor")
_TAYLOR_BATCH = 32


class Pruner(Protocol):
    def step(self) -> None: ...
    def finalize(self) -> None: ...


def prunable_types(torch: Any) -> tuple[type, ...]:
    return (torch.nn.modules.conv._ConvNd, torch.nn.Linear)


def resolve_keep(module: Any, names: tuple[str, ...]) -> list[tuple[str, Any]]:
    """The modules the user protects with ``--keep``; an unknown name gets close suggestions."""
    by_name = {name: sub for name, sub in module.named_modules() if name}
    kept = []
    for name in names:
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=3, cutoff=0.5)
            hint = (f"Did you mean {', '.join(repr(c) for c in close)}?" if close
                    else f"Layer names look like {', '.join(repr(n) for n in list(by_name)[:4])}.")
            raise UsageError(f"--keep '{name}': the model has no layer of that name", hint=hint)
        kept.append((name, by_name[name]))
    return kept


def final_layers(torch: Any, module: Any, example: Any) -> list[tuple[str, Any]]:
    """The layers whose outputs are the model's outputs (the classifier), found by running it once.

    Pruning their output channels would change the output's shape (the number of classes), so they
    are always protected, as torch-pruning's examples do with ``ignored_layers``. The last convolution
    or linear layer to run counts too: a classifier is often followed by a reshape or pooling.
    """
    order: list[tuple[str, Any, Any]] = []
    handles = [sub.register_forward_hook(lambda m, _i, out, name=name: order.append((name, m, out)))
               for name, sub in module.named_modules() if isinstance(sub, prunable_types(torch))]
    try:
        with torch.no_grad():
            outputs = module(example)
    finally:
        for handle in handles:
            handle.remove()
    if not order:
        raise UsageError("the model has no convolution or linear layer to prune")
    from toolchain.frontends.torch_frontend import flatten_outputs

    returned = {id(t) for t in flatten_outputs(torch, outputs)}
    found = {name: layer for name, layer, out in order if id(out) in returned}
    found.setdefault(order[-1][0], order[-1][1])
    return list(found.items())


def structured_pruner(torch: Any, module: Any, example: Any, *, ratio: float, steps: int, importance: str,
                      protected: list[Any], round_to: int | None = None) -> Pruner:
    import torch_pruning as tp

    scorer = _importance(torch, tp, module, importance)
    try:
        pruner = tp.pruner.BasePruner(module, example, importance=scorer, pruning_ratio=ratio, iterative_steps=steps,
                                      ignored_layers=protected, round_to=round_to)
    except Exception as exc:  # the dependency graph fails with many exception types on unusual models
        raise UsageError(f"torch-pruning cannot analyse the model's layer dependencies: {first_line(exc)}",
                         hint="Protect the layers it trips on with --keep, or use --unstructured.") from exc
    return _TorchPruning(pruner)


def unstructured_pruner(torch: Any, module: Any, *, ratio: float, steps: int, protected: list[Any]) -> Pruner:
    skip = {id(m) for layer in protected for m in layer.modules()}
    targets = [sub for sub in module.modules() if isinstance(sub, prunable_types(torch)) and id(sub) not in skip]
    if not targets:
        raise UsageError("every convolution and linear layer is protected; nothing is left to prune")
    return _MagnitudeMasks(targets, ratio, steps)


def taylor_gradients(torch: Any, student: Any, teacher_logits: np.ndarray, images: np.ndarray,
                     batches: int, seed: int) -> None:
    """Fill ``.grad`` for Taylor importance from the original's predictions, no labels needed.

    The loss is cross-entropy against the original model's arg-max classes (pseudo-labels). A soft
    KL loss against its logits would be useless at the first step: the student *is* the teacher
    there, so that loss is at its minimum and every gradient is zero.
    """
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(images))[:batches * _TAYLOR_BATCH]
    pseudo = torch.from_numpy(np.asarray(teacher_logits).reshape(len(images), -1).argmax(axis=1))
    was_training = student.training
    student.eval()  # keep BatchNorm statistics and dropout as at inference
    student.zero_grad()
    try:
        for start in range(0, len(chosen), _TAYLOR_BATCH):
            rows = chosen[start:start + _TAYLOR_BATCH]
            logits = student(torch.from_numpy(np.ascontiguousarray(images[rows])))
            loss = torch.nn.functional.cross_entropy(logits.reshape(len(rows), -1), pseudo[rows])
            loss.backward()
    finally:
        student.train(was_training)


def has_batchnorm(torch: Any, module: Any) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _importance(torch: Any, tp: Any, module: Any, name: str) -> Any:
    if name == "bn":
        if not has_batchnorm(torch, module):
            raise UsageError("--importance bn scores channels by BatchNorm scale, and the model has no BatchNorm",
                             hint="Use --importance l1 or taylor.")
        return tp.importance.BNScaleImportance()
    if name == "taylor":
        return tp.importance.TaylorImportance()
    return tp.importance.MagnitudeImportance(p=1)


class _TorchPruning:
    """torch-pruning's pruner: each ``step`` removes channels up to that step's share of the ratio."""

    def __init__(self, pruner: Any) -> None:
        self._pruner = pruner

    def step(self) -> None:
        self._pruner.step()

    def finalize(self) -> None:
        """Nothing to do: removed channels are gone from the tensors already."""


class _MagnitudeMasks:
    """L1 unstructured masks reaching ``ratio`` of each layer's weights in ``steps`` equal increments.

    The masks stay attached between steps so that recovery training keeps pruned weights at zero;
    ``finalize`` makes them permanent (plain ``weight`` tensors again) for export and saving.
    """

    def __init__(self, targets: list[Any], ratio: float, steps: int) -> None:
        self._targets, self._ratio, self._steps, self._done = targets, ratio, steps, 0

    def step(self) -> None:
        from torch.nn.utils import prune

        before = self._ratio * self._done / self._steps
        self._done += 1
        after = self._ratio * self._done / self._steps
        # torch's pruning container applies a new amount to the weights still unpruned.
        amount = (after - before) / (1.0 - before)
        for layer in self._targets:
            prune.l1_unstructured(layer, "weight", amount=amount)

    def finalize(self) -> None:
        finalize_masks(self._targets)


def plain_copy(module: Any) -> Any:
    """A deep copy of ``module`` with any masks made permanent, for export and counting; ``module`` keeps its masks.

    A masked layer's ``weight`` is the product ``weight_orig * weight_mask`` from its last forward, a non-leaf
    tensor that ``deepcopy`` refuses; it is recomputed by the mask's hook before every forward, so a detached
    value is an equivalent stand-in.
    """
    for layer in module.modules():
        if hasattr(layer, "weight_mask"):
            layer.weight = layer.weight.detach()
    duplicate = copy.deepcopy(module)
    finalize_masks(duplicate.modules())
    return duplicate


def finalize_masks(modules: Any) -> None:
    """Replace ``weight_orig * weight_mask`` by a plain ``weight`` wherever a mask is attached."""
    from torch.nn.utils import prune

    for layer in modules:
        if prune.is_pruned(layer) and hasattr(layer, "weight_mask"):
            prune.remove(layer, "weight")
