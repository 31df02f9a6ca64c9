"""Champion and challenger routes (DESIGN section 12), all behind the admin token.

``POST /admin/challenger {"path"}`` registers the model at ``path`` (any readable ONNX file
with its card beside it; the same checks as a reload) and scores it in shadow;
``DELETE /admin/challenger`` stops that; ``POST /admin/promote {"force"}`` applies the rule
and answers 409 with the reason when it refuses; ``POST /admin/rollback`` serves the previous
champion again. The side-by-side scores are ``/model/health``'s ``challenger`` block
(:func:`challenger_block`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from service.http.routes import _ADMIN_ERRORS, AdminRoute
from service.http.schemas import ErrorOut
from service.model.card import ModelCardError
from service.model.registry import Version
from service.monitor.roles import ModelRoles, RoleConflict
from service.runtime import Runtime

router = APIRouter(route_class=AdminRoute)
_CONFLICT: dict[int | str, dict[str, Any]] = {
    **_ADMIN_ERRORS,
    409: {"model": ErrorOut, "description": "refused: the detail says why"},
}


class ChallengerIn(BaseModel):
    """A model to score in shadow."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        min_length=6,
        max_length=4096,
        pattern=r"^[^\x00]*\.onnx$",
        description="an .onnx file readable by the service, its card (.json) beside it",
        examples=["/models/student_pooled_5m-20261207.onnx"],
    )


class PromoteIn(BaseModel):
    """``force``: promote without applying the rule."""

    model_config = ConfigDict(extra="forbid")

    force: bool = False


class VersionOut(BaseModel):
    """One registered model version."""

    name: str
    version: str
    sha256: str
    path: str


class RolesOut(BaseModel):
    """What serves and what is scored in shadow after the request."""

    champion: VersionOut | None
    challenger: VersionOut | None
    previous: VersionOut | None
    reason: str | None = None


def _roles(request: Request) -> ModelRoles:
    rt: Runtime = request.app.state.runtime
    return rt.roles


def _out(v: Version | None) -> VersionOut | None:
    return (
        None
        if v is None
        else VersionOut(name=v.name, version=v.version, sha256=v.sha256, path=v.path)
    )


def _state(roles: ModelRoles, reason: str | None = None) -> RolesOut:
    r = roles.roles
    return RolesOut(
        champion=_out(r.champion),
        challenger=_out(r.challenger),
        previous=_out(r.previous),
        reason=reason,
    )


@router.post(
    "/admin/challenger",
    response_model=RolesOut,
    responses={**_ADMIN_ERRORS, 422: {"model": ErrorOut, "description": "model rejected"}},
)
async def post_challenger(request: Request, body: Annotated[ChallengerIn, Body()]) -> RolesOut:
    """Register a model version and score it in shadow from the next closed candle."""
    roles = _roles(request)
    try:
        await roles.load_challenger(Path(body.path))
    except ModelCardError as exc:
        raise HTTPException(422, f"challenger rejected: {exc}") from None
    except (OSError, ValueError) as exc:
        raise HTTPException(422, f"challenger {body.path} cannot be read: {exc}") from None
    return _state(roles)


@router.delete("/admin/challenger", response_model=RolesOut, responses=_CONFLICT)
async def delete_challenger(request: Request) -> RolesOut:
    """Stop scoring the challenger (it stays registered)."""
    roles = _roles(request)
    if await roles.drop_challenger() is None:
        raise HTTPException(409, "no challenger is loaded")
    return _state(roles)


@router.post("/admin/promote", response_model=RolesOut, responses=_CONFLICT)
async def post_promote(
    request: Request, body: Annotated[PromoteIn | None, Body()] = None
) -> RolesOut:
    """Promote the challenger if the rule allows it (or ``force``); 409 says why not."""
    roles = _roles(request)
    try:
        decision = await roles.promote(force=body.force if body else False)
    except RoleConflict as exc:
        raise HTTPException(409, str(exc)) from None
    if not decision.promote:
        raise HTTPException(409, f"promotion refused: {decision.reason}")
    return _state(roles, decision.reason)


@router.post("/admin/rollback", response_model=RolesOut, responses=_CONFLICT)
async def post_rollback(request: Request) -> RolesOut:
    """Serve the previous champion again (the current one becomes the previous)."""
    roles = _roles(request)
    try:
        prev = await roles.rollback()
    except RoleConflict as exc:
        raise HTTPException(409, str(exc)) from None
    except ModelCardError as exc:
        raise HTTPException(409, f"the previous champion does not load: {exc}") from None
    return _state(roles, f"{prev.label} serves again")


async def challenger_block(rt: Runtime) -> dict[str, Any]:
    """``/model/health``'s ``challenger`` block: both roles side by side, the rule, the
    paired difference and the latest decisions."""
    block = rt.roles.report()
    try:
        block["decisions"] = await rt.roles.decisions()
    except Exception:  # a journal that cannot be read leaves the block without its history
        block["decisions"] = []
    return block
