"""The snnTorch and Norse side of ``benchmarks/speed_snn.py``: surrogate-gradient BPTT on the cue-accumulation LIF
network, timed on request.

Runs in the library's own venv (torch, numpy and ``snntorch`` or ``norse``; see benchmarks/README.md), never in
bioprop's, and imports nothing from bioprop. ``speed_snn.py`` starts it as a subprocess and talks to it in JSON
lines: after the start-up line (versions) it answers each request on stdin with one line on stdout; everything
else goes to stderr.

Requests:
    {"cmd": "time", "inner": 1}                         -> {"s": s per update, "cpu": CPU s / wall s, "loss", "rate_hz"}
    {"cmd": "sanity", "dtype": "float64", "grads": p, "steps": S}
                                                        -> {"loss", "rate_hz"} of a fresh network on the last S steps
                                                           of the batch (0: all); its gradient, in bioprop's
                                                           parameters, written to the .npz file p
    {"cmd": "quit"}

An update is what a user of the library writes for one batch: ``zero_grad``, the forward pass over the whole
sequence, the cross-entropy over the steps with a target, ``loss.backward()`` (no optimizer step). The batch and the
initial weights come from ``--data DIR`` (written by ``speed_snn.py``): ``x.npy`` (T, B, C) the input spikes,
``y.npy`` (T, B) the labels (−1: no target), ``weights.npz`` bioprop's W_in (n, C), W_rec (n, n, zero diagonal),
W_out (K, n), b_out (K,) for its membrane equation (Bellec et al. 2020, bioprop.nets.recurrent)::

    v^t = α v^{t−1} + (1 − α)(W_in x^t + W_rec z^{t−1}) − v_th z^{t−1},   z^t = H(v^t − v_th)
    y^t = κ y^{t−1} + W_out z^t + b_out,   ψ = (γ / v_th) max(0, 1 − |v^t − v_th| / v_th)

Each library's network is set up to run that equation from the same weights, as far as its neurons allow:

- **snnTorch** (``snntorch``): ``nn.Linear(C, n, bias=False)`` → ``snn.RLeaky(beta=α, threshold=v_th, all_to_all=True,
  linear_features=n, reset_mechanism="subtract")`` (U^t = β U^{t−1} + I^t + W_rec S^{t−1} + b_rec − v_th R^t, the
  reset R^t = H(U^{t−1} − v_th) delayed by one step, as ours) → ``nn.Linear(n, K)`` → ``snn.Leaky(beta=κ,
  reset_mechanism="none")`` whose membrane is the readout y; the surrogate is ψ exactly, through
  ``surrogate.custom_surrogate``. Its currents have no (1 − α) factor, so its W_in and W_rec are bioprop's times
  (1 − α). Differences: RLeaky's reset is detached (no gradient through it; ours has one); its recurrent layer is an
  ``nn.Linear`` with a bias (set to 0, but trained) and a diagonal (set to 0: it has no option against
  self-connections, so the diagonal would train); the input layer runs inside the time loop, as in its tutorials;
  ``custom_surrogate`` returns float32 spikes whatever the dtype (cast to the input's dtype here, a no-op in
  float32), so a float64 run still differentiates through float32 spikes.
- **Norse** (``norse``, its recurrent LIF layer): ``LIFRecurrent(C, n, autapses=False, dt=1)`` (no
  self-connections, their gradient masked) → ``nn.Linear(n, K)`` → ``LI`` (leaky integrator) whose voltage is y.
  Its LIF neuron is current-based; with τ_syn⁻¹·dt = 1 the current decays to 0 in one step and the membrane follows
  v^t = v^{t−1} + (1 − α)(−v^{t−1} + W_in x^t + W_rec z^{t−1}), ours without the reset term (τ_mem⁻¹·dt = 1 − α).
  Its ``triangle`` surrogate γ max(0, 1 − |v − v_th|) has a width of 1, so voltages are in units of v_th (threshold
  1, W_in and W_rec divided by v_th): then it is ψ exactly. The LI readout y^t = y^{t−1} + (1 − κ)(−y^{t−1} + W z^t
  + b) takes W_out and b_out divided by (1 − κ). Difference: this layer resets *to* v_reset = 0 in the step of the
  spike (it has no reset by subtraction), detached; on this batch and these weights that network fires far less
  than ours (the subtraction keeps a strongly driven neuron's excess voltage). Its initial membrane and readout
  voltages require grad (Norse's choice).
- **Norse, box neurons** (``norse-box``, our equation exactly): Norse has no recurrent layer of its current-free
  ``LIFBox`` neurons, so the loop is written here: per step ``LIFBoxCell(F.linear(x^t, W_in) + F.linear(z^{t−1},
  W_rec))`` with W_rec's diagonal masked, in units of v_th as above, the ``triangle`` surrogate, and as reset method
  (a parameter of ``LIFBoxParameters``) v ← v − z v_th / α: Norse resets in the step of the spike and decays the
  result, so α (v − z v_th / α) = α v − v_th z is our reset. The gradient flows through that reset, as in ours; the
  readout is ``nn.Linear`` → ``LI`` as above.

Gradients written by ``sanity`` are converted back to bioprop's parameters (the chain rule through the scalings
above) under bioprop's names: ``input.weight``, ``recurrent.weight``, ``readout.weight``, ``readout.bias``.

    python benchmarks/snn_harness.py --system snntorch|norse|norse-box --data DIR [--threads 1] [--warmup 1]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def log(*parts: object) -> None:
    print("[snn]", *parts, file=sys.stderr, flush=True)


class Constants:
    """α, κ, v_th, γ of bioprop's LIFParameters, from the command line (τ and dt in ms)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.alpha = math.exp(-args.dt / args.tau_m)
        self.kappa = math.exp(-args.dt / args.tau_out)
        self.v_th, self.gamma = args.v_th, args.gamma


