"""Export trained networks for deployment without the Python model code.

ONNX is not a dependency of the project. Two paths:

* :func:`export_torchscript` (TorchScript trace): loads in any torch >= 1.x, including the torch
  that ships with older Slicer builds. The traced EHANet / S²aNet also run at other batch and
  spatial sizes (their Python branches do not depend on the size when H, W are multiples of 64
  and 8); E2MISeg accepts only its patch size anyway. torch 2.13 marks TorchScript deprecated.
* :func:`export_program` (``torch.export``): the forward-looking format, traced for the shape of
  ``example_input`` only.

Both are checked against the eager output before they are returned.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


def export_torchscript(model: nn.Module, example_input: torch.Tensor, atol: float = 1e-5,
                       rtol: float = 1e-4) -> torch.jit.ScriptModule:
    """Trace ``model`` in eval mode and verify the traced output equals the eager output.

    The model is left in eval mode. Raises ``RuntimeError`` if the outputs differ by more than
    ``atol + rtol * |eager|``.
    """
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # Shape checks on Python ints become trace-time constants; that is intended here.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, example_input, check_trace=False)
        expected = model(example_input)
        got = traced(example_input)
    if not torch.allclose(got, expected, atol=atol, rtol=rtol):
        err = (got - expected).abs().max().item()
        raise RuntimeError(f"traced model differs from eager model (max abs error {err:.3g})")
    return traced


def export_program(model: nn.Module, example_input: torch.Tensor, atol: float = 1e-5,
                   rtol: float = 1e-4) -> torch.export.ExportedProgram:
    """``torch.export`` the eval-mode ``model`` for ``example_input``'s shape and verify it.

    Save with ``torch.export.save(program, "model.pt2")``; run with ``program.module()(x)``.
    """
    model.eval()
    with torch.no_grad():
        program = torch.export.export(model, (example_input,))
        expected = model(example_input)
        got = program.module()(example_input)
    if not torch.allclose(got, expected, atol=atol, rtol=rtol):
        err = (got - expected).abs().max().item()
        raise RuntimeError(f"exported program differs from eager model (max abs error {err:.3g})")
    return program


def save_torchscript(module: torch.jit.ScriptModule, path: str | Path) -> Path:
    """Write a TorchScript module to ``path`` (conventionally ``*.pt``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(module, str(path))
    return path


def load_torchscript(path: str | Path, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load a TorchScript module written by :func:`save_torchscript`, in eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location=device)
    module.eval()
    return module
