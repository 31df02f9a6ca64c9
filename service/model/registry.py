"""The model registry: immutable versions in a folder, the champion/challenger pair on disk.

Every version is one ONNX file and its card in the registry folder (``APPRENTICE_MODEL_DIR``),
named ``<name>-<version>.onnx`` (+ ``.json``) when it was copied in, or kept under its own
name when it already lies there (the committed ``models/student_pooled_5m.onnx``). A
registered file is never overwritten: registering a version whose file exists with other
bytes is refused, the same bytes again are a no-op.

Which version is the champion, the challenger, and the champion before the last promotion
(for a rollback) is :class:`Roles`, written to ``state_dir/models.json`` atomically (temp
file, fsync, rename, fsync of the folder), so a restart (even after kill -9) serves the same
pair. The transitions (:func:`with_challenger`, :func:`promoted`, :func:`rolled_back`, ...)
are pure; :class:`Registry` is the thin file shell around them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from service.model.card import ModelCard, ModelCardError, sha256_file

ROLES_FILE = "models.json"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class Version:
    """One registered model version: where its ONNX file lies and what its card says."""

    name: str
    version: str
    sha256: str
    path: str  # the ONNX file; its card is the .json beside it

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


@dataclass(frozen=True, slots=True)
class Roles:
    """Champion, challenger, the previous champion, and the refusals since the last promotion."""

    champion: Version | None = None
    challenger: Version | None = None
    previous: Version | None = None
    refusals_in_row: int = 0
    configured: Version | None = None  # APPRENTICE_MODEL when these roles were recorded

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Roles:
        def v(key: str) -> Version | None:
            item = raw.get(key)
            return Version(**item) if isinstance(item, dict) else None

        return cls(
            v("champion"),
            v("challenger"),
            v("previous"),
            int(raw.get("refusals_in_row", 0)),
            v("configured"),
        )


# ---------------------------------------------------------------------- pure transitions
def with_champion(roles: Roles, champion: Version) -> Roles:
    """``champion`` serves (a reload, or the first start); the one before becomes previous."""
    if roles.champion == champion:
        return roles
    return replace(roles, champion=champion, previous=roles.champion or roles.previous)


def with_challenger(roles: Roles, challenger: Version | None) -> Roles:
    """``challenger`` runs in shadow (None: no challenger)."""
    return replace(roles, challenger=challenger)


def promoted(roles: Roles) -> Roles:
    """The challenger serves; the champion is kept as previous; no challenger."""
    if roles.challenger is None:
        raise ValueError("no challenger to promote")
    return replace(
        roles,
        champion=roles.challenger,
        challenger=None,
        previous=roles.champion,
        refusals_in_row=0,
    )


def refused(roles: Roles) -> Roles:
    """One more refusal in a row."""
    return replace(roles, refusals_in_row=roles.refusals_in_row + 1)


def rolled_back(roles: Roles) -> Roles:
    """The previous champion serves again; the one it replaces becomes previous (so a
    rollback can itself be undone). A challenger equal to the restored champion is dropped."""
    if roles.previous is None:
        raise ValueError("no previous champion to roll back to")
    challenger = None if roles.challenger == roles.previous else roles.challenger
    return replace(roles, champion=roles.previous, challenger=challenger, previous=roles.champion)


def file_name(card: ModelCard) -> str:
    """``<name>-<version>.onnx`` with anything but letters, digits, ``._-`` replaced."""
    return _SAFE.sub("_", f"{card.name}-{card.version}") + ".onnx"


# ---------------------------------------------------------------------- the file shell
def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Registry:
    """Versions in ``model_dir``; roles in ``state_dir/models.json``. Blocking file I/O."""

    def __init__(self, model_dir: Path, state_dir: Path) -> None:
        self.model_dir = Path(model_dir)
        self.roles_path = Path(state_dir) / ROLES_FILE

    def describe(self, onnx_path: Path) -> Version:
        """The version of the model at ``onnx_path`` where it lies (no copy)."""
        path = Path(onnx_path)
        card = ModelCard.load(path.with_suffix(".json"))
        return Version(card.name, card.version, sha256_file(path), str(path.resolve()))

    def register(self, onnx_path: Path) -> Version:
        """Add the model at ``onnx_path`` (card beside it) as an immutable version and return
        it. The card's sha256 must match the file (the full checks are the predictor's)."""
        src = Path(onnx_path)
        card = ModelCard.load(src.with_suffix(".json"))
        digest = sha256_file(src)
        if digest != card.sha256:
            raise ModelCardError(f"{src}: sha256 does not match its card; not registered")
        folder = self.model_dir.resolve()
        if src.resolve().parent == folder:
            return Version(card.name, card.version, digest, str(src.resolve()))
        target = folder / file_name(card)
        if target.exists():
            if sha256_file(target) != digest:
                raise ModelCardError(
                    f"{card.name} {card.version} is already registered with other bytes "
                    f"({target}); give the new model a new version"
                )
            return Version(card.name, card.version, digest, str(target))
        folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
        atomic_write(
            target.with_suffix(".json"),
            card.model_copy(update={"onnx_file": target.name}).model_dump_json(indent=2) + "\n",
        )
        return Version(card.name, card.version, digest, str(target))

    def versions(self) -> list[Version]:
        """Every registered version in the folder (cards whose ONNX file is there)."""
        out = []
        for card_path in sorted(self.model_dir.glob("*.json")):
            onnx_path = card_path.with_suffix(".onnx")
            if not onnx_path.is_file():
                continue
            try:
                card = ModelCard.load(card_path)
            except ModelCardError:
                continue
            out.append(Version(card.name, card.version, card.sha256, str(onnx_path.resolve())))
        return out

    def load_roles(self) -> Roles:
        """The recorded roles; empty when none were recorded (or the file is unreadable)."""
        try:
            return Roles.from_json(json.loads(self.roles_path.read_text()))
        except FileNotFoundError:
            return Roles()
        except (OSError, ValueError, TypeError) as exc:
            raise ModelCardError(
                f"{self.roles_path} is unreadable ({exc}); delete it to serve APPRENTICE_MODEL"
            ) from None

    def save_roles(self, roles: Roles) -> None:
        """Record ``roles`` atomically (temp file + fsync + rename)."""
        atomic_write(self.roles_path, json.dumps(roles.to_json(), indent=2) + "\n")