def snntorch_net(w: dict[str, np.ndarray], c: Constants, dtype: torch.dtype) -> tuple[nn.Module, dict[str, tuple]]:
    """snnTorch's network (module docstring) and, per bioprop name, (its parameter, d(its)/d(ours))."""
    import snntorch as snn
    from snntorch import surrogate

    gamma, v_th = c.gamma, c.v_th

    def psi(mem_shift: torch.Tensor, grad: torch.Tensor, spikes: torch.Tensor) -> torch.Tensor:
        """ψ = (γ/v_th) max(0, 1 − |U − v_th|/v_th); snnTorch passes U − v_th."""
        return grad * (gamma / v_th) * torch.clamp(1.0 - mem_shift.abs() / v_th, min=0.0)

    spike_grad = surrogate.custom_surrogate(psi)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            n, n_in = w["recurrent"].shape[0], w["input"].shape[1]
            self.fc_in = nn.Linear(n_in, n, bias=False)
            # β as a tensor of the dtype: a float would be stored in float32 first, even after .to(float64)
            alpha, kappa = torch.as_tensor(c.alpha, dtype=dtype), torch.as_tensor(c.kappa, dtype=dtype)
            self.lif = snn.RLeaky(beta=alpha, threshold=v_th, spike_grad=spike_grad, all_to_all=True,
                                  linear_features=n, reset_mechanism="subtract")  # fmt: skip
            self.fc_out = nn.Linear(n, w["readout_w"].shape[0])
            self.readout = snn.Leaky(beta=kappa, spike_grad=spike_grad, reset_mechanism="none")

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """x (T, B, C) → readout (T, B, K), spikes (T, B, n)."""
            spk, mem = self.lif.reset_mem()
            out = self.readout.reset_mem()
            spikes, ys = [], []
            for x_t in x:
                spk, mem = self.lif(self.fc_in(x_t), spk, mem)
                spk = spk.to(x_t.dtype)  # custom_surrogate's spikes are float32 (a no-op in float32)
                _, out = self.readout(self.fc_out(spk), out)
                spikes.append(spk)
                ys.append(out)
            return torch.stack(ys), torch.stack(spikes)

    net = Net().to(dtype)
    scale = 1.0 - c.alpha  # their current = (1 − α) × ours
    with torch.no_grad():
        net.fc_in.weight.copy_(torch.as_tensor(w["input"]) * scale)
        net.lif.recurrent.weight.copy_(torch.as_tensor(w["recurrent"]) * scale)
        net.lif.recurrent.bias.zero_()
        net.fc_out.weight.copy_(torch.as_tensor(w["readout_w"]))
        net.fc_out.bias.copy_(torch.as_tensor(w["readout_b"]))
    params = {
        "input.weight": (net.fc_in.weight, scale),
        "recurrent.weight": (net.lif.recurrent.weight, scale),
        "readout.weight": (net.fc_out.weight, 1.0),
        "readout.bias": (net.fc_out.bias, 1.0),
    }
    return net, params


