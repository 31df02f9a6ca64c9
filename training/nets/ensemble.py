"""The ensemble teacher (offline only): K members, averaged probabilities per head.

:class:`Ensemble` is an ``nn.Module`` with the networks' interface, so it can stand wherever a
teacher does (the Distiller, :class:`~training.experiments.fit.CachedTeacher`, CKA):

* **outputs**: ``predict_proba`` gives the members' averaged probabilities per head;
  ``forward_with_features`` returns logits (B, H, 2) = log of the averaged class
  probabilities, so softmax of them is exactly the average, and KD at temperature T
  softens the averaged distribution (softmax(log p̄ / T) ∝ p̄^(1/T));
* **feature targets** come from ONE member, ``feature_member`` (default 0), unprojected: its
  list of per-layer features, exactly as a single teacher would give them. Why one member and
  not an average: members are trained independently, so channel k of one member has nothing
  to do with channel k of another; averaging raw features would blur unrelated channels, and
  averaging "after projection" would need extra trained heads that are not part of the
  teacher. Other members' features are never read, so members may differ in family and
  width. The choice is stored in the manifest (``feature_member``, ``feature_targets``).

Members may mix families (tcn and mlp); parameter counts: :meth:`Ensemble.param_count` (the
sum) and :meth:`Ensemble.member_param_count` (one member, ``feature_member``'s by default).

On disk (:meth:`Ensemble.save`, :func:`load_ensemble`): ``manifest.json`` (format, members'
specs, seeds, parameter counts, ``feature_member``, free ``info``) and ``member_<k>.pt``
(each member's spec and state dict, normalisation included).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn

from service.model.card import HEADS
from training.nets.networks import NetSpec, build_network, count_parameters

MANIFEST = "manifest.json"
FORMAT = "apprentice-ensemble/1"
PROB_FLOOR = 1e-12  # log(0) guard when an averaged probability underflows


class Ensemble(nn.Module):
    """K frozen member networks; outputs are their averaged probabilities per head."""

    def __init__(
        self,
        members: Sequence[nn.Module],
        *,
        feature_member: int = 0,
        seeds: Sequence[int] = (),
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if not 0 <= feature_member < len(members):
            raise ValueError(f"feature_member {feature_member} not in 0..{len(members) - 1}")
        self.members = nn.ModuleList(members)
        self.feature_member = feature_member
        self.seeds = tuple(seeds)
        self.info = dict(info or {})
        self.eval()

    def __len__(self) -> int:
        return len(self.members)

    @property
    def specs(self) -> list[NetSpec]:
        return [_spec(m) for m in self.members]

    def mean_probs(self, x: Tensor) -> Tensor:
        """Averaged class probabilities (B, H, 2) of the members for raw windows x (B, F, T)."""
        probs = [F.softmax(m(x), dim=-1) for m in self.members]  # K × (B, H, 2)
        return torch.stack(probs).mean(dim=0)

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """logits (B, H, 2) = log p̄ and ``feature_member``'s features (its layer list)."""
        feats: list[Tensor] = []
        probs = []
        for k, m in enumerate(self.members):
            lg, fs = m.forward_with_features(x)  # type: ignore[operator]
            probs.append(F.softmax(lg, dim=-1))
            if k == self.feature_member:
                feats = fs
        mean = torch.stack(probs).mean(dim=0)
        return mean.clamp_min(PROB_FLOOR).log(), feats

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_features(x)[0]

    @torch.no_grad()
    def predict_proba(
        self, x: NDArray[np.float32], batch: int = 2048
    ) -> dict[str, NDArray[np.float64]]:
        """P(up) and P(high volatility), each (N,) float64, averaged over the members."""
        self.eval()
        out = []
        for lo in range(0, x.shape[0], batch):
            out.append(self.mean_probs(torch.from_numpy(np.ascontiguousarray(x[lo : lo + batch]))))
        p = torch.cat(out)[..., 1].double() if out else torch.zeros(0, len(HEADS))
        return {name: p[:, h].numpy() for h, name in enumerate(HEADS)}

    def param_count(self) -> int:
        """Trainable parameters of all members together."""
        return sum(count_parameters(m) for m in self.members)

    def member_param_count(self, k: int | None = None) -> int:
        """Parameters of one member (``feature_member`` by default)."""
        return count_parameters(self.members[self.feature_member if k is None else k])

    def save(self, directory: Path) -> Path:
        """Write ``manifest.json`` and ``member_<k>.pt`` into ``directory``; returns it."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        files = []
        for k, m in enumerate(self.members):
            name = f"member_{k}.pt"
            torch.save({"spec": _spec(m).to_dict(), "state_dict": m.state_dict()}, d / name)
            files.append(name)
        manifest = {
            "format": FORMAT,
            "members": [
                {
                    "file": f,
                    "spec": s.to_dict(),
                    "params": count_parameters(m),
                    "seed": self.seeds[k] if k < len(self.seeds) else None,
                }
                for k, (f, s, m) in enumerate(zip(files, self.specs, self.members, strict=True))
            ],
            "feature_member": self.feature_member,
            "feature_targets": "member",  # features of members[feature_member], unprojected
            "outputs": "mean of member probabilities per head",
            "params_total": self.param_count(),
            "info": self.info,
        }
        (d / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return d


def _spec(m: nn.Module) -> NetSpec:
    spec = getattr(m, "spec", None)
    if not isinstance(spec, NetSpec):
        raise TypeError(f"ensemble member {type(m).__name__} has no NetSpec")
    return spec


def load_ensemble(directory: Path) -> Ensemble:
    """Read an ensemble written by :meth:`Ensemble.save` (members in eval mode)."""
    d = Path(directory)
    try:
        manifest = json.loads((d / MANIFEST).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{d} holds no {MANIFEST}: not an ensemble directory") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{d / MANIFEST} is not an Apprentice ensemble ({FORMAT})")
    members = []
    for entry in manifest["members"]:
        blob = torch.load(d / entry["file"], map_location="cpu", weights_only=True)
        net = build_network(NetSpec.from_dict(blob["spec"]))
        net.load_state_dict(blob["state_dict"])
        members.append(net.eval())
    seeds = [e["seed"] for e in manifest["members"] if e.get("seed") is not None]
    return Ensemble(
        members,
        feature_member=int(manifest["feature_member"]),
        seeds=seeds,
        info=manifest.get("info", {}),
    )


def is_ensemble_dir(path: str | Path) -> bool:
    """True when ``path`` is a directory holding an ensemble manifest."""
    return (Path(path) / MANIFEST).is_file()
