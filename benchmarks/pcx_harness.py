"""The PCX side of ``benchmarks/speed_pc.py``: PCX 0.6.3 training steps, timed on request.

Runs in PCX's own venv (JAX, Equinox, optax, pcx; see benchmarks/README.md), never in bioprop's, and imports nothing
from bioprop. ``speed_pc.py`` starts it as a subprocess and talks to it in JSON lines: after the start-up line
(versions, compile times) it answers each request on stdin with one line on stdout; everything else goes to stderr.

Requests:
    {"cmd": "time", "system": "pc-se", "inner": 3}   -> {"ms": ms per step, "cpu": CPU seconds / wall seconds}
    {"cmd": "sanity", "steps": 200, "data": "d.npz"} -> losses before and after training fresh networks
    {"cmd": "quit"}

Systems: ``pc-se`` and ``pc-ce`` (predictive coding with a squared-error or cross-entropy output energy), ``bp``
(plain backprop of the cross-entropy, PCX's tutorial 0b), and incremental PC, ``ipc-se`` / ``ipc-ce`` and
``ipc-se-adamw`` / ``ipc-ce-adamw``. The networks and training steps follow PCX's own examples (tutorial 0, tutorial
0b, the discriminative MLP experiments) written for the 0.6 API: value nodes (``pxc.Vode``) after each hidden
layer's activation, the output node frozen to the one-hot target, energies summed over the batch
(``jax.lax.psum``), T plain gradient steps on the value nodes (``optax.sgd(gamma)``), then one weight step (AdamW) on
the gradient scaled by 1/B, all inside one ``pxf.jit``-compiled ``train_on_batch``. iPC follows PCX's iPC examples
(``discriminative_experiments/.../iPC_SE.py``): at each of the T steps one ``value_and_grad`` over the free value
nodes and the weights together, a value step and a weight step. PCX's examples step the weights with AdamW there
(``ipc-*-adamw``); ``ipc-*`` steps them with ``optax.sgd(weight_lr)``, the arithmetic of bioprop's ``ipc`` (its T
inner steps are plain gradient steps of size η; its one AdamW step per batch is outside the inference).

    python benchmarks/pcx_harness.py --hidden 128 128 --batch 64 --steps 20 --gamma 0.1 --systems pc-se bp
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from importlib.metadata import version

N_IN, N_OUT = 784, 10


def log(*parts: object) -> None:
    print("[pcx]", *parts, file=sys.stderr, flush=True)


def build(args: argparse.Namespace):  # noqa: C901  (one closure over the imports and the settings)
    import jax
    import jax.numpy as jnp
    import optax
    import pcx as px
    import pcx.functional as pxf
    import pcx.nn as pxnn
    import pcx.predictive_coding as pxc
    import pcx.utils as pxu

    act = jax.nn.gelu if args.gelu == "tanh" else functools.partial(jax.nn.gelu, approximate=False)
    sizes = [N_IN, *args.hidden, N_OUT]

    class PCNet(pxc.EnergyModule):
        """MLP with a value node after each layer: x = vode(act(linear(x))), the last one linear and frozen."""

        def __init__(self, output: str) -> None:
            super().__init__()
            self.act_fn = px.static(act)
            self.layers = [pxnn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
            out_energy = pxc.se_energy if output == "se" else pxc.ce_energy
            self.vodes = [pxc.Vode() for _ in sizes[1:-1]] + [pxc.Vode(out_energy)]
            self.vodes[-1].h.frozen = True

        def __call__(self, x, y):
            for vode, layer in zip(self.vodes[:-1], self.layers[:-1], strict=True):
                x = vode(self.act_fn(layer(x)))
            x = self.vodes[-1](self.layers[-1](x))
            if y is not None:
                self.vodes[-1].set("h", y)
            return self.vodes[-1].get("u")

    class BPNet(px.Module):
        """The same MLP without value nodes (PCX tutorial 0b)."""

        def __init__(self) -> None:
            super().__init__()
            self.act_fn = px.static(act)
            self.layers = [pxnn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = self.act_fn(layer(x))
            return self.layers[-1](x)

    def free_values():
        """The value nodes inference moves: all but the frozen output (a fresh mask: ``.to`` mutates it)."""
        return pxu.M_hasnot(pxc.VodeParam, frozen=True)

    @pxf.vmap(pxu.M(pxc.VodeParam | pxc.VodeParam.Cache).to((None, 0)), in_axes=(0, 0), out_axes=0)
    def forward(x, y, *, model):
        return model(x, y)

    @pxf.vmap(
        pxu.M(pxc.VodeParam | pxc.VodeParam.Cache).to((None, 0)), in_axes=(0,), out_axes=(None, 0), axis_name="batch"
    )
    def energy(x, *, model):
        y_ = model(x, None)
        return jax.lax.psum(model.energy(), "batch"), y_

    @pxf.jit(static_argnums=0)
    def pc_train_on_batch(T, x, y, *, model, optim_w, optim_h):
        model.train()
        with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
            forward(x, y, model=model)
        optim_h.init(free_values()(model))
        for _ in range(T):
            with pxu.step(model, clear_params=pxc.VodeParam.Cache):
                (e, y_), g = pxf.value_and_grad(free_values().to([False, True]), has_aux=True)(energy)(x, model=model)
            optim_h.step(model, g["model"])
        optim_h.clear()
        with pxu.step(model, clear_params=pxc.VodeParam.Cache):
            (e, y_), g = pxf.value_and_grad(pxu.M(pxnn.LayerParam).to([False, True]), has_aux=True)(energy)(
                x, model=model
            )
        optim_w.step(model, g["model"], scale_by=1.0 / x.shape[0])
        return e

    @pxf.jit(static_argnums=0)
    def ipc_train_on_batch(T, x, y, *, model, optim_w, optim_h):
        model.train()
        with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
            forward(x, y, model=model)
        optim_h.init(free_values()(model))
        both = free_values() | pxu.M(pxnn.LayerParam)  # the free value nodes and the weights, in one gradient
        for _ in range(T):
            with pxu.step(model, clear_params=pxc.VodeParam.Cache):
                (e, y_), g = pxf.value_and_grad(both.to([False, True]), has_aux=True)(energy)(x, model=model)
            optim_h.step(model, g["model"])
            optim_w.step(model, g["model"], scale_by=1.0 / x.shape[0])
        optim_h.clear()
        return e

    @pxf.jit()
    def pc_predict(x, *, model):
        model.eval()
        with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
            return forward(x, None, model=model)

    @pxf.vmap({"model": None}, in_axes=0, out_axes=0)
    def bp_forward(x, *, model):
        return model(x)

    @pxf.vmap({"model": None}, in_axes=(0, 0), out_axes=(None, 0), axis_name="batch")
    def bp_loss(x, y, *, model):
        y_ = model(x)
        return jax.lax.pmean(-(y * jax.nn.log_softmax(y_)).sum(), "batch"), y_

    @pxf.jit()
    def bp_train_on_batch(x, y, *, model, optim_w):
        model.train()
        with pxu.step(model):
            (e, y_), g = pxf.value_and_grad(pxu.M(pxnn.LayerParam).to([False, True]), has_aux=True)(bp_loss)(
                x, y, model=model
            )
        optim_w.step(model, g["model"])
        return e

    @pxf.jit()
    def bp_predict(x, *, model):
        with pxu.step(model):
            return bp_forward(x, model=model)

    def adamw():
        return optax.adamw(args.lr, weight_decay=args.weight_decay)

    def weights(model):
        """The model's arrays, to block on."""
        leaves = jax.tree_util.tree_leaves(model, is_leaf=lambda p: isinstance(p, px.BaseParam))
        return [p.get() for p in leaves if isinstance(p, px.BaseParam)]

    class System:
        """One network, its optimizers and a ``step(x, y_onehot)`` as its training loop would call it."""

        def __init__(self, name: str, seed: int) -> None:
            px.RKG.seed(seed)
            self.name = name
            if name == "bp":
                self.model = BPNet()
                self.optim_w = pxu.Optim(adamw, pxu.M(pxnn.LayerParam)(self.model))
            else:
                self.model = PCNet(name.split("-")[1])
                # PCX creates the optimizers after one forward pass, once every parameter exists.
                with pxu.step(self.model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
                    forward(jnp.zeros((args.batch, N_IN)), None, model=self.model)
                self.optim_h = pxu.Optim(lambda: optax.sgd(args.gamma))
                inner_sgd = name.startswith("ipc") and not name.endswith("adamw")
                weight_optim = (lambda: optax.sgd(args.weight_lr)) if inner_sgd else adamw
                self.optim_w = pxu.Optim(weight_optim, pxu.M(pxnn.LayerParam)(self.model))

        def step(self, x, y):
            if self.name == "bp":
                return bp_train_on_batch(x, y, model=self.model, optim_w=self.optim_w)
            train = ipc_train_on_batch if self.name.startswith("ipc") else pc_train_on_batch
            return train(args.steps, x, y, model=self.model, optim_w=self.optim_w, optim_h=self.optim_h)

        def predict(self, x):
            if self.name == "bp":
                return bp_predict(x, model=self.model)
            return pc_predict(x, model=self.model)

        def block(self) -> None:
            jax.block_until_ready(weights(self.model))

    return jax, jnp, System


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="inference steps T")
    parser.add_argument("--gamma", type=float, default=0.1, help="value-node step size")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--weight-lr", type=float, default=0.01, help="iPC's inner weight step (ipc-*: SGD)")
    parser.add_argument("--gelu", choices=("exact", "tanh"), default="exact", help="erf GELU or jax's tanh default")
    parser.add_argument("--systems", nargs="+", default=["pc-se", "pc-ce", "bp"])
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps after compilation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    proto, sys.stdout = sys.stdout, sys.stderr  # stdout carries the protocol only

    def reply(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    jax, jnp, System = build(args)
    import numpy as np

    gen = np.random.default_rng(1234)
    x = jnp.asarray(gen.random((args.batch, N_IN), dtype=np.float32))
    y = jax.nn.one_hot(jnp.asarray(gen.integers(0, N_OUT, args.batch)), N_OUT)

    systems, compile_s = {}, {}
    for name in args.systems:
        system = System(name, args.seed)
        t0 = time.perf_counter()
        system.step(x, y)
        system.block()
        compile_s[name] = time.perf_counter() - t0
        for _ in range(args.warmup):
            system.step(x, y)
        system.block()
        systems[name] = system
        log(f"{name}: compiled in {compile_s[name]:.1f} s")

    versions = {pkg: version(pkg) for pkg in ("pcx", "jax", "jaxlib", "equinox", "optax", "numpy")}
    reply({"ready": True, "versions": versions, "compile_s": compile_s, "devices": [str(d) for d in jax.devices()]})

    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req["cmd"] == "quit":
            break
        if req["cmd"] == "time":
            system = systems[req["system"]]
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(req["inner"]):
                system.step(x, y)
            system.block()
            wall = time.perf_counter() - t0
            reply({"ms": wall * 1e3 / req["inner"], "cpu": (time.process_time() - c0) / wall})
        elif req["cmd"] == "sanity":
            reply(sanity(jax, jnp, np, System, args, req))
        else:
            reply({"error": f"unknown request {req['cmd']!r}"})
    return 0


def sanity(jax, jnp, np, System, args: argparse.Namespace, req: dict) -> dict:
    """Train fresh networks for ``steps`` steps on the batches in ``data`` (x: (N, 784) float32, y: (N,) int)
    and report the batch-mean squared error ½‖z − onehot‖², cross-entropy and accuracy of the feedforward
    prediction z over all N samples, before and after."""
    data = np.load(req["data"])
    xs = jnp.asarray(data["x"].reshape(-1, args.batch, N_IN))
    labels = data["y"].reshape(-1, args.batch)
    ys = jax.nn.one_hot(jnp.asarray(labels), N_OUT)

    def evaluate(system) -> dict:
        z = np.concatenate([np.asarray(system.predict(xb)) for xb in xs]).astype(np.float64)
        flat = labels.reshape(-1)
        onehot = np.eye(N_OUT)[flat]
        shifted = z - z.max(1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
        return {
            "se": float(0.5 * ((z - onehot) ** 2).sum(1).mean()),
            "ce": float(-log_p[np.arange(len(flat)), flat].mean()),
            "acc": float((z.argmax(1) == flat).mean()),
        }

    out = {}
    for name in req.get("systems", args.systems):
        system = System(name, args.seed + 1)
        before = evaluate(system)
        for i in range(req["steps"]):
            system.step(xs[i % len(xs)], ys[i % len(ys)])
        system.block()
        out[name] = {"before": before, "after": evaluate(system)}
    return {"sanity": out}


if __name__ == "__main__":
    sys.exit(main())