def norse_net(w: dict[str, np.ndarray], c: Constants, dtype: torch.dtype) -> tuple[nn.Module, dict[str, tuple]]:
    """Norse's network (module docstring) and, per bioprop name, (its parameter, d(its)/d(ours))."""
    import norse.torch as norse

    def t(value: float) -> torch.Tensor:
        return torch.as_tensor(value, dtype=dtype)

    lif_p = norse.LIFParameters(tau_syn_inv=t(1.0), tau_mem_inv=t(1.0 - c.alpha), v_leak=t(0.0), v_th=t(1.0),
                                v_reset=t(0.0), method="triangle", alpha=t(c.gamma))  # fmt: skip
    li_p = norse.LIParameters(tau_syn_inv=t(1.0), tau_mem_inv=t(1.0 - c.kappa), v_leak=t(0.0))
    v_unit, k_scale = 1.0 / c.v_th, 1.0 / (1.0 - c.kappa)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            n, n_in = w["recurrent"].shape[0], w["input"].shape[1]
            self.lif = norse.LIFRecurrent(
                n_in, n, p=lif_p, dt=1.0, autapses=False,
                input_weights=nn.Parameter(torch.as_tensor(w["input"] * v_unit, dtype=dtype)),
                recurrent_weights=nn.Parameter(torch.as_tensor(w["recurrent"] * v_unit, dtype=dtype)),
            )  # fmt: skip
            self.fc_out = nn.Linear(n, w["readout_w"].shape[0]).to(dtype)
            self.readout = norse.LI(p=li_p, dt=1.0)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """x (T, B, C) → readout (T, B, K), spikes (T, B, n)."""
            z, _ = self.lif(x)
            y, _ = self.readout(self.fc_out(z))
            return y, z

    net = Net()
    with torch.no_grad():
        net.fc_out.weight.copy_(torch.as_tensor(w["readout_w"]) * k_scale)
        net.fc_out.bias.copy_(torch.as_tensor(w["readout_b"]) * k_scale)
    params = {
        "input.weight": (net.lif.input_weights, v_unit),
        "recurrent.weight": (net.lif.recurrent_weights, v_unit),
        "readout.weight": (net.fc_out.weight, k_scale),
        "readout.bias": (net.fc_out.bias, k_scale),
    }
    return net, params


def norse_box_net(w: dict[str, np.ndarray], c: Constants, dtype: torch.dtype) -> tuple[nn.Module, dict[str, tuple]]:
    """Norse's box neurons in a recurrent loop written here, our equation exactly (module docstring); per bioprop
    name, (its parameter, d(its)/d(ours))."""
    import norse.torch as norse

    def t(value: float) -> torch.Tensor:
        return torch.as_tensor(value, dtype=dtype)

    alpha = c.alpha

    def reset_then_decay(z: torch.Tensor, v: torch.Tensor, v_reset: torch.Tensor, v_th: torch.Tensor) -> torch.Tensor:
        """v − z v_th / α: decayed by α at the next step, it subtracts v_th z (our reset by subtraction)."""
        return v - z * (v_th / alpha)

    box_p = norse.LIFBoxParameters(tau_mem_inv=t(1.0 - alpha), v_leak=t(0.0), v_th=t(1.0), v_reset=t(0.0),
                                   method="triangle", alpha=t(c.gamma), reset_method=reset_then_decay)  # fmt: skip
    li_p = norse.LIParameters(tau_syn_inv=t(1.0), tau_mem_inv=t(1.0 - c.kappa), v_leak=t(0.0))
    v_unit, k_scale = 1.0 / c.v_th, 1.0 / (1.0 - c.kappa)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            n = w["recurrent"].shape[0]
            self.w_in = nn.Parameter(torch.as_tensor(w["input"] * v_unit, dtype=dtype))
            self.w_rec = nn.Parameter(torch.as_tensor(w["recurrent"] * v_unit, dtype=dtype))
            self.register_buffer("no_autapses", 1.0 - torch.eye(n, dtype=dtype))
            self.lif = norse.LIFBoxCell(p=box_p, dt=1.0)
            self.fc_out = nn.Linear(n, w["readout_w"].shape[0]).to(dtype)
            self.readout = norse.LI(p=li_p, dt=1.0)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """x (T, B, C) → readout (T, B, K), spikes (T, B, n)."""
            w_rec = self.w_rec * self.no_autapses
            z, state, spikes = x.new_zeros(x.shape[1], w_rec.shape[0]), None, []
            for x_t in x:
                z, state = self.lif(F.linear(x_t, self.w_in) + F.linear(z, w_rec), state)
                spikes.append(z)
            z = torch.stack(spikes)
            y, _ = self.readout(self.fc_out(z))
            return y, z

    net = Net()
    with torch.no_grad():
        net.fc_out.weight.copy_(torch.as_tensor(w["readout_w"]) * k_scale)
        net.fc_out.bias.copy_(torch.as_tensor(w["readout_b"]) * k_scale)
    params = {
        "input.weight": (net.w_in, v_unit),
        "recurrent.weight": (net.w_rec, v_unit),
        "readout.weight": (net.fc_out.weight, k_scale),
        "readout.bias": (net.fc_out.bias, k_scale),
    }
    return net, params


BUILDERS = {"snntorch": snntorch_net, "norse": norse_net, "norse-box": norse_box_net}


def sequence_ce(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the readout y_hat (T, B, K) at the steps with a label (y (T, B), −1: none), averaged over each
    example's labelled steps, then over the batch (bioprop's sequence loss)."""
    counted = (y >= 0).to(y_hat.dtype)  # (T, B)
    per_step = F.cross_entropy(y_hat.flatten(0, 1), y.clamp_min(0).flatten(), reduction="none").view_as(counted)
    return ((per_step * counted).sum(0) / counted.sum(0).clamp_min(1)).mean()


class Harness:
    """One library's network on the batch of ``--data``, in float32 for timing (and any dtype for ``sanity``)."""

    def __init__(self, args: argparse.Namespace) -> None:
        data = Path(args.data)
        self.x64 = torch.from_numpy(np.load(data / "x.npy")).double()  # (T, B, C)
        self.y = torch.from_numpy(np.load(data / "y.npy")).long()  # (T, B)
        with np.load(data / "weights.npz") as npz:
            self.weights = {k: npz[k].astype(np.float64) for k in npz.files}
        self.consts, self.system = Constants(args), args.system
        self.net, self.params = BUILDERS[args.system](self.weights, self.consts, torch.float32)
        self.x = self.x64.float()

    def update(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One update: zero_grad, forward, loss, backward. Returns the loss and the spikes (T, B, n), detached."""
        net.zero_grad(set_to_none=True)
        y_hat, z = net(x)
        loss = sequence_ce(y_hat, y)
        loss.backward()
        return loss.detach(), z.detach()

    def time(self, inner: int) -> dict:
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(inner):
            loss, z = self.update(self.net, self.x, self.y)
        wall = time.perf_counter() - t0
        cpu = (time.process_time() - c0) / wall
        return {"s": wall / inner, "cpu": cpu, "loss": float(loss), "rate_hz": float(z.mean()) * 1000.0}

    def sanity(self, dtype: str, grads: str, steps: int = 0) -> dict:
        """A fresh network in ``dtype``, run from rest on the last ``steps`` steps of the batch (0: all): its loss and
        rate; its gradient, in bioprop's parameters, to the .npz file ``grads``."""
        torch_dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
        net, params = BUILDERS[self.system](self.weights, self.consts, torch_dtype)
        start = len(self.y) - steps if steps else 0
        loss, z = self.update(net, self.x64[start:].to(torch_dtype), self.y[start:])
        # d L/d ours = d L/d theirs · d theirs/d ours
        out = {name: (p.grad.double() * factor).numpy() for name, (p, factor) in params.items()}
        np.savez(grads, **out)
        return {"loss": float(loss), "rate_hz": float(z.mean()) * 1000.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", choices=tuple(BUILDERS), required=True)
    parser.add_argument("--data", required=True, help="folder with x.npy, y.npy and weights.npz")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="untimed updates before the first request (default 1)")
    parser.add_argument("--tau-m", type=float, default=20.0, help="membrane time constant, ms")
    parser.add_argument("--tau-out", type=float, default=20.0, help="readout time constant, ms")
    parser.add_argument("--dt", type=float, default=1.0, help="step, ms")
    parser.add_argument("--v-th", type=float, default=0.6, help="threshold")
    parser.add_argument("--gamma", type=float, default=0.3, help="surrogate dampening γ")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    harness = Harness(args)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        harness.update(harness.net, harness.x, harness.y)
    library = args.system.split("-")[0]
    versions = {library: version(library), f"torch ({library} venv)": torch.__version__}
    versions[f"numpy ({library} venv)"] = np.__version__
    hello = {"ready": True, "versions": versions, "threads": torch.get_num_threads()}
    print(json.dumps(hello | {"warmup_s": time.perf_counter() - t0}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "quit":
            break
        if request["cmd"] == "time":
            reply = harness.time(int(request.get("inner", 1)))
        elif request["cmd"] == "sanity":
            reply = harness.sanity(request.get("dtype", "float64"), request["grads"], int(request.get("steps", 0)))
        else:
            reply = {"error": f"unknown request {request['cmd']!r}"}
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
